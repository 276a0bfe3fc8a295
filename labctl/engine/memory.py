"""An engine in memory: labs without containers, for fast tests of what sits above an engine.

Nodes and links are records. What reaches a node is what would reach a real one: the
agent's launch line with a JSON request, decoded by the agent's own ``answer`` into
``protocol`` messages and answered with its replies, as the agent would (setup records
interfaces and routes, impair normalises and records what is in force, a loop keeps its
state, sysctls their values, the actor acknowledges every call). Nothing runs: no packets,
no sockets, no captures. Integration tests stay on a real engine.
"""

from __future__ import annotations

import io
import json
import queue
import tarfile
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Callable, Iterable, Mapping, Sequence

from ..agent import protocol
from ..agent.__main__ import answer
from ..agent.protocol import (HealthReply, Hosts, HostsReply, Impair, ImpairReply, Inspection, Loop, LoopReply, ProbeReply, Setup,
                              SetupReply, SysctlReply, Sysctls)
from ..errors import EngineError, UserError
from ..plan import LabPlan
from . import DeployReport, Engine, ExecResult, ImageInfo, LinkState, NodeState, Progress, Stream, reconcile, state_digest
from .reconcile import Held

NODE_IMAGE = "labctl-node:memory"


@dataclass
class MemoryNode:
    name: str
    image: str
    spec: str
    source: str
    links: frozenset[str]
    status: str = "running"
    has_agent: bool = True
    setup: Setup | None = None
    hosts: dict[str, str] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    impairments: dict[str, dict] = field(default_factory=dict)  # interface -> what is in force
    loop: dict = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)       # path -> content, from put
    calls: list[tuple[str, object]] = field(default_factory=list)  # (command, typed request) in order
    execs: list[list[str]] = field(default_factory=list)        # commands other than the agent's


@dataclass
class MemoryLink:
    name: str
    subnet: IPv4Network
    reserved: str
    spec: str


class MemoryEngine(Engine):
    """``lacking``: image -> the tools it lacks (the node image lacks none).
    ``in_use``: subnets other programs' networks hold. ``agent_version``: the protocol the nodes' agent speaks."""

    name = "memory"

    def __init__(self, *, lacking: Mapping[str, Iterable[str]] | None = None, in_use: Mapping[IPv4Network, str] | None = None,
                 agent_version: int = protocol.PROTOCOL_VERSION):
        self.lacking = {image: {tool: protocol.REQUIRED_TOOLS.get(tool, tool) for tool in tools} for image, tools in (lacking or {}).items()}
        self.in_use = dict(in_use or {})
        self.agent_version = agent_version
        self.lock = threading.RLock()
        self.labs_held: dict[str, tuple[dict[str, MemoryNode], dict[str, MemoryLink]]] = {}
        self.records: dict[str, str] = {}  # lab -> the state digest its last complete deploy made

    # --- a lab's life ---------------------------------------------------------------------------

    def version(self) -> str:
        return "in-memory engine"

    def ensure_image(self, *, offline: bool = False, rebuild: bool = False, progress: Progress | None = None) -> ImageInfo:
        return ImageInfo(NODE_IMAGE, "memory", "memory", built=False)

    def image_present(self) -> str | None:
        return NODE_IMAGE

    def subnets_in_use(self, exclude_lab: str | None = None) -> Mapping[IPv4Network, str]:
        with self.lock:
            used = dict(self.in_use)
            for lab, (_, links) in self.labs_held.items():
                if lab != exclude_lab:
                    used.update({link.subnet: f"labctl-{lab}-{link.name}" for link in links.values()})
            return used

    def _lab(self, lab: str) -> tuple[dict[str, MemoryNode], dict[str, MemoryLink]]:
        with self.lock:
            return self.labs_held.setdefault(lab, ({}, {}))

    def deploy(self, plan: LabPlan, image: str, progress: Progress | None = None,
               after: Callable[[DeployReport], None] | None = None) -> DeployReport:
        from .. import nodes as agent

        nodes, links = self._lab(plan.key)
        report = DeployReport()
        todo = reconcile.changes(plan, image, {n: Held(l.spec) for n, l in links.items()},
                                 {n: Held(m.spec, m.status == "running", m.links, configured=m.setup is not None
                                          and m.setup.spec == m.spec) for n, m in nodes.items()})
        for name in todo.stale_nodes:
            report.removed.append(name)
            del nodes[name]
        for name in todo.stale_links:
            report.removed.append(name)
            del links[name]
        made: list[str] = []
        try:
            for link in todo.new_links:
                links[link.name] = MemoryLink(link.name, link.subnet, str(link.reserved), link.spec_hash())
                report.created.append(link.name)
            for node in todo.new_nodes:
                nodes[node.name] = MemoryNode(node.name, node.image or image, node.spec_hash(image), plan.source,
                                              frozenset(i.link for i in node.interfaces), has_agent=node.image is None)
                made.append(node.name)
                if node.image:
                    agent.install_agent(self, plan.key, node.name)
                agent.setup(self, plan.key, node.name, node.setup(image), node.image or image)
                report.created.append(node.name)
            report.fresh.update(n.name for n in todo.new_nodes)
            if after is not None:
                after(report)
        except BaseException:
            for name in made:
                nodes.pop(name, None)
            for link in todo.new_links:
                links.pop(link.name, None)
            if not nodes and not links:
                self.labs_held.pop(plan.key, None)
            raise
        report.kept.extend([l.name for l in todo.kept_links] + [n.name for n in todo.kept_nodes])
        report.fresh.update(n.name for n in todo.new_nodes)
        if report.changed and todo.kept_nodes:
            agent.refresh_hosts(self, plan.key, todo.kept_nodes)
        self.records[plan.key] = state_digest({n.name: n.spec_hash(image) for n in plan.nodes},
                                              {l.name: l.spec_hash() for l in plan.links})
        return report

    def recorded(self, lab: str) -> set[str]:
        return {self.records[lab]} if lab in self.records else set()

    def destroy(self, lab: str | None) -> list[str]:
        with self.lock:
            labs = [lab] if lab else list(self.labs_held)
            names = []
            for name in labs:
                nodes, links = self.labs_held.pop(name, ({}, {}))
                self.records.pop(name, None)
                names += list(nodes) + list(links)
            return names

    def labs(self) -> list[str]:
        with self.lock:
            return sorted(lab for lab, (nodes, links) in self.labs_held.items() if nodes or links)

    def nodes(self, lab: str) -> list[NodeState]:
        nodes, _ = self.labs_held.get(lab, ({}, {}))
        return [NodeState(lab, n.name, n.name, n.status, n.image, n.spec, n.source) for n in sorted(nodes.values(), key=lambda n: n.name)]

    def links(self, lab: str) -> list[LinkState]:
        _, links = self.labs_held.get(lab, ({}, {}))
        return [LinkState(lab, l.name, l.name, str(l.subnet), l.reserved, l.spec) for l in sorted(links.values(), key=lambda l: l.name)]

    def node(self, lab: str, name: str) -> MemoryNode:
        nodes, _ = self.labs_held.get(lab, ({}, {}))
        if name not in nodes:
            raise UserError(f"lab '{lab}' has no node '{name}' up", hint=f"see `labctl status {lab}`")
        return nodes[name]

    # --- talking to nodes -----------------------------------------------------------------------

    def exec(self, lab: str, node: str, argv: Sequence[str], *, stdin: bytes | None = None,
             stream: Callable[[bytes, bool], None] | None = None) -> ExecResult:
        record = self.node(lab, node)
        if record.status != "running":
            raise EngineError(f"node {node} of lab {lab} is {record.status}, not running")
        rest = _agent_argv(argv)
        if rest is None:
            record.execs.append(list(argv))
            return ExecResult(0, "", "")
        return self._agent(record, rest)

    def _agent(self, node: MemoryNode, argv: list[str], handlers: Mapping[str, Callable] | None = None) -> ExecResult:
        if not node.has_agent:
            return ExecResult(1, "", f"/usr/bin/python3: No module named {protocol.MODULE}")
        if argv[:2] != [protocol.VERSION_FLAG, str(self.agent_version)]:
            return ExecResult(protocol.EXIT_MISMATCH, "", f"labctl speaks agent protocol {argv[1:2]}, this agent speaks {self.agent_version}")
        command, rest = argv[2], argv[3:]
        handler = (handlers or self._handlers(node)).get(command)
        if handler is None:
            return ExecResult(2, "", f"unknown agent command: {command}")
        reply = answer(command, rest, handler)
        return ExecResult(0 if reply.ok else 1, json.dumps(reply.to_json()) + "\n", "")

    def _handlers(self, node: MemoryNode) -> dict[str, Callable]:
        def recorded(command: str, handle: Callable) -> Callable:
            def call(request=None):
                node.calls.append((command, request))
                return handle(request) if request is not None else handle()
            return call

        return {command: recorded(command, handle) for command, handle in {
            "setup": lambda request: _setup(node, request, self.lacking.get(node.image, {})),
            "hosts": lambda request: _hosts(node, request),
            "inspect": lambda: _inspect(node),
            "health": lambda: HealthReply(configured=node.setup is not None, spec=node.setup.spec if node.setup else "",
                                          detail="" if node.setup else "its setup never finished"),
            "impair": lambda request: _impair(node, request),
            "loop": lambda request: _loop(node, request),
            "probe": lambda: ProbeReply(features={"netem": {"what": "tc qdisc netem", "ok": True, "detail": "", "fallback": ""}}),
        }.items()}

    def attach(self, lab: str, node: str, argv: Sequence[str]) -> Stream:
        rest = _agent_argv(argv)
        if rest is None or rest[2:3] != ["actor"]:
            raise EngineError(f"the in-memory engine attaches only the actor, not {' '.join(argv)}")
        return MemoryActor(self.node(lab, node), json.loads(rest[3]))

    def put(self, lab: str, node: str, path: str, archive: bytes) -> None:
        record = self.node(lab, node)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    record.files[f"{path.rstrip('/')}/{member.name}"] = tar.extractfile(member).read()
        record.has_agent = record.has_agent or any(p.startswith(f"{protocol.AGENT_HOME}/labctl/agent/") for p in record.files)

    def fetch(self, lab: str, node: str, path: str) -> bytes | None:
        record = self.node(lab, node)
        found = {p: data for p, data in record.files.items() if p == path or p.startswith(path.rstrip("/") + "/")}
        if not found:
            return None
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in found.items():
                info = tarfile.TarInfo(name.lstrip("/"))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def exec_in_netns(self, lab: str, node: str, argv: Sequence[str]) -> ExecResult:
        record = self.node(lab, node)
        rest = _agent_argv(argv)
        helper = MemoryNode(record.name, NODE_IMAGE, "", "", frozenset())  # the helper runs the node image

        def sysctls(request: Sysctls) -> SysctlReply:
            previous = {key: record.sysctls.get(key, "0") for key in request.values}
            record.sysctls.update(request.values)
            record.calls.append(("sysctl", request))
            return SysctlReply(previous=previous)

        return self._agent(helper, rest or [], {"sysctl": sysctls})

    def probe(self, image: str, argv: Sequence[str]) -> ExecResult:
        return self._agent(MemoryNode("probe", image, "", "", frozenset()), _agent_argv(argv) or [])


def _agent_argv(argv: Sequence[str]) -> list[str] | None:
    """What follows ``-m labctl.agent`` in a launch line; None for any other command."""
    argv = list(argv)
    if protocol.MODULE in argv and argv[argv.index(protocol.MODULE) - 1] == "-m":
        return argv[argv.index(protocol.MODULE) + 1:]
    return None


def _setup(node: MemoryNode, request: Setup, lacking: Mapping[str, str]) -> SetupReply:
    if lacking:
        return SetupReply(ok=False, node=request.node, missing=dict(lacking), error=f"the image lacks {', '.join(lacking)}")
    node.setup, node.hosts = request, dict(request.hosts)
    node.sysctls.update(request.sysctls)
    return SetupReply(node=request.node, actions=tuple(f"route {r.to} via {r.via} dev {r.dev}" for r in request.routes))


def _hosts(node: MemoryNode, request: Hosts) -> HostsReply:
    node.hosts = dict(request.hosts)
    return HostsReply(hosts=len(request.hosts))


def _inspect(node: MemoryNode) -> Inspection:
    setup = node.setup
    interfaces = tuple({"name": i.name, "state": "UP", "mac": None, "addresses": [i.address]} for i in setup.interfaces) if setup else ()
    routes = tuple({"to": r.to, "via": r.via, "dev": r.dev, "scope": None} for r in setup.routes) if setup else ()
    _heal_if_due(node)
    return Inspection(interfaces=interfaces, routes=routes,
                      impairments=tuple(s for s in node.impairments.values() if s.get("settings")), loop=node.loop or None)


def _impair(node: MemoryNode, request: Impair) -> ImpairReply:
    """What the agent records (agent/impair.py), without tc or iptables: netem is taken to be there."""
    result = {}
    for iface, wish in request.interfaces.items():
        settings = protocol.normalize(wish.settings)
        state = node.impairments.get(iface, {"interface": iface, "settings": {}})
        if request.origin == "lab" and state.get("lab") == settings and not request.force:
            result[iface] = {**state, "changed": False}
            continue
        mechanism = None if not settings else "netem" if protocol.needs_netem(settings) else "tbf"
        state = {"interface": iface, "settings": settings, "origin": request.origin, "since": time.time(),
                 "lab": settings if request.origin == "lab" else state.get("lab", {}), "mechanism": mechanism,
                 "parts": {word: mechanism for key, word in protocol.PARTS if settings.get(key)}}
        node.impairments[iface] = state
        result[iface] = {k: v for k, v in state.items() if k != "lab"} | {"changed": True}
    return ImpairReply(interfaces=result)


def _heal_if_due(node: MemoryNode) -> None:
    if node.loop.get("active") and time.time() >= node.loop["heal_at"]:
        node.loop = {**node.loop, "active": False, "healed": node.loop["heal_at"]}


def _loop(node: MemoryNode, request: Loop) -> LoopReply:
    _heal_if_due(node)
    if request.action == "start":
        started = max(time.time(), request.start_at)
        node.loop = {"id": request.id, "active": True, "peer": request.peer, "dev": request.dev, "match": request.match,
                     "started": started, "heal_at": request.heal_at}
        return LoopReply(id=request.id, started=started, heal_at=request.heal_at)
    if request.action == "heal":
        if not node.loop.get("active") or (request.id and node.loop.get("id") != request.id):
            return LoopReply(healed=False, state=dict(node.loop))
        node.loop = {**node.loop, "active": False, "healed": time.time()}
        return LoopReply(healed=True, state=dict(node.loop))
    if request.action == "status":
        return LoopReply(state=dict(node.loop))
    return LoopReply(ok=False, error=f"unknown loop action {request.action!r}; known: start, heal, status")


class MemoryActor(Stream):
    """The actor's side of the stream: ready first, then an ok reply to every call (nothing is done)."""

    def __init__(self, node: MemoryNode, config: dict):
        self.node = node
        self.config = config
        self.out: queue.Queue[bytes | None] = queue.Queue()
        self.calls: list[protocol.ActorCall] = []
        ready = protocol.Ready(True, config.get("node", node.name), {"captures": [], "sampler": False}, 0,
                               tuple(s for s in node.impairments.values() if s.get("settings")))
        self._send(ready.to_json())
        self.code: int | None = None

    def _send(self, message: dict) -> None:
        self.out.put((json.dumps(message) + "\n").encode())

    def write(self, data: bytes) -> None:
        for line in data.decode().splitlines():
            if not line.strip():
                continue
            call = protocol.ActorCall.from_json(json.loads(line))
            protocol.check_call(call.op, call.args)
            self.calls.append(call)
            now = time.time()
            self._send(protocol.ActorReply(call.id, ok=True, t_start=now, t_end=now,
                                           result={"samples": 0} if call.op == "stop" else None).to_json())
            if call.op == "stop":
                self.code = 0
                self.out.put(None)

    def read(self) -> tuple[int, bytes] | None:
        chunk = self.out.get()
        return None if chunk is None else (1, chunk)

    def close(self) -> None:
        self.out.put(None)

    def exit_code(self) -> int | None:
        return self.code
