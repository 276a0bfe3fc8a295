"""What labctl hands to other tools: Compose files, editor schemas, captures Wireshark opens.

Each module here turns labctl's own data (a plan, a model, a run directory) into
another tool's format. None of them talks to the engine.
"""
