"""The scenario actor: one per node for the length of a run.

Started by the runner with ``python3 -m labctl.agent actor CONFIG_JSON``; it
reads one JSON command per line on stdin and answers one JSON line per
command on stdout (plus unsolicited ``event`` lines for background steps).
It holds the node's sockets across steps under their scenario names, and
keeps the node's observers running: one tcpdump per lab interface and a
sampler of TCP socket states (sock_diag) every few milliseconds.

Everything it records goes to files under the run directory inside the
node, which the runner copies out at the end (also from a stopped node).
Times are the host clock (CLOCK_REALTIME), shared by every container and
by tcpdump, so all records merge into one timeline.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from . import protocol
from .inetdiag import SocketTable

SAMPLE_INTERVAL = 0.005  # seconds; the issue asks for 10 ms or better


def errno_name(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)) and getattr(exc, "errno", None) is None:
        return "TIMEOUT"  # labctl's own step timeout, not the kernel's ETIMEDOUT
    code = getattr(exc, "errno", None)
    return errno.errorcode.get(code, str(code)) if code else type(exc).__name__


class StepFailed(Exception):
    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class Sampler(threading.Thread):
    """Writes a line whenever a TCP socket appears, changes state or goes away."""

    def __init__(self, path: Path, interval: float):
        super().__init__(daemon=True, name="state-sampler")
        self.path = path
        self.interval = interval
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.current: dict[tuple, dict] = {}
        self.seen_states: dict[tuple, dict] = {}
        self.samples = 0

    def run(self) -> None:
        table = SocketTable()
        with open(self.path, "a", buffering=1) as out:
            while not self.stopping.is_set():
                began = time.time()
                dumped = table.dump()
                # Stamp with the end of the dump: by then every state in it was true.
                now = time.time()
                seen = {}
                for sock in dumped:
                    key = (sock["cookie"], sock["local"], sock["remote"])
                    seen[key] = sock
                with self.lock:
                    for key, sock in seen.items():
                        self.seen_states.setdefault((*key, sock["state"]), sock)
                        before = self.current.get(key)
                        # A full socket handed to its timewait socket keeps its cookie and may keep its
                        # state (an orphan's FIN_WAIT2): the handoff is a change worth a line too.
                        if before is None or (before["state"], before.get("timewait")) != (sock["state"], sock.get("timewait")):
                            out.write(json.dumps({"t": now, "event": "state", **sock}) + "\n")
                    for key, sock in self.current.items():
                        if key not in seen:
                            out.write(json.dumps({"t": now, "event": "gone", **{**sock, "state": "CLOSED"}}) + "\n")
                    self.current = seen
                    self.samples += 1
                time.sleep(max(0.0, self.interval - (time.time() - began)))
        table.close()

    def sockets(self) -> list[dict]:
        with self.lock:
            return list(self.current.values())

    def history(self) -> list[dict]:
        """One entry per (socket, state) ever sampled in this run."""
        with self.lock:
            return list(self.seen_states.values())


def end_process_group(proc: subprocess.Popen, grace: float = 1.0) -> None:
    """End a command and everything it started (its process group): TERM, then KILL after ``grace`` s."""
    if proc.poll() is None and grace > 0:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their leader too
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def tcp_sysctls() -> dict[str, str]:
    """protocol.TCP_SYSCTLS as this node's network namespace has them now (absent ones left out)."""
    from .protocol import TCP_SYSCTLS

    values = {}
    for key in TCP_SYSCTLS:
        try:
            values[key] = Path("/proc/sys", *key.split(".")).read_text().strip()
        except OSError:
            pass
    return values


class Actor:
    def __init__(self, config: dict):
        self.config = config
        self.node = config["node"]
        self.dir = Path(config["run_dir"])
        (self.dir / "pcaps").mkdir(parents=True, exist_ok=True)
        self.sockets: dict[str, socket.socket] = {}
        self.background: dict[str, threading.Thread] = {}
        self.processes: list[subprocess.Popen] = []
        self.programs: dict[str, subprocess.Popen] = {}  # background exec steps by name
        self.captures: list[subprocess.Popen] = []
        self.out_lock = threading.Lock()
        self.sampler: Sampler | None = None
        self.rules = None  # the packet rule engine, started on the first rule

    # --- plumbing --------------------------------------------------------------

    def send(self, message: dict) -> None:
        with self.out_lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    def start_observers(self) -> dict:
        started = {"captures": [], "sampler": False}
        for iface in self.config.get("interfaces", []):
            path = self.dir / "pcaps" / f"{self.node}-{iface}.pcap"
            # -U: write each packet as it comes, so a stopped node still leaves its capture.
            proc = subprocess.Popen(["tcpdump", "-i", iface, "-n", "-s", "0", "-U", "-Z", "root", "--immediate-mode",
                                     "--time-stamp-precision", "nano", "-w", str(path)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.captures.append(proc)
            line = proc.stderr.readline()  # "listening on IF ..." once the capture is live
            if "listening on" not in line:
                raise RuntimeError(f"tcpdump on {iface} did not start: {line.strip()}")
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            started["captures"].append(iface)
        if self.config.get("rules"):
            self._rule_engine()
            started["rules"] = True
        if self.config.get("sample_states", True):
            self.sampler = Sampler(self.dir / "states.jsonl", self.config.get("sample_interval", SAMPLE_INTERVAL))
            self.sampler.start()
            started["sampler"] = True
        return started

    def stop_observers(self) -> dict:
        if self.sampler:
            self.sampler.stopping.set()
            self.sampler.join(timeout=2)
        stats = {}
        for proc in self.captures:
            # SIGINT makes tcpdump flush and print its counters.
            proc.send_signal(signal.SIGINT)
        for proc in self.captures:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        stats["samples"] = self.sampler.samples if self.sampler else 0
        return stats

    def shutdown(self) -> None:
        if self.rules is not None:
            self.rules.stop()
        for proc in self.processes:
            end_process_group(proc)
        for sock in self.sockets.values():
            try:
                sock.close()
            except OSError:
                pass

    # --- the command loop --------------------------------------------------------

    def serve(self) -> None:
        try:
            from .impair import in_force

            # What impairs this node's links as the run starts (the lab file's, or a runtime change).
            self.send({"ready": True, "node": self.node, "observers": self.start_observers(), "pid": os.getpid(),
                       "impairments": in_force(), "sysctls": tcp_sysctls()})
            for line in sys.stdin:
                if not line.strip():
                    continue
                command = json.loads(line)
                if command["op"] == "stop":
                    stats = self.stop_observers()
                    self.shutdown()
                    self.send({"id": command["id"], "ok": True, "result": stats})
                    return
                if command.get("background"):
                    thread = threading.Thread(target=self.run_command, args=(command, True), daemon=True)
                    self.background[command.get("name") or str(command["id"])] = thread
                    thread.start()
                    self.send({"id": command["id"], "ok": True, "background": True, "t_start": time.time()})
                else:
                    self.run_command(command, False)
        finally:
            self.stop_observers()
            self.shutdown()

    def run_command(self, command: dict, background: bool) -> None:
        started = time.time()
        reply: dict = {"id": command["id"], "t_start": started}
        try:
            try:  # the ops and their arguments are the contract's (protocol.ACTOR_OPS); op_* are their meaning
                protocol.check_call(command["op"], command.get("args", {}))
            except protocol.ProtocolError as exc:
                raise StepFailed(str(exc)) from None
            reply["result"] = getattr(self, "op_" + command["op"])(**command.get("args", {}))
            reply["ok"] = True
            reply["errno"] = None
        except StepFailed as exc:
            reply.update(ok=False, error=str(exc), result=exc.result, errno=getattr(exc, "errno_name", None))
        except (OSError, socket.timeout, TimeoutError) as exc:
            reply.update(ok=False, errno=errno_name(exc), error=str(exc))
        except Exception as exc:  # a bug in the actor: report it with its trace, keep serving
            reply.update(ok=False, errno=None, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
        reply["t_end"] = time.time()
        if background:
            reply["event"] = "done"
            reply["name"] = command.get("name")
        self.send(reply)

    # --- sockets -------------------------------------------------------------------

    def _sock(self, name: str) -> socket.socket:
        if name not in self.sockets:
            raise StepFailed(f"no socket named {name}")
        return self.sockets[name]

    @staticmethod
    def _ends(sock: socket.socket) -> dict:
        ends = {}
        try:
            ends["local"] = "%s:%d" % sock.getsockname()
            ends["remote"] = "%s:%d" % sock.getpeername()
        except OSError:
            pass
        return ends

    def op_listen(self, name, port, address="0.0.0.0", backlog=16, reuseaddr=False, reuseport=False):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if reuseaddr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((address, port))
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        self.sockets[name] = sock
        return self._ends(sock)

    def op_accept(self, name, sock, timeout=10.0):
        listener = self._sock(sock)
        listener.settimeout(timeout)
        conn, _ = listener.accept()
        conn.settimeout(None)
        self.sockets[name] = conn
        return self._ends(conn)

    def op_connect(self, name, address, port, bind=None, reuseaddr=False, timeout=10.0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Registered before connect, so a failed connect's socket can still be inspected or closed.
        self.sockets[name] = sock
        if reuseaddr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if bind:
            try:
                sock.bind((bind.get("address", "0.0.0.0"), bind.get("port", 0)))
            except OSError as exc:
                exc.strerror = f"bind: {exc.strerror}"
                raise
        sock.settimeout(timeout)
        sock.connect((address, port))
        sock.settimeout(None)
        return self._ends(sock)

    def op_send(self, sock, data="", size=None):
        payload = data.encode() if size is None else (b"labctl-" * (size // 7 + 1))[:size]
        target = self._sock(sock)
        sent = target.send(payload)
        if sent < len(payload):
            target.sendall(payload[sent:])
        return {"returned": len(payload)}

    def op_recv(self, sock, size=65536, expect=None, timeout=5.0, all=False):
        target = self._sock(sock)
        target.settimeout(timeout)
        chunks = []
        try:
            while True:
                chunk = target.recv(size - sum(map(len, chunks)))
                chunks.append(chunk)
                if not all or not chunk or sum(map(len, chunks)) >= size:
                    break
        finally:
            target.settimeout(None)
        data = b"".join(chunks)
        result = {"returned": len(data), "data": data.decode(errors="replace"), "eof": data == b"" or chunks[-1] == b""}
        if expect is not None and data.decode(errors="replace") != expect:
            raise StepFailed(f"received {data!r}, expected {expect.encode()!r}", result)
        return result

    def op_shutdown(self, sock, how="wr"):
        self._sock(sock).shutdown({"rd": socket.SHUT_RD, "wr": socket.SHUT_WR, "rdwr": socket.SHUT_RDWR}[how])
        return {}

    def op_close(self, sock):
        target = self._sock(sock)
        started = time.monotonic()
        target.close()  # with SO_LINGER {1, N} this blocks for up to N seconds: measured
        del self.sockets[sock]
        return {"blocked_seconds": round(time.monotonic() - started, 6)}

    def op_setsockopt(self, sock, option, value):
        target = self._sock(sock)
        if option == "SO_LINGER":
            target.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", value["onoff"], value["linger"]))
        else:
            level = socket.IPPROTO_TCP if option.startswith("TCP_") else socket.SOL_SOCKET
            target.setsockopt(level, getattr(socket, option), int(value))
        return {}

    # --- node -----------------------------------------------------------------------

    def op_exec(self, cmd, timeout=30.0, background=False, expect_exit=0, name=None):
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        # Every command gets a process group of its own, so a shell line's children die with
        # their step (a timeout, the end of the run) instead of outliving it in the node.
        if background:
            log = open(self.dir / f"exec-{name or len(self.processes)}.log", "wb")
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.processes.append(proc)
            if name:
                self.programs[name] = proc
            return {"pid": proc.pid, "log": log.name}
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_process_group(proc, grace=0)
            error = StepFailed(f"still running after {timeout} s: ended it and every process it started")
            error.errno_name = "TIMEOUT"
            raise error from None
        result = {"returned": proc.returncode, "stdout": stdout.decode(errors="replace")[-4000:],
                  "stderr": stderr.decode(errors="replace")[-4000:]}
        if expect_exit is not None and proc.returncode != expect_exit:
            raise StepFailed(f"exit status {proc.returncode}, expected {expect_exit}", result)
        return result

    def op_kill_socket(self, local_port=None, remote_port=None, remote=None, state=None):
        argv = ["ss", "-K", "-t", "-n", "-H"]
        argv += ["state", state] if state else ["state", "all"]
        if remote:
            argv += ["dst", remote]
        if local_port:
            argv += ["sport", "=", f":{local_port}"]
        if remote_port:
            argv += ["dport", "=", f":{remote_port}"]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StepFailed(f"{shlex.join(argv)}: {proc.stderr.strip()}")
        killed = [line for line in proc.stdout.splitlines() if line.strip()]
        return {"returned": len(killed), "killed": killed}

    def op_wait_state(self, state, local_port=None, remote_port=None, gone=False, timeout=10.0):
        """Until a socket is in ``state``; with ``gone``, until one has been in it and none is any more."""
        deadline = time.monotonic() + timeout

        def wanted(s: dict) -> bool:
            return (s["state"] == state and (local_port is None or s["local"].endswith(f":{local_port}"))
                    and (remote_port is None or s["remote"].endswith(f":{remote_port}")))

        while time.monotonic() < deadline:
            matching = [s for s in (self.sampler.sockets() if self.sampler else []) if wanted(s)]
            if matching and not gone:
                return {"socket": matching[0]}
            # "Gone" only counts once the state was reached: a socket that has not got
            # there yet is not one that has left it.
            if gone and not matching and any(wanted(s) for s in (self.sampler.history() if self.sampler else [])):
                return {}
            time.sleep(SAMPLE_INTERVAL)
        message = f"no socket {'left' if gone else 'reached'} {state} within {timeout} s"
        if gone and not any(wanted(s) for s in (self.sampler.history() if self.sampler else [])):
            # Sampling is all the node has: a state held between two samples is never seen, so never left.
            interval = self.sampler.interval if self.sampler else SAMPLE_INTERVAL
            message += (f": sampling every {interval * 1000:.0f} ms never saw a socket in {state}, so it cannot tell"
                        " one that never got there from one that came and went between two samples")
        error = StepFailed(message)
        error.errno_name = "TIMEOUT"
        raise error

    def op_wait_step(self, step, timeout=10.0):
        program = self.programs.get(step)
        if program is not None:
            try:
                code = program.wait(timeout)
            except subprocess.TimeoutExpired:
                error = StepFailed(f"program {step} still running after {timeout} s")
                error.errno_name = "TIMEOUT"
                raise error from None
            return {"returned": code}
        thread = self.background.get(step)
        if thread is None:
            raise StepFailed(f"no background step named {step}")
        thread.join(timeout)
        if thread.is_alive():
            error = StepFailed(f"background step {step} still running after {timeout} s")
            error.errno_name = "TIMEOUT"
            raise error
        return {}

    # --- packet rules ------------------------------------------------------------------

    def _rule_engine(self):
        if self.rules is None:
            from .rules import RuleEngine

            self.rules = RuleEngine(self.dir / "rules.jsonl", self.node, self.config.get("rule_queue", 100),
                                    self.config.get("rule_flows"), self.dir / "queue.json")
            self.rules.start()
        return self.rules

    def op_rule(self, name, rule):
        return self._rule_engine().add(name, rule)

    def op_unrule(self, name):
        return self._rule_engine().remove(name)

    def op_release(self, rule, rewrite=None, copy=False):
        return self._rule_engine().release(rule, rewrite or {}, copy)

    def op_wait_rule(self, rule, count=1, timeout=10.0):
        return self._rule_engine().wait(rule, count, timeout)


def main(argv: list[str]) -> int:
    config = json.loads(argv[0]) if argv else json.load(sys.stdin)
    actor = Actor(config)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    actor.serve()
    return 0
