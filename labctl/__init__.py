"""labctl: networks of Docker containers for TCP experiments, with evidence.

This file stays import-free: it is copied into the node image together with
``labctl.agent``, where only the Python standard library exists.
"""

__version__ = "0.1.0"
