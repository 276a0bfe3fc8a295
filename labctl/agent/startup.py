"""A node's own files and programs: files made ready and sealed, startup commands, services.

Runs inside the node (stdlib only). What `up` last put in place is kept in
STATE, so a second `up` with nothing changed does nothing, and `labctl status`
can say which services run. Output of every command goes to LOG (and to the
container's own log, PID 1's stdout, where the engine keeps it).

Read-only means no write permission for anyone (a-w): nodes hold no
CAP_SYS_ADMIN (no read-only mounts) by design, so root in the node could still
write; the programs a lab runs as other users cannot.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from .protocol import FilesPrepare, FilesSeal, ProvisionState, Reply, Service, ServicesReply, Startup, StartupReply

STATE_DIR = Path("/var/lib/labctl")
STATE = STATE_DIR / "provision.json"
LOG_DIR = Path("/var/log/labctl")
LOG = LOG_DIR / "startup.log"
OUTPUT_TAIL = 2000


def _state() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def _save(state: dict) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, STATE)


def _log(text: str) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    data = text if text.endswith("\n") else text + "\n"
    with open(LOG, "a") as fh:
        fh.write(data)
    try:  # the engine's log of the node (`docker logs`): PID 1's stdout
        with open("/proc/1/fd/1", "a") as fh:
            fh.write(data)
    except OSError:
        pass


def state() -> ProvisionState:
    current = _state()
    return ProvisionState(files_hash=current.get("files_hash"), startup_key=current.get("startup_key"),
                          files=list(current.get("files") or []), services=services().services)


def prepare(request: FilesPrepare) -> Reply:
    """Before new files come in: the old copies go (files removed from the lab go too); parents exist."""
    for dst in [*request.remove, *request.dsts]:
        path = Path(dst)
        if path.is_dir() and not path.is_symlink():
            _writable(path)
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for dst in request.dsts:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
    return Reply()


def _writable(path: Path) -> None:
    for root, dirs, _ in os.walk(path):
        os.chmod(root, stat.S_IMODE(os.lstat(root).st_mode) | stat.S_IWUSR)
        for name in dirs:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) | stat.S_IWUSR)


def seal(request: FilesSeal) -> Reply:
    """After the files came in: read-only ones lose every write bit; the hash says what is there."""
    for dst in request.ro:
        _read_only(dst)
    current = _state()
    current["files_hash"] = request.hash
    current["files"] = list(request.dsts)
    _save(current)
    return Reply()


def _read_only(path: str) -> None:
    paths = [path]
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            paths += [os.path.join(root, name) for name in dirs + files]
    for one in paths:
        if not os.path.islink(one):
            os.chmod(one, stat.S_IMODE(os.lstat(one).st_mode) & ~0o222)


def run(request: Startup) -> StartupReply:
    """Startup: one-shot commands in order (when ``commands``), then services (re)started.

    A failed command stops here and says which; services are started only when every
    command before them passed. ``restart``: every service is restarted; otherwise only
    those that are not running.
    """
    current = _state()
    previous = {s["index"]: s for s in current.get("services", [])}
    started: list[dict] = []
    kept: list[dict] = []
    for index, command in enumerate(request.startup):
        cmd = command.cmd
        if not command.service:
            if not request.commands:
                continue
            _log(f"$ {cmd}")
            began = time.monotonic()
            try:
                proc = subprocess.run(["sh", "-c", cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, timeout=command.timeout, start_new_session=True)
            except subprocess.TimeoutExpired as exc:
                output = (exc.output or b"").decode(errors="replace")
                _log(output + f"[timed out after {command.timeout} s]")
                return StartupReply(ok=False, error=f"startup command {index + 1} timed out", index=index, cmd=cmd,
                                    output=output[-OUTPUT_TAIL:], reason=f"timed out after {command.timeout:g} s")
            output = proc.stdout.decode(errors="replace")
            _log(output + f"[exit {proc.returncode} after {time.monotonic() - began:.2f} s]")
            if proc.returncode != 0:
                return StartupReply(ok=False, error=f"startup command {index + 1} failed", index=index, cmd=cmd, exit=proc.returncode,
                                    output=output[-OUTPUT_TAIL:], reason=f"exit status {proc.returncode}")
            continue
        old = previous.pop(index, None)
        if old and not request.restart and old.get("cmd") == cmd and _alive(old["pid"]):
            kept.append(old)
            continue
        if old:
            _stop(old)
        started.append(_start(index, cmd))
    for old in previous.values():  # services no longer in the lab file
        _stop(old)
    current["services"] = sorted(kept + started, key=lambda s: s["index"])
    current["startup_key"] = request.key
    _save(current)
    return StartupReply(started=[Service(**s) for s in started], kept=[Service(**s) for s in kept])


def _start(index: int, cmd: str) -> dict:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"service-{index}.log"
    status = STATE_DIR / f"service-{index}.exit"
    status.unlink(missing_ok=True)
    _log(f"$ {cmd} &  (service, output in {log})")
    # The shell stays as the group's leader and writes the exit status where `status` reads it:
    # the node's init reaps the group, so nobody else learns how the service ended.
    wrapper = f'( {cmd}\n) </dev/null >>{log} 2>&1; echo $? > {status}'
    with open(log, "ab") as fh:
        fh.write(f"--- started {time.strftime('%Y-%m-%d %H:%M:%S')}: {cmd}\n".encode())
    proc = subprocess.Popen(["sh", "-c", wrapper], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    return {"index": index, "cmd": cmd, "pid": proc.pid, "log": str(log), "status_file": str(status), "started": time.time()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop(service: dict) -> None:
    try:
        os.killpg(service["pid"], signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + 3.0
    while _alive(service["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        os.killpg(service["pid"], signal.SIGKILL)
    except OSError:
        pass


def services() -> ServicesReply:
    """Every service of this node: running or exited (with its status), pid, log and its last lines."""
    result = []
    for service in _state().get("services", []):
        running = _alive(service["pid"])
        exit_status, tail = None, None
        if not running:
            try:
                exit_status = int(Path(service["status_file"]).read_text().strip())
            except (OSError, ValueError):
                pass
            try:
                tail = Path(service["log"]).read_text(errors="replace")[-OUTPUT_TAIL:]
            except OSError:
                pass
        result.append(Service(index=service["index"], cmd=service["cmd"], pid=service["pid"], log=service["log"],
                              state="running" if running else "exited", exit=exit_status, tail=tail,
                              status_file=service.get("status_file"), started=service.get("started")))
    return ServicesReply(services=result)
