"""Set network sysctls in the namespace this process runs in (run by the engine's helper)."""

from __future__ import annotations

from pathlib import Path


def path_of(key: str) -> Path:
    if not key.startswith("net.") or ".." in key or "/" in key:
        raise ValueError(f"only network sysctls (net.*) can be set in a node, not {key}")
    return Path("/proc/sys") / key.replace(".", "/")


def apply(values: dict) -> dict:
    previous = {}
    for key, value in values.items():
        path = path_of(key)
        previous[key] = path.read_text().strip()
        path.write_text(f"{value}\n")
    return {"ok": True, "previous": previous}
