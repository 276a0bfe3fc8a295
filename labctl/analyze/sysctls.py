"""The TCP sysctls each node ran with, over the run: what its actor read as the run started
(run.json's ``observers.sysctls``), then what sysctl steps set (steps.jsonl), from the end of
each such step on. Runs recorded before labctl kept them read as Linux's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..rundir import read_jsonl, read_run

LINUX_DEFAULTS = {"net.ipv4.tcp_rfc1337": "0", "net.ipv4.tcp_timestamps": "1", "net.ipv4.tcp_tw_reuse": "2",
                  "net.ipv4.tcp_fin_timeout": "60"}


@dataclass(frozen=True)
class NodeSysctls:
    at_start: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> key -> value
    changes: dict[tuple[str, str], list[tuple[float, str]]] = field(default_factory=dict)  # (node, key) -> [(t, value)]

    def value(self, node: str, key: str, t: float) -> str | None:
        """The value in force on ``node`` at time ``t`` (None: neither recorded nor a known default)."""
        value = (self.at_start.get(node) or {}).get(key, LINUX_DEFAULTS.get(key))
        for when, changed in self.changes.get((node, key), []):
            if when <= t:
                value = changed
        return value

    def enabled(self, node: str, key: str, t: float) -> bool:
        return (self.value(node, key, t) or "0").strip() not in ("", "0")


def load(run_dir: Path) -> NodeSysctls:
    observers = read_run(run_dir).get("observers") or {}
    at_start = {node: {k: str(v) for k, v in (values or {}).items()} for node, values in (observers.get("sysctls") or {}).items()}
    changes: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for record in read_jsonl(run_dir / "steps.jsonl"):
        if record.get("kind") != "sysctl" or not record.get("ok") or record.get("t_end") is None:
            continue
        values = (record.get("args") or {}).get("sysctl") or {}
        for key, value in values.items():
            changes.setdefault((record.get("node"), key), []).append((float(record["t_end"]), str(value)))
    for entries in changes.values():
        entries.sort()
    return NodeSysctls(at_start, changes)
