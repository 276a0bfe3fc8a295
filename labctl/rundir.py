"""The run directory: everything a run recorded, and the only input of analysis.

Layout (``results/<lab>/<run-id>/``)::

    run.json        what ran, where, with what; status complete|incomplete|failed
    steps.jsonl     one line per step: what was asked, what the kernel answered
    states.jsonl    TCP socket states per node (sampled) and transitions (tracepoints)
    events.jsonl    kernel events (retransmissions, resets) from tracepoints
    rules.jsonl     every packet rule action, with the packet it touched
    verdicts.json   each expectation with its verdict and evidence
    pcaps/          one capture per node and interface
    logs/           agent logs per node; <node>-queue.json: what its rule engine was given

Files are written once and whole (JSON and captures to a temporary name, synced, renamed;
JSONL one whole line per write, a failed write cut back), and a run directory is never
reused: a new run gets a new id. A reader still meets damage (a killed writer, a disk
that filled, a file edited later): everything is read through the checked readers below.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

from .agent.system import write_json as atomic_json
from .errors import UserError

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


# --- reading a run directory that may be damaged ----------------------------------------
# Analysis trusts what it is given, so everything read from a run directory is checked
# here, at the edge: a file that is missing, cut short, not text, not JSON or of the wrong
# shape becomes a ``Damage`` (the file and what was wrong with it) and the data that is
# still good, never an exception. A report prints every ``Damage`` as a note.

@dataclass(frozen=True)
class Damage:
    file: str  # relative to the run directory: run.json, pcaps/client-left.pcap
    problem: str
    partial: bool = False  # what came before the damage is still read (a file cut mid-way)

    @property
    def text(self) -> str:
        return f"{self.file}: {self.problem}"


class NewerSchema(UserError):
    """A run directory file written by a newer labctl whose format this one does not know."""


def _note(damage: list[Damage] | None, path: Path, problem: str, partial: bool = False) -> None:
    if damage is None:
        return
    item = Damage(_relative(path), problem, partial)
    if item not in damage:
        damage.append(item)


def _relative(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.parent.name in ("pcaps", "logs") else path.name


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _json_error(exc: json.JSONDecodeError, text: str) -> str:
    if not text.strip():
        return "it is empty (only white space)"
    body = text.strip()
    if exc.pos >= len(text.rstrip()) or (body[:1] in "{[" and body[-1:] not in "}]"):
        return f"it is cut short (the JSON ends early, at byte {len(text.encode())}): it was not written whole"
    return f"it is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"


def load_json(path: Path, damage: list[Damage] | None, *, shape: type = dict, missing: str | None = None) -> Any:
    """A JSON file of the run directory, or None (with a ``Damage`` saying why) when it cannot be used.

    ``missing``: what it means that the file is not there (None: its absence is not damage).
    A file whose ``schema_version`` is newer than this labctl's is refused (``NewerSchema``, exit 2):
    a version is bumped only by changes an older reader would misread."""
    if not path.exists() and not path.is_symlink():
        if missing:
            _note(damage, path, f"it is missing: {missing}")
        return None
    if path.is_dir():
        _note(damage, path, "it is a directory, not a file")
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        _note(damage, path, f"it cannot be read ({exc.strerror or exc})")
        return None
    if not raw:
        _note(damage, path, "it is empty (0 bytes): it was never written, or its write was lost")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _note(damage, path, f"it is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): binary data or garbage")
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        _note(damage, path, _json_error(exc, text))
        return None
    except RecursionError:
        _note(damage, path, "it is nested too deeply to be a run file")
        return None
    if not isinstance(data, shape):
        if shape is dict and isinstance(data, list) and path.name == "verdicts.json":
            return {"verdicts": data}  # the oldest verdicts.json: the list alone
        _note(damage, path, f"it holds {type_name(data)}, not {type_name(shape())}: its content was not used")
        return None
    if isinstance(data, dict):
        version = data.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > RUN_SCHEMA_VERSION:
            raise NewerSchema(f"{path}: schema_version {version} is newer than this labctl reads ({RUN_SCHEMA_VERSION}): "
                              "a newer labctl wrote this run", hint="report on it with that labctl version or a later one")
        if "schema_version" not in data:
            _note(damage, path, f"it has no schema_version: read as version {RUN_SCHEMA_VERSION}")
        elif not (isinstance(version, int) and not isinstance(version, bool) and version >= 1):
            _note(damage, path, f"its schema_version {version!r} is not a version number: read as version {RUN_SCHEMA_VERSION}")
    return data


_NUMBER = (int, float)
_TEXT = (str,)
_OPT_TEXT = (str, type(None))
_OPT_NUMBER = (int, float, type(None))

# What each JSONL file's records must hold for analysis to use them: (required, optional) field types.
# A record that breaks them is skipped with a note; the lines around it are still read.
RECORD_FIELDS: dict[str, tuple[dict[str, tuple], dict[str, tuple]]] = {
    "steps.jsonl": ({}, {"index": (int,), "kind": _TEXT, "node": _OPT_TEXT, "as": _OPT_TEXT, "name": _OPT_TEXT,
                         "event": _OPT_TEXT, "t_start": _OPT_NUMBER, "t_end": _OPT_NUMBER, "ok": (bool, type(None)),
                         "errno": _OPT_TEXT, "error": _OPT_TEXT, "note": _OPT_TEXT, "background": (bool, type(None)),
                         "args": (dict, type(None))}),
    "states.jsonl": ({"t": _NUMBER, "node": _TEXT, "local": _TEXT, "remote": _TEXT},
                     {"source": _OPT_TEXT, "event": _OPT_TEXT, "state": _OPT_TEXT, "oldstate": _OPT_TEXT, "newstate": _OPT_TEXT,
                      "expires_ms": _OPT_NUMBER, "timer": _OPT_TEXT, "timewait": (bool, type(None))}),
    "events.jsonl": ({"t": _NUMBER}, {"node": _OPT_TEXT, "event": _OPT_TEXT, "local": _OPT_TEXT, "remote": _OPT_TEXT,
                                     "state": _OPT_TEXT, "summary": _OPT_TEXT}),
    "rules.jsonl": ({"t": _NUMBER}, {"node": _OPT_TEXT, "rule": _OPT_TEXT, "action": _OPT_TEXT, "keep": _OPT_TEXT,
                                    "packet": (dict, type(None))}),
}


def _record_problem(name: str, record: Any) -> str | None:
    """Why a decoded JSONL line cannot be one of ``name``'s records, or None."""
    if not isinstance(record, dict):
        return f"holds {type_name(record)}, not a record"
    required, optional = RECORD_FIELDS.get(name, ({}, {}))
    for key, types in required.items():
        if key not in record:
            return f"has no '{key}'"
    for key, types in (*required.items(), *optional.items()):
        value = record.get(key)
        if key in record and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            return f"its '{key}' is {type_name(value)} ({_short(value)})"
        if isinstance(value, float) and not math.isfinite(value):
            return f"its '{key}' is not a finite number"
    if name == "steps.jsonl" and "index" in record and (record["index"] < 0 or not isinstance(record.get("kind"), str)):
        return "is a step without a valid index and kind"
    if name == "states.jsonl":
        if record.get("source") == "tracepoint" and not isinstance(record.get("newstate"), str):
            return "is a state transition without its new state"
        if record.get("source") != "tracepoint" and not isinstance(record.get("state"), str):
            return "is a state sample without its state"
    if name == "events.jsonl" and str(record.get("event") or "").startswith("tcp_") and not (
            isinstance(record.get("local"), str) and isinstance(record.get("remote"), str)):
        return "is a kernel event without its socket's ends"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def read_jsonl(path: Path, damage: list[Damage] | None = None) -> Iterator[dict]:
    """The records of a JSONL file of the run directory, in order.

    A line that is not a whole, valid record is skipped (with a ``Damage`` when ``damage`` is
    given) and the lines after it are still read: one bad line never hides the good ones. A
    last line without its newline is one whose write was cut (a crash, a full disk)."""
    if not path.exists():
        return
    if path.is_dir():
        _note(damage, path, "it is a directory, not a file")
        return
    try:
        fh = open(path, "rb")
    except OSError as exc:
        _note(damage, path, f"it cannot be read ({exc.strerror or exc})")
        return
    skipped: list[str] = []
    good = 0
    with fh:
        for number, raw in enumerate(fh, 1):
            torn = not raw.endswith(b"\n")
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                problem = _record_problem(path.name, record)
            except UnicodeDecodeError:
                problem = "is not UTF-8 text (binary data)"
            except (json.JSONDecodeError, RecursionError):
                problem = "is cut short: its write was interrupted" if torn else "is not valid JSON"
            if problem is None:
                good += 1
                yield record
            else:
                skipped.append(f"line {number} {problem}")
    if skipped:
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        _note(damage, path, f"{len(skipped)} line{'s' if len(skipped) > 1 else ''} skipped ({shown}); the other {good} read", True)


# run.json: the fields analysis and reports use, and their types. A value of another type is
# dropped (with a note) as if it had not been written; everything else in the file is kept.
RUN_FIELDS: dict[str, tuple] = {
    "schema_version": (int,), "labctl_version": _OPT_TEXT, "lab": _OPT_TEXT, "lab_source": _OPT_TEXT, "instance": _OPT_TEXT, "remap": (dict,), "scenario": _OPT_TEXT,
    "label": _OPT_TEXT, "description": _OPT_TEXT, "status": _OPT_TEXT, "reason": _OPT_TEXT, "started": _OPT_NUMBER,
    "ended": _OPT_NUMBER, "engine": _OPT_TEXT, "image": _OPT_TEXT, "params": (dict,), "matrix_point": (dict,), "host": (dict,),
    "observers": (dict,), "nodes": (dict,), "links": (dict,), "steps": (list,), "expect": (list,), "impairments": (list,),
}
RUN_STATUSES = ("running", "complete", "incomplete", "failed")


def _impairment_ok(item: Any) -> bool:
    if not isinstance(item, dict) or not isinstance(item.get("settings", {}), dict):
        return False
    if "t" in item and not (isinstance(item["t"], _NUMBER) and not isinstance(item["t"], bool)):
        return False
    return all(isinstance(v, _NUMBER) and not isinstance(v, bool) and math.isfinite(v) or v is None
               for k, v in (item.get("settings") or {}).items() if isinstance(k, str) and k.endswith(("_ms", "_pct")))


def read_run(run_dir: Path, damage: list[Damage] | None = None) -> dict:
    """run.json, checked: what is usable of it ({} when nothing is)."""
    path = run_dir / "run.json"
    data = load_json(path, damage, missing="what ran (lab, scenario, nodes and their addresses, status) is not known")
    if data is None:
        return {}
    run = dict(data)

    def drop(key: str, why: str) -> None:
        run.pop(key, None)
        _note(damage, path, why)

    for key, types in RUN_FIELDS.items():
        value = run.get(key)
        if key in run and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            drop(key, f"its '{key}' is {type_name(value)} ({_short(value)}), not what labctl writes there: left out")
        elif isinstance(value, float) and not math.isfinite(value):
            drop(key, f"its '{key}' is not a finite number: left out")
    if run.get("status") is not None and run["status"] not in RUN_STATUSES:
        drop("status", f"its status {run['status']!r} is not one labctl writes: left out")
    nodes = {}
    for name, info in (run.get("nodes") or {}).items():
        interfaces = info.get("interfaces") if isinstance(info, dict) else None
        if not isinstance(interfaces, dict) or not all(isinstance(a, str) for a in interfaces.values()):
            _note(damage, path, f"node '{name}' has no readable interfaces: its interfaces are taken from its captures' names, their addresses from the packets")
            interfaces = {k: "" for k in interfaces} if isinstance(interfaces, dict) else {}
        role = info.get("role") if isinstance(info, dict) else None
        nodes[str(name)] = {**(info if isinstance(info, dict) else {}), "role": role if isinstance(role, str) else "host",
                            "interfaces": {str(k): v for k, v in interfaces.items()}}
    run["nodes"] = nodes
    links = {}
    for name, info in (run.get("links") or {}).items():
        ends = info.get("endpoints") if isinstance(info, dict) else None
        if not isinstance(ends, list) or not all(isinstance(e, str) for e in ends):
            _note(damage, path, f"link '{name}' has no readable endpoints: it is left out")
            continue
        links[str(name)] = info
    run["links"] = links
    observers = run.get("observers") or {}
    if not isinstance(observers.get("nodes", {}), dict) or not all(isinstance(v, dict) for v in observers.get("nodes", {}).values()):
        _note(damage, path, "its observers.nodes is not an object of nodes: which observer watched which node is not known")
        observers = {k: v for k, v in observers.items() if k != "nodes"}
    if "sample_interval" in observers and not (isinstance(observers["sample_interval"], _NUMBER)
                                               and not isinstance(observers["sample_interval"], bool)
                                               and math.isfinite(observers["sample_interval"]) and observers["sample_interval"] > 0):
        _note(damage, path, "its observers.sample_interval is not a positive number: the default is used")
        observers = {k: v for k, v in observers.items() if k != "sample_interval"}
    if "observers" in run:
        run["observers"] = observers
    impairments = [i for i in run.get("impairments") or [] if _impairment_ok(i)]
    if len(impairments) != len(run.get("impairments") or []):
        _note(damage, path, f"{len(run['impairments']) - len(impairments)} of its impairments are not readable records: left out")
        run["impairments"] = impairments
    if isinstance(run.get("expect"), list) and not all(isinstance(e, dict) for e in run["expect"]):
        drop("expect", "its 'expect' holds items that are not expectations: the run cannot be judged again")
    return run


class RunDir:
    """A run directory being written.

    Every file is whole or absent: JSON and captures are written to a temporary name, synced
    and renamed; a JSONL record is one write of one whole line, and a write that fails part-way
    (a full disk) is cut back to the line before it. A write that fails does not raise out of
    an observer's thread: the first failure is kept in ``failure`` for the run to act on, and
    ``RESERVE`` bytes set aside when the directory was made are given back when run.json or
    verdicts.json does not fit, so that run.json can still say how the run ended."""

    RESERVE = 256 * 1024  # room for the last run.json and verdicts.json on a full disk

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._files: dict[str, int] = {}
        self.failure: tuple[str, OSError] | None = None  # the first write that failed: (file, why)

    @classmethod
    def create(cls, lab: str, label: str, root: Path | None = None) -> "RunDir":
        root = root or results_root()
        path = root / lab / new_run_id(label)
        path.mkdir(parents=True, exist_ok=False)
        (path / "pcaps").mkdir()
        (path / "logs").mkdir()
        rundir = cls(path)
        try:
            write_bytes(path / RESERVE_FILE, bytes(cls.RESERVE))
        except OSError:
            pass  # no room even for the reserve: the first write will say so
        return rundir

    def _failed(self, name: str, exc: OSError) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = (name, exc)

    def release_reserve(self) -> None:
        try:
            (self.path / RESERVE_FILE).unlink()
        except FileNotFoundError:
            pass

    def append(self, name: str, record: dict) -> bool:
        """One record, as one whole line; False (and ``failure`` set) when it could not be written."""
        line = (json.dumps(record, default=str) + "\n").encode()
        with self._lock:
            fd = self._files.get(name)
            try:
                if fd is None:
                    fd = self._files[name] = os.open(self.path / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                end = os.lseek(fd, 0, os.SEEK_END)
                try:
                    done = 0
                    while done < len(line):
                        done += os.write(fd, line[done:])
                except OSError:
                    os.ftruncate(fd, end)  # no torn line is left behind
                    raise
            except OSError as exc:
                failed = exc
            else:
                return True
        self._failed(name, failed)
        return False

    def write(self, name: str, data: Any) -> None:
        """A JSON file, atomically and on disk. On a full disk the reserve is given back and it is tried once more."""
        try:
            write_json(self.path / name, data)
        except OSError as exc:
            self._failed(name, exc)
            self.release_reserve()  # kept until now: captures written after the disk filled must not take it
            write_json(self.path / name, data)  # raises when even the reserve did not make room

    def write_bytes(self, name: str, data: bytes) -> bool:
        """A capture or a log, whole or not at all; False (and ``failure`` set) when it could not be written."""
        try:
            write_bytes(self.path / name, data)
        except OSError as exc:
            self._failed(name, exc)
            return False
        return True

    def close(self) -> None:
        with self._lock:
            for name, fd in self._files.items():
                try:
                    os.fsync(fd)
                except OSError as exc:
                    if self.failure is None:
                        self.failure = (name, exc)
                os.close(fd)
            self._files.clear()
        self.release_reserve()


RESERVE_FILE = ".reserve"


def write_bytes(path: Path, data: bytes) -> None:
    """Whole or not at all: a temporary file beside it, synced, then renamed over the name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def latest_run(lab: str, root: Path | None = None) -> Path | None:
    directory = (root or results_root()) / lab
    runs = sorted((p for p in directory.iterdir() if (p / "run.json").exists()), key=lambda p: p.name) if directory.is_dir() else []
    return runs[-1] if runs else None
