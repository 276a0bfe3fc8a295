"""Set network sysctls in the namespace this process runs in (run by the engine's helper)."""

from __future__ import annotations

from pathlib import Path

from .protocol import SysctlReply, Sysctls


def path_of(key: str) -> Path:
    if not key.startswith("net.") or ".." in key or "/" in key:
        raise ValueError(f"only network sysctls (net.*) can be set in a node, not {key}")
    return Path("/proc/sys") / key.replace(".", "/")


def apply(request: Sysctls) -> SysctlReply:
    previous = {}
    for key, value in request.values.items():
        path = path_of(key)
        previous[key] = path.read_text().strip()
        path.write_text(f"{value}\n")
    return SysctlReply(previous=previous)
