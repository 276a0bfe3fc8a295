"""The run directory: everything a run recorded, and the only input of analysis.

Layout (``results/<lab>/<run-id>/``)::

    run.json        what ran, where, with what; status complete|incomplete|failed
    steps.jsonl     one line per step: what was asked, what the kernel answered
    states.jsonl    TCP socket states per node (sampled) and transitions (tracepoints)
    events.jsonl    kernel events (retransmissions, resets) from tracepoints
    rules.jsonl     every packet rule action, with the packet it touched
    verdicts.json   each expectation with its verdict and evidence
    pcaps/          one capture per node and interface
    logs/           agent logs per node

Files are written once (JSON atomically, JSONL appended line by line and
flushed), and a run directory is never reused: a new run gets a new id.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .agent.system import write_json as atomic_json

RUN_SCHEMA_VERSION = 1
DEFAULT_ROOT = Path("results")


def results_root() -> Path:
    return Path(os.environ.get("LABCTL_RESULTS", DEFAULT_ROOT))


def new_run_id(label: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    safe = "".join(c if c.isalnum() or c in "-_=," else "-" for c in label).strip("-")
    return f"{stamp}-{safe}-{secrets.token_hex(2)}"


def write_json(path: Path, data: Any) -> None:
    """Atomic and on disk: a reader sees the old file or the new one, never half of one."""
    atomic_json(path, data, indent=2, durable=True)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> Iterator[dict]:
    if not path.exists():
        return
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    return  # a line cut by a crash ends the file; what came before stands


class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._files: dict[str, Any] = {}

    @classmethod
    def create(cls, lab: str, label: str, root: Path | None = None) -> "RunDir":
        root = root or results_root()
        path = root / lab / new_run_id(label)
        path.mkdir(parents=True, exist_ok=False)
        (path / "pcaps").mkdir()
        (path / "logs").mkdir()
        return cls(path)

    def append(self, name: str, record: dict) -> None:
        with self._lock:
            fh = self._files.get(name)
            if fh is None:
                fh = self._files[name] = open(self.path / name, "a")
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()

    def write(self, name: str, data: Any) -> None:
        write_json(self.path / name, data)

    def close(self) -> None:
        with self._lock:
            for fh in self._files.values():
                fh.close()
            self._files.clear()


def latest_run(lab: str, root: Path | None = None) -> Path | None:
    directory = (root or results_root()) / lab
    runs = sorted((p for p in directory.iterdir() if (p / "run.json").exists()), key=lambda p: p.name) if directory.is_dir() else []
    return runs[-1] if runs else None
