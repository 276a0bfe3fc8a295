"""One writer per lab: a file lock per (engine, lab, instance) that the kernel releases on exit.

Every command that changes or runs a lab (up, down, run, impair, loop, and the
sweeps and grades that go through ``api.run``) holds its lab's lock for as long
as it works on the lab; a second one waits, saying who holds it, or refuses
(``wait=False``). ``fcntl.flock`` belongs to the open file: a process that dies,
even by SIGKILL, lets go of it at once, so a lock is never left stale.

Locks live in a state directory of this machine: ``/run/labctl/locks`` for root,
else ``$XDG_RUNTIME_DIR/labctl/locks`` (or one under the temporary directory).
Each lock file holds a line naming its latest holder, for the waiting message.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import UserError

DEFAULT_INSTANCE = "default"
STATE_ENV = "LABCTL_STATE_DIR"
POLL = 0.1  # seconds between tries while waiting
_held = threading.local()  # lock path -> depth, per thread: nested holds of one lab do not deadlock


class LabBusy(UserError):
    """Another labctl holds the lab's lock and the caller would not wait."""


def state_dir() -> Path:
    """Where labctl keeps this machine's lab locks."""
    if explicit := os.environ.get(STATE_ENV):
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/run/labctl")
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "labctl"
    return Path(tempfile.gettempdir()) / f"labctl-{os.geteuid()}"


def lock_path(engine: str, lab: str, instance: str = DEFAULT_INSTANCE) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{engine}-{lab}-{instance}")[:120]
    digest = hashlib.sha256(f"{engine}\0{lab}\0{instance}".encode()).hexdigest()[:8]
    return state_dir() / "locks" / f"{safe}-{digest}.lock"


def describe_self() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv else "python3", *sys.argv[1:]]
    if argv[0] in ("__main__.py", "-m", "cli.py"):
        argv[0] = "labctl"
    return f"pid {os.getpid()} ({' '.join(argv)[:200]})"


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``, as its holder wrote it."""
    try:
        return path.read_text().strip() or "another labctl"
    except OSError:
        return "another labctl"


def is_held(engine: str, lab: str, instance: str = DEFAULT_INSTANCE) -> str | None:
    """The holder of a lab's lock when another process holds it now; None when it is free."""
    path = lock_path(engine, lab, instance)
    if _depth(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder(path)
    finally:
        os.close(fd)
    return None


def _depth(path: Path) -> int:
    return getattr(_held, "paths", {}).get(str(path), 0)


@contextmanager
def lab_lock(engine: str, lab: str, instance: str = DEFAULT_INSTANCE, *, wait: bool = True,
             notify: Callable[[str], None] | None = None, timeout: float | None = None) -> Iterator[Path]:
    """Hold the lab's lock for the block. ``wait=False``: a ``LabBusy`` (exit 2) if it is held.

    ``notify`` hears once that this call is waiting, and for whom. Re-entrant within a thread.
    """
    path = lock_path(engine, lab, instance)
    held = _held.__dict__.setdefault("paths", {})
    if held.get(str(path)):
        held[str(path)] += 1
        try:
            yield path
        finally:
            held[str(path)] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UserError(f"cannot open the lab lock {path}: {exc.strerror or exc}",
                        hint=f"set {STATE_ENV} to a directory you may write") from None
    try:
        _acquire(fd, path, lab, wait, notify, timeout)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (describe_self() + "\n").encode(), 0)
        held[str(path)] = 1
        try:
            yield path
        finally:
            held.pop(str(path), None)
    finally:
        os.close(fd)  # closing the last descriptor of the open file releases the lock


def _acquire(fd: int, path: Path, lab: str, wait: bool, notify: Callable[[str], None] | None,
             timeout: float | None) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    time.sleep(0.02)  # a holder that has just taken it writes its line right after
    who = holder(path)
    if not wait:
        raise LabBusy(f"lab '{lab}' is busy: its lock is held by {who}",
                      hint="wait for it to finish, or leave out --no-wait to wait for it")
    if notify:
        notify(f"waiting for the lab lock held by {who}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if deadline is not None and time.monotonic() > deadline:
                raise LabBusy(f"lab '{lab}' stayed busy for {timeout:.0f} s: its lock is held by {holder(path)}") from None
            time.sleep(POLL)  # a polling wait stays interruptible by Ctrl-C
