"""Observers the host runs during a run (the per-node ones live in the agent)."""
