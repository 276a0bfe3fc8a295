"""Files from the lab directory into nodes: where a `files:` entry may point, what it holds, its archive.

A lab file is someone else's code (see template.py), so a `src:` may only name
something inside the lab's own directory. The one way out is a path the person
running labctl typed themselves: a `-p` value (a student's submission directory,
say). Symbolic links inside a copied directory are copied as links, never
followed, so a submission cannot smuggle a host file into a node.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping

MAX_BYTES = 64 * 1024 * 1024  # what the files of one node may weigh together
MAX_ENTRIES = 10_000          # files and directories of one node


class FilesError(Exception):
    """A `files:` entry that cannot be used (message for the user; the caller locates it)."""


@dataclass(frozen=True)
class FileSource:
    """One `files:` entry, resolved: an absolute source on the host and its place in the node."""

    src: Path
    dst: str
    mode: str  # ro | rw

    def to_json(self) -> dict:
        return {"src": str(self.src), "dst": self.dst, "mode": self.mode}


def lab_directory(lab_file: Path | None) -> Path:
    return (lab_file.parent if lab_file is not None else Path.cwd()).resolve()


def allowed_roots(lab_file: Path | None, params: Mapping[str, str]) -> list[Path]:
    """The lab directory, and every -p value that names an existing path (it came from the user)."""
    roots = [lab_directory(lab_file)]
    for value in params.values():
        text = str(value)
        if not text or "\x00" in text or len(text) > 4096:
            continue
        candidate = Path(text).expanduser()
        try:
            if candidate.exists():
                roots.append(candidate.resolve())
        except OSError:
            continue
    return roots


def resolve_source(src: str, lab_file: Path | None, params: Mapping[str, str]) -> Path:
    """The host path a `src:` names; raises ``FilesError`` when it leaves the allowed roots or is missing."""
    if "\x00" in src:
        raise FilesError("a path cannot contain a NUL character")
    base = lab_directory(lab_file)
    path = Path(src).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise FilesError(f"cannot resolve {src}: {exc}") from None
    roots = allowed_roots(lab_file, params)
    if not any(real == root or root in real.parents for root in roots):
        raise FilesError(f"'{src}' leaves the lab directory {base}: only paths inside it, or paths given with -p, may be copied into nodes")
    if not real.exists():
        raise FilesError(f"'{src}' does not exist ({real})")
    if not (real.is_file() or real.is_dir()):
        raise FilesError(f"'{src}' is neither a file nor a directory")
    return real


def check_destination(dst: str) -> None:
    parts = PurePosixPath(dst).parts
    if ".." in parts or "." in dst.split("/"):
        raise FilesError(f"'{dst}': a node path may not contain '.' or '..' components")
    if dst.rstrip("/") == "":
        raise FilesError("'/' is the node's whole file system: give a directory below it")
    top = parts[1] if len(parts) > 1 else ""
    if top in ("proc", "sys", "dev") or dst.startswith("/opt/labctl"):
        raise FilesError(f"'{dst}' belongs to the node's system or to labctl's agent: choose another place (e.g. /srv/...)")


def _walk(source: FileSource) -> Iterator[tuple[str, Path]]:
    """(path in the node, host path) for every entry of a source, directories first, sorted."""
    dst = source.dst.rstrip("/") or "/"
    if not source.src.is_dir():
        yield dst, source.src
        return
    yield dst, source.src
    for root, dirs, files in os.walk(source.src, followlinks=False):
        dirs.sort()
        rel = Path(root).relative_to(source.src)
        for name in dirs + sorted(files):
            host = Path(root) / name
            yield str(PurePosixPath(dst) / rel.as_posix() / name).replace("/./", "/"), host


def entries(sources: list[FileSource]) -> list[tuple[str, Path, str]]:
    """Every (node path, host path, mode) to copy, bounded in number and size."""
    result: list[tuple[str, Path, str]] = []
    total = 0
    for source in sources:
        for node_path, host in _walk(source):
            result.append((node_path, host, source.mode))
            if len(result) > MAX_ENTRIES:
                raise FilesError(f"more than {MAX_ENTRIES} files to copy into one node")
            info = host.lstat()
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
                if total > MAX_BYTES:
                    raise FilesError(f"more than {MAX_BYTES // (1024 * 1024)} MiB of files for one node")
    return result


def content_hash(sources: list[FileSource]) -> str:
    """Changes whenever what a node should hold changes: names, places, modes, permissions, bytes."""
    digest = hashlib.sha256()
    for node_path, host, mode in entries(sources):
        info = host.lstat()
        digest.update(f"{node_path}\0{mode}\0{stat.S_IMODE(info.st_mode):o}\0".encode())
        if stat.S_ISLNK(info.st_mode):
            digest.update(b"link\0" + os.readlink(host).encode())
        elif stat.S_ISREG(info.st_mode):
            with open(host, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(b"dir\0")
    return digest.hexdigest()[:16]


def archive(sources: list[FileSource]) -> bytes:
    """A tar of the sources with paths as in the node (relative to /), owned by root.

    No entries for the parents of a destination: unpacking them would reset the modes of
    directories the node already has (/tmp, /srv); the agent makes missing ones first.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for node_path, host, _ in entries(sources):
            info = tar.gettarinfo(str(host), arcname=node_path.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with open(host, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return buffer.getvalue()
