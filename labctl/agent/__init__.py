"""The in-node agent: the only labctl code that runs inside nodes.

It is copied into the node image and run with the node's Debian python3, so
it uses the standard library only and never imports the rest of labctl.
Every command reads JSON and prints JSON, which keeps the engine boundary a
plain exec of ``python3 -m labctl.agent COMMAND``.
"""
