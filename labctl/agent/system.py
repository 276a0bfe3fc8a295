"""The node's own tools and files, as every agent command uses them.

One way to run a tool (its output captured, its failure a ``RuntimeError``
naming the command) and one way to write and read a state file (atomically: a
reader sees the old file or the new one, never half of one). The host's run
directory writes its JSON with the same function.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import Any, Sequence


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a tool; with ``check``, a non-zero exit is a RuntimeError with its message."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def tried(argv: Sequence[str]) -> tuple[bool, str]:
    """Whether a tool succeeded, and what it said when it did not."""
    proc = run(argv, check=False)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def read_json(path: str | os.PathLike) -> Any:
    """A state file's data; None when it is missing or cut short (a reader never fails on one)."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = None, mode: int = 0o644,
               durable: bool = False) -> None:
    """Write JSON atomically. ``durable``: on disk before the rename (for records that must survive a crash)."""
    directory = os.path.dirname(os.fspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=indent, default=str)
            if indent is not None:
                fh.write("\n")
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
