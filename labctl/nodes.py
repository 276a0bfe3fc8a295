"""The host side of the agent contract: launch the agent in a node, call it, stream the actor.

Every word labctl says to a node goes through here, over the engine's
exec, attach and copy, whatever the node's image: the node image has the
agent in ``protocol.AGENT_HOME``; a node on another image gets it copied
there before it starts (``install_agent``). The messages are
``labctl/agent/protocol.py``'s.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from .agent import protocol
from .agent.protocol import (ActorCall, HealthReply, Hosts, Impair, Inspection, Loop, LoopReply, ProbeReply, Reply, Setup, SetupReply,
                             SysctlReply, Sysctls)
from .engine import Engine, ExecResult
from .errors import EngineError, UserError

if TYPE_CHECKING:
    from .plan import NodePlan

ROOT = Path(__file__).resolve().parent.parent
AGENT_DIR = ROOT / "labctl" / "agent"
PARALLEL = 8  # agent calls at once


class NodeLost(Exception):
    """The node's actor went away (the node died or was removed) during a run."""


# --- the agent's code, for images that do not carry it --------------------------------------------

def agent_files() -> dict[str, bytes]:
    """The agent as files under ``AGENT_HOME``: ``labctl/__init__.py`` and ``labctl/agent/``."""
    files = {"labctl/__init__.py": (ROOT / "labctl" / "__init__.py").read_bytes()}
    for path in sorted(AGENT_DIR.rglob("*.py")):
        files[f"labctl/agent/{path.relative_to(AGENT_DIR).as_posix()}"] = path.read_bytes()
    return files


def tar_of(files: Mapping[str, bytes]) -> io.BytesIO:
    """A tar of files by path, with their folders (a copy into a container creates no parents)."""
    buffer = io.BytesIO()
    folders = sorted({"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)})
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    buffer.seek(0)
    return buffer


def install_agent(engine: Engine, lab: str, node: str) -> None:
    """Copy the agent into a node on an image of its own (created, before it starts)."""
    home = protocol.AGENT_HOME.strip("/")
    engine.put(lab, node, "/", tar_of({f"{home}/{name}": data for name, data in agent_files().items()}).getvalue())


# --- one-shot commands ------------------------------------------------------------------------------

def command_line(command: str, request: protocol.Message | None = None) -> list[str]:
    return protocol.command_line(command, *([json.dumps(request.to_json())] if request is not None else []))


def reply_of(node: str, command: str, result: ExecResult, check: bool = True):
    """The typed reply of an agent command from what its exec gave; an EngineError when it failed."""
    _, reply_type = protocol.COMMANDS[command]
    text = result.stdout.strip()
    if result.exit_code == protocol.EXIT_MISMATCH or "unknown agent command: --protocol" in result.stderr:
        raise EngineError(f"the labctl agent in node {node} speaks another protocol version "
                          f"({(result.stderr.strip().splitlines() or ['?'])[-1]})",
                          hint="`labctl up` the lab again: a node whose agent is stale is recreated")
    if result.exit_code in (126, 127) and not text:
        raise EngineError(f"node {node} cannot start the labctl agent: {result.stderr.strip()[-300:] or 'no python3'}",
                          hint="a node's image needs python3 and iproute2 (Debian: python3, iproute2)")
    try:
        reply = reply_type.from_json(json.loads(text.splitlines()[-1])) if text else None
    except ValueError as exc:
        raise EngineError(f"{command} on node {node} answered something else than its reply: {exc}") from None
    if reply is None:
        reason = (result.stderr or result.stdout).strip()[-600:] or f"exit status {result.exit_code}"
        raise EngineError(f"{command} on node {node} failed: {reason}")
    if check and not reply.ok:
        raise EngineError(f"{command} on node {node} failed: {reply.error or f'exit status {result.exit_code}'}")
    return reply


def call(engine: Engine, lab: str, node: str, command: str, request: protocol.Message | None = None, *,
         check: bool = True) -> Reply:
    """Run one agent command in a running node and return its typed reply."""
    return reply_of(node, command, engine.exec(lab, node, command_line(command, request)), check)


def setup(engine: Engine, lab: str, node: str, request: Setup, image: str) -> SetupReply:
    """Shape a node's network; a node whose image lacks a tool the agent needs is the user's to fix."""
    reply = call(engine, lab, node, "setup", request, check=False)
    if reply.missing:
        packages = sorted(set(reply.missing.values()))
        raise UserError(f"node {node}: its image {image} lacks {', '.join(reply.missing)}, which labctl needs in every node",
                        hint=f"install the Debian package(s) {', '.join(packages)} in that image, or leave `image:` out")
    if not reply.ok:
        raise EngineError(f"setting up node {node} failed: {reply.error}")
    return reply


def write_hosts(engine: Engine, lab: str, node: str, hosts: Mapping[str, str]) -> None:
    call(engine, lab, node, "hosts", Hosts(dict(hosts)))


def refresh_hosts(engine: Engine, lab: str, nodes: Sequence[NodePlan]) -> None:
    """Nodes that stay in a changed lab learn every node's address by name, in parallel."""
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(nodes))) as pool:
        list(pool.map(lambda node: write_hosts(engine, lab, node.name, node.hosts_map()), nodes))


def inspect(engine: Engine, lab: str, node: str) -> Inspection:
    return call(engine, lab, node, "inspect")


def health(engine: Engine, lab: str, node: str) -> HealthReply:
    """Whether the node's setup finished (in its current network namespace), and for which spec."""
    return call(engine, lab, node, "health")


def impair(engine: Engine, lab: str, node: str, request: Impair) -> protocol.ImpairReply:
    return call(engine, lab, node, "impair", request)


def loop(engine: Engine, lab: str, node: str, request: Loop) -> LoopReply:
    return call(engine, lab, node, "loop", request)


def set_sysctls(engine: Engine, lab: str, node: str, values: Mapping[str, str]) -> dict[str, str]:
    """Network sysctls in a running node; returns their previous values.

    /proc/sys is read-only in nodes (a writable one would let a node change the host's
    kernel.* settings): the engine's network-namespace helper, which runs only labctl's own
    code, writes net.* there."""
    result = engine.exec_in_netns(lab, node, command_line("sysctl", Sysctls({k: str(v) for k, v in values.items()})))
    reply: SysctlReply = reply_of(node, "sysctl", result, check=False)
    if not reply.ok:
        raise EngineError(f"setting {', '.join(values)} on {node} failed: {reply.error}")
    return reply.previous


def probe(engine: Engine, image: str) -> ProbeReply:
    """Which kernel features a node can use, tried in a throwaway node (for doctor)."""
    return reply_of("probe", "probe", engine.probe(image, command_line("probe")))


# --- the actor: one streamed session per node for the length of a run -------------------------------

class ActorSession:
    """The runner's line to one node's actor: JSON lines over an engine stream."""

    def __init__(self, engine: Engine, lab: str, node: str, config: dict, log_path: Path,
                 on_event: Callable[[str, dict], None] | None = None, lost: threading.Event | None = None):
        self.node = node
        self.lost = lost or threading.Event()  # set when this actor goes away
        self.on_event = on_event or (lambda node, event: None)
        self.stream = engine.attach(lab, node, protocol.command_line("actor", json.dumps(config)))
        self.log = open(log_path, "ab")
        self.lock = threading.Lock()
        self.replies: dict[int, dict] = {}
        self.arrived = threading.Condition(self.lock)
        self.next_id = 0
        self.ready: dict | None = None
        self.closed = False
        self.stopping = False  # the runner asked the actor to stop: its end is no loss
        self.reader = threading.Thread(target=self._read, daemon=True, name=f"actor-{node}")
        self.reader.start()

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.stream.read()
                if chunk is None:
                    break
                kind, data = chunk
                if kind == 2:
                    self.log.write(data)
                    self.log.flush()
                    continue
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._dispatch(json.loads(line))
        except OSError:
            pass
        finally:
            with self.lock:
                self.closed = True
                self.arrived.notify_all()
            if not self.stopping:
                self.lost.set()

    def _dispatch(self, message: dict) -> None:
        if message.get("event"):
            self.on_event(self.node, message)
        with self.lock:
            if "ready" in message:
                self.ready = message
            elif "id" in message and not message.get("event"):
                self.replies[message["id"]] = message
            self.arrived.notify_all()

    def wait_ready(self, timeout: float = 20.0) -> dict:
        with self.lock:
            self.arrived.wait_for(lambda: self.ready is not None or self.closed, timeout)
            if self.ready is None:
                tail = self._log_tail()
                if "agent protocol" in tail or "unknown agent command: --protocol" in tail:
                    raise EngineError(f"the labctl agent in node {self.node} speaks another protocol version ({tail})",
                                      hint="`labctl up` the lab again: a node whose agent is stale is recreated")
                raise NodeLost(f"the actor on {self.node} did not start: {tail}")
            return self.ready

    def call(self, op: str, args: dict | None = None, *, timeout: float = 60.0, background: bool = False,
             name: str | None = None) -> dict:
        """One actor op (``protocol.ACTOR_OPS``); its ``protocol.ActorReply`` as a dict."""
        protocol.check_call(op, args or {})
        with self.lock:
            self.next_id += 1
            ident = self.next_id
        command = ActorCall(ident, op, dict(args or {}), background, name)
        try:
            self.stream.write((json.dumps(command.to_json()) + "\n").encode())
        except OSError as exc:
            raise NodeLost(f"node {self.node} is gone ({exc})") from None
        with self.lock:
            self.arrived.wait_for(lambda: ident in self.replies or self.closed, timeout)
            if ident in self.replies:
                return self.replies.pop(ident)
            if self.closed:
                raise NodeLost(f"node {self.node} stopped answering during '{op}': {self._log_tail()}")
        raise NodeLost(f"node {self.node} did not answer '{op}' within {timeout:.0f} s")

    def _log_tail(self) -> str:
        try:
            self.log.flush()
            return Path(self.log.name).read_bytes()[-400:].decode(errors="replace").strip() or "no output"
        except OSError:
            return "no log"

    def close(self) -> None:
        self.stopping = True
        self.stream.close()
        self.reader.join(timeout=2)
        self.log.close()
