"""What labctl takes from its surroundings, checked before it is used.

Environment variables (DOCKER_HOST, LABCTL_SUBNET_POOL) and the results
directory are the user's to set; a bad one is a clear message (exit 2) before
any lab is touched, not a traceback from deep inside a library.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from ipaddress import IPv4Network
from pathlib import Path

from .errors import EngineError, UserError

# What a run needs at least to start writing its directory (captures grow from there).
MIN_FREE_BYTES = 50 * 1024 * 1024

# OS errors that say something about the user's machine or paths, not about labctl.
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOENT, errno.ENOTDIR,
               errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.EMFILE, errno.ENFILE}


def describe_os_error(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "a file"
    return f"cannot use {where}: {exc.strerror or exc}"


def check_docker_host() -> None:
    """DOCKER_HOST, when set, must be an address the Docker client understands (an ``EngineError``, exit 2)."""
    value = os.environ.get("DOCKER_HOST")
    if not value:
        return
    from docker.errors import DockerException
    from docker.utils import parse_host

    try:
        parse_host(value, False, False)
    except (DockerException, ValueError) as exc:
        raise EngineError(f"DOCKER_HOST={value!r} is not an engine address: {exc}",
                        hint="e.g. unix:///var/run/docker.sock, tcp://127.0.0.1:2375 or ssh://user@host; or unset it") from None


def check_subnet_pool() -> None:
    """LABCTL_SUBNET_POOL, when set, must be an IPv4 network written exactly (10.250.0.0/16)."""
    value = os.environ.get("LABCTL_SUBNET_POOL")
    if value is None:
        return
    try:
        pool = IPv4Network(value.strip(), strict=True)
    except ValueError as exc:
        raise UserError(f"LABCTL_SUBNET_POOL={value!r} is not an IPv4 network: {exc}",
                        hint="e.g. LABCTL_SUBNET_POOL=10.250.0.0/16 (the network address, then the prefix length)") from None
    if pool.prefixlen > 29:
        raise UserError(f"LABCTL_SUBNET_POOL={value!r} is too small for a link (at most /29)",
                        hint="e.g. LABCTL_SUBNET_POOL=10.250.0.0/16")


def check_results_dir(root: Path) -> None:
    """The results directory can take a new run: a directory (or creatable), writable, not full."""
    if root.exists() and not root.is_dir():
        raise UserError(f"results directory {root} is a file, not a directory", hint="give --results a directory (it is created if missing)")
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"results directory {root} cannot be made: {existing} is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".labctl-write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"results directory {root} is not writable: {exc.strerror or exc}",
                        hint="give --results (or $LABCTL_RESULTS) a directory you can write") from None
    free = shutil.disk_usage(root).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"results directory {root} has only {free // (1024 * 1024)} MiB free (a run needs at least {MIN_FREE_BYTES // (1024 * 1024)} MiB)",
                        hint="free some space, or give --results another directory")
