"""One writer per lab: a file lock per (engine, lab, instance) that the kernel releases on exit.

Every command that changes or runs a lab (up, down, run, impair, loop, and the
sweeps and grades that go through ``api.run``) holds its lab's lock for as long
as it works on the lab; a second one waits, saying who holds it, or refuses
(``wait=False``). ``fcntl.flock`` belongs to the open file: a process that dies,
even by SIGKILL, lets go of it at once, so a lock is never left stale.

Locks live in one directory of this machine that every user shares, so that two users of one
Docker engine exclude each other on a lab: ``/run/lock/labctl`` (``/run/lock`` is the system's
directory for lock files, world-writable and sticky), or ``LABCTL_STATE_DIR``. The directory
is made sticky and writable by all (mode 1777, as /run/lock is); lock files are made writable
by all (0666: any user must be able to open and flock them) and are opened without following
symbolic links, and only when they are plain files with one name, so no user can make
another (or root) open, truncate or write a file elsewhere through a lock's name.
Each lock file holds a line naming its latest holder, for the waiting message.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
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
SHARED_DIR_MODE = 0o1777  # as /run/lock: everyone may add a lock, only its owner may remove it
SHARED_FILE_MODE = 0o666  # everyone may open a lock (flock needs an open file, not ownership)
_held = threading.local()  # lock path -> depth, per thread: nested holds of one lab do not deadlock


class LabBusy(UserError):
    """Another labctl holds the lab's lock and the caller would not wait."""


def state_dir() -> Path:
    """Where labctl keeps this machine's lab locks: one directory for every user."""
    if explicit := os.environ.get(STATE_ENV):
        return Path(explicit)
    system = Path("/run/lock")
    return (system if system.is_dir() else Path(tempfile.gettempdir())) / "labctl"


def lock_path(engine: str, lab: str, instance: str = DEFAULT_INSTANCE) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{engine}-{lab}-{instance}")[:120]
    digest = hashlib.sha256(f"{engine}\0{lab}\0{instance}".encode()).hexdigest()[:8]
    return state_dir() / f"{safe}-{digest}.lock"


def describe_self() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv else "python3", *sys.argv[1:]]
    if argv[0] in ("__main__.py", "-m", "cli.py"):
        argv[0] = "labctl"
    return f"pid {os.getpid()} ({' '.join(argv)[:200]})"


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``, as its holder wrote it (any user may write
    there: only printable text, and not much of it, is shown)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return "another labctl"
    try:
        text = os.read(fd, 400).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    finally:
        os.close(fd)
    return "".join(c for c in text.splitlines()[0] if c.isprintable())[:240] if text else "another labctl"


def _shared_directory(path: Path) -> None:
    """Make (or check) the lock directory: a real directory every user may add locks to."""
    try:
        made = not os.path.lexists(path)
        path.mkdir(parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise UserError(f"cannot make the lab lock directory {path}: {exc.strerror or exc}",
                        hint=f"set {STATE_ENV} to a directory every user of the engine may write") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"the lab lock directory {path} is not a directory (a symbolic link?): refusing to use it",
                        hint=f"remove it, or set {STATE_ENV} elsewhere")
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != SHARED_DIR_MODE and (made or not os.environ.get(STATE_ENV)):
        os.chmod(path, SHARED_DIR_MODE)  # mkdir's mode is cut by the umask; a LABCTL_STATE_DIR of the user's own is left as it is


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file at ``path``, made if missing; never through a link."""
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, os.O_RDWR | flags, SHARED_FILE_MODE)
    except PermissionError:
        # Made by another user before locks were shared (0644): flock needs no write access.
        fd = os.open(path, os.O_RDONLY | flags & ~os.O_CREAT)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise UserError(f"the lab lock {path} is not a plain file with one name: refusing to use it",
                        hint="someone may be trying to make labctl write elsewhere; remove it")
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != SHARED_FILE_MODE:
        os.fchmod(fd, SHARED_FILE_MODE)  # the umask cut it: every user must be able to open it
    return fd


def is_held(engine: str, lab: str, instance: str = DEFAULT_INSTANCE) -> str | None:
    """The holder of a lab's lock when another process holds it now; None when it is free."""
    path = lock_path(engine, lab, instance)
    if _depth(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
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
    _shared_directory(path.parent)
    try:
        fd = _open_lock(path)
    except OSError as exc:
        raise UserError(f"cannot open the lab lock {path}: {exc.strerror or exc}",
                        hint=f"set {STATE_ENV} to a directory every user of the engine may write") from None
    try:
        _acquire(fd, path, lab, wait, notify, timeout)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (describe_self() + "\n").encode(), 0)
        except OSError:
            pass  # opened read-only (another user's old lock file): held all the same, unnamed
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
