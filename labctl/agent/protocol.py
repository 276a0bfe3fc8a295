"""The one contract between labctl on the host and its agent in a node.

Both sides import this module: the host (``labctl/nodes.py``) to launch the
agent and shape what it sends, the agent (``__main__``) to check what it
receives. Standard library only: the agent runs on the node's Debian python3.

The wire: the agent is started with :func:`command_line`; a one-shot command
takes one JSON object (its request) as its last argument and prints one JSON
object (its reply), exit status 0 when ``ok``. The actor is streamed instead:
one :class:`ActorCall` per line on stdin, one :class:`ActorReply` per line on
stdout (background steps add a reply with ``event: "done"`` when they end),
after a first :class:`Ready` line. Every launch line carries
``PROTOCOL_VERSION``; an agent of another version refuses to start with
``EXIT_MISMATCH`` and says which version it speaks.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

PROTOCOL_VERSION = 1
# Where the agent lives in every node: the node image has it there, a node on another image
# gets it copied there before it starts. Off the image's own Python path, hence PYTHONPATH.
AGENT_HOME = "/opt/labctl"
MODULE = "labctl.agent"
VERSION_FLAG = "--protocol"
EXIT_MISMATCH = 64  # the agent in the node speaks another protocol version


def command_line(command: str, *args: str, python: str = "python3") -> list[str]:
    """How to start the agent in any node (and how the agent starts its own daemons)."""
    return ["env", f"PYTHONPATH={AGENT_HOME}", python, "-m", MODULE, VERSION_FLAG, str(PROTOCOL_VERSION), command, *args]


def mismatch_message(theirs: str) -> str:
    return f"labctl speaks agent protocol {theirs}, this agent ({__file__}) speaks {PROTOCOL_VERSION}"


# What the agent needs in a node's image: program -> the Debian package that has it.
REQUIRED_TOOLS = {"ip": "iproute2", "tc": "iproute2", "ss": "iproute2", "iptables": "iptables",
                  "tcpdump": "tcpdump", "ethtool": "ethtool"}


class ProtocolError(ValueError):
    """A message that does not have the shape of its type."""


# --- messages ----------------------------------------------------------------------------------

class Message:
    """A dataclass that crosses the host/agent line as a JSON object."""

    def to_json(self) -> dict:
        return _encode(self)

    @classmethod
    def from_json(cls, data: object):
        return _decode(cls, data, cls.__name__)


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object, not {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        known = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ProtocolError(f"{where}: unknown field(s) {', '.join(unknown)}")
        missing = [n for n, f in known.items() if n not in value and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ProtocolError(f"{where}: missing field(s) {', '.join(missing)}")
        return tp(**{k: _decode(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ProtocolError(f"{where}: expected a list, not {type(value).__name__}")
        items = [_decode(args[0] if args else Any, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object, not {type(value).__name__}")
        return {k: _decode(args[1] if args else Any, v, f"{where}.{k}") for k, v in value.items()}
    if tp in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ProtocolError(f"{where}: expected {tp.__name__}, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Reply(Message):
    """What every one-shot command answers at least; ``error`` when it could not do it."""

    ok: bool = True
    error: str | None = None


# setup: shape the node's network after its container starts.

@dataclass(frozen=True)
class Interface(Message):
    name: str          # the link's name, which the interface takes
    address: str       # CIDR, e.g. 10.250.1.1/24: how the engine's interface is found


@dataclass(frozen=True)
class Route(Message):
    to: str            # "default" or CIDR
    via: str
    dev: str


@dataclass(frozen=True)
class Setup(Message):
    node: str
    role: str
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...]
    sysctls: dict[str, str]
    hosts: dict[str, str]
    # The bridge addresses on this node's links (the host's end): each gets a prohibit route, so
    # no lab packet is routed to the host, whatever the lab's own routes say.
    blocked: tuple[str, ...] = ()
    spec: str = ""     # the node's spec hash, kept in SETUP_MARKER once setup has finished


# Written by setup as its last act: the spec it applied and the network namespace it applied it
# in (a restarted container has a new one, and the engine's interfaces back). ``health`` reads it.
SETUP_MARKER = "/run/labctl-setup.json"


@dataclass(frozen=True)
class SetupReply(Reply):
    node: str = ""
    actions: tuple[str, ...] = ()
    missing: dict[str, str] = field(default_factory=dict)  # tools the image lacks -> their Debian package


# health: whether setup finished in this node's network namespace, and for which spec.

@dataclass(frozen=True)
class HealthReply(Reply):
    configured: bool = False
    spec: str = ""
    detail: str = ""   # why not configured


# hosts: rewrite the lab's block of /etc/hosts.

@dataclass(frozen=True)
class Hosts(Message):
    hosts: dict[str, str]  # node name -> address


@dataclass(frozen=True)
class HostsReply(Reply):
    hosts: int = 0


# inspect: what the node's network looks like now.

@dataclass(frozen=True)
class Inspection(Reply):
    interfaces: tuple[dict, ...] = ()   # {name, state, mac, addresses}
    routes: tuple[dict, ...] = ()       # {to, via, dev, scope}
    impairments: tuple[dict, ...] = ()  # a DirectionState per impaired interface
    loop: dict | None = None
    blocked: tuple[str, ...] = ()       # destinations with a prohibit route (the bridge addresses)
    # What `health` and `services` say, in the same reply: `status` asks each node once, not three times.
    health: HealthReply | None = None
    services: tuple[Service, ...] = ()


# impair: link impairments on this node's egress.

@dataclass(frozen=True)
class InterfaceWish(Message):
    settings: dict[str, Any]   # agent settings (see IMPAIRMENT_SETTINGS); {} clears
    peer: str | None = None    # the one other endpoint on a two-endpoint link


@dataclass(frozen=True)
class Impair(Message):
    interfaces: dict[str, InterfaceWish]
    origin: str = "runtime"    # lab | runtime | scenario
    mechanism: str = "auto"    # one of MECHANISMS
    force: bool = False        # apply a lab-origin wish even if it is the one last applied


@dataclass(frozen=True)
class ImpairReply(Reply):
    interfaces: dict[str, dict] = field(default_factory=dict)  # iface -> DirectionState


# loop: a transient forwarding loop between two routers.

@dataclass(frozen=True)
class Loop(Message):
    action: str                       # start | heal | status
    id: str | None = None
    dev: str | None = None
    peer: str | None = None
    partner: tuple[str, ...] = ()
    subnets: tuple[str, ...] = ()
    match: dict | None = None
    start_at: float = 0.0
    heal_at: float = 0.0
    at: float | None = None           # heal: when (the scheduled heal of loop ``id``)


@dataclass(frozen=True)
class LoopReply(Reply):
    id: str | None = None
    started: float | None = None
    heal_at: float | None = None
    healed: bool | None = None
    state: dict | None = None


# sysctl: network sysctls, set from a helper sharing the node's network namespace.

@dataclass(frozen=True)
class Sysctls(Message):
    values: dict[str, str]


@dataclass(frozen=True)
class SysctlReply(Reply):
    previous: dict[str, str] = field(default_factory=dict)


# probe (for doctor, in a throwaway node): no request.

@dataclass(frozen=True)
class ProbeReply(Reply):
    features: dict[str, dict] = field(default_factory=dict)  # key -> {what, ok, detail, fallback, seconds}


# files-prepare, files-seal, startup, provision-state, services: a node's own files and programs
# from the lab file (files:, startup:), see agent/startup.py and labctl/provision.py.

@dataclass(frozen=True)
class FilesPrepare(Message):
    dsts: list[str]                                   # node paths about to be copied in (old copies go first)
    remove: list[str] = field(default_factory=list)   # node paths the lab no longer copies


@dataclass(frozen=True)
class FilesSeal(Message):
    hash: str | None                                  # content hash of what the node now holds
    dsts: list[str] = field(default_factory=list)
    ro: list[str] = field(default_factory=list)       # node paths that lose every write bit


@dataclass(frozen=True)
class StartupCommand(Message):
    cmd: str
    service: bool = False
    timeout: float = 60.0


@dataclass(frozen=True)
class Startup(Message):
    startup: list[StartupCommand]
    key: str                 # what the startup depends on (commands and files): kept in the node
    commands: bool = True    # run the one-shot commands (else only services not running are started)
    restart: bool = False    # restart every service


@dataclass(frozen=True)
class Service(Message):
    index: int               # its place in the node's startup list
    cmd: str
    pid: int                 # of the service's process group leader
    log: str
    state: str = "running"   # running | exited
    exit: int | None = None
    tail: str | None = None  # the end of its log, once exited
    status_file: str | None = None
    started: float | None = None


@dataclass(frozen=True)
class StartupReply(Reply):
    index: int | None = None   # the command that failed
    cmd: str | None = None
    exit: int | None = None
    output: str = ""
    reason: str | None = None
    started: list[Service] = field(default_factory=list)
    kept: list[Service] = field(default_factory=list)


@dataclass(frozen=True)
class ProvisionState(Reply):
    files_hash: str | None = None
    startup_key: str | None = None
    files: list[str] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)


@dataclass(frozen=True)
class ServicesReply(Reply):
    services: list[Service] = field(default_factory=list)


# command -> (request type or None, reply type). The actor and the shaper are not one-shot.
COMMANDS: dict[str, tuple[type | None, type]] = {
    "setup": (Setup, SetupReply),
    "hosts": (Hosts, HostsReply),
    "inspect": (None, Inspection),
    "health": (None, HealthReply),
    "impair": (Impair, ImpairReply),
    "loop": (Loop, LoopReply),
    "sysctl": (Sysctls, SysctlReply),
    "probe": (None, ProbeReply),
    "files-prepare": (FilesPrepare, Reply),
    "files-seal": (FilesSeal, Reply),
    "startup": (Startup, StartupReply),
    "provision-state": (None, ProvisionState),
    "services": (None, ServicesReply),
}


# --- the actor: a streamed session for the length of a run --------------------------------------

@dataclass(frozen=True)
class ActorCall(Message):
    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    background: bool = False
    name: str | None = None


@dataclass(frozen=True)
class Ready(Message):
    ready: bool
    node: str
    observers: dict[str, Any]
    pid: int
    impairments: tuple[dict, ...] = ()
    sysctls: dict[str, str] = field(default_factory=dict)  # TCP_SYSCTLS as the run starts


# The node's TCP settings that change what its kernel does with a segment, recorded as each
# run starts (run.json's observers.sysctls), so analysis replays the node's own rules.
TCP_SYSCTLS = ("net.ipv4.tcp_rfc1337", "net.ipv4.tcp_timestamps", "net.ipv4.tcp_tw_reuse",
               "net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_fin_timeout")


@dataclass(frozen=True)
class ActorReply(Message):
    id: int
    ok: bool = False
    t_start: float | None = None
    t_end: float | None = None
    result: Any = None
    errno: str | None = None
    error: str | None = None
    trace: str | None = None
    background: bool | None = None
    event: str | None = None   # "done": a background step ended
    name: str | None = None


# op -> (required arguments, optional arguments). The actor's op_* methods are their meaning.
ACTOR_OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "listen": (("name", "port"), ("address", "backlog", "reuseaddr", "reuseport")),
    "accept": (("name", "sock"), ("timeout",)),
    "connect": (("name", "address", "port"), ("bind", "reuseaddr", "timeout")),
    "send": (("sock",), ("data", "size")),
    "recv": (("sock",), ("size", "expect", "timeout", "all")),
    "shutdown": (("sock",), ("how",)),
    "close": (("sock",), ()),
    "setsockopt": (("sock", "option", "value"), ()),
    "exec": (("cmd",), ("timeout", "background", "expect_exit", "name")),
    "kill_socket": ((), ("local_port", "remote_port", "remote", "state")),
    "wait_state": (("state",), ("local_port", "remote_port", "gone", "timeout")),
    "wait_step": (("step",), ("timeout",)),
    "rule": (("name", "rule"), ()),
    "unrule": (("name",), ()),
    "release": (("rule",), ("rewrite", "copy")),
    "wait_rule": (("rule",), ("count", "timeout")),
    "stop": ((), ()),
}


def check_call(op: str, args: Mapping[str, Any]) -> None:
    """A ProtocolError unless ``op`` is an actor op and ``args`` fit its shape."""
    if op not in ACTOR_OPS:
        raise ProtocolError(f"unknown actor op {op!r}; known: {', '.join(ACTOR_OPS)}")
    required, optional = ACTOR_OPS[op]
    missing = [a for a in required if a not in args]
    unknown = sorted(set(args) - set(required) - set(optional))
    if missing or unknown:
        raise ProtocolError(f"actor op {op}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])))


# --- impairment settings: the agent's words, defined once ----------------------------------------

MECHANISM_ENV = "LABCTL_IMPAIR_MECHANISM"
MECHANISMS = ("auto", "netem", "fallback")
DISTRIBUTIONS = ("uniform", "normal")


@dataclass(frozen=True)
class Setting:
    key: str          # the agent's name, in its unit
    field: str        # the lab file's word (``model.Impairment``), in seconds, fractions or bit/s
    kind: type        # what the agent holds: float, int or str
    scale: float      # lab-file value * scale = agent value
    word: str         # how a person says it (and the name of the part a mechanism does)
    netem: bool       # needs netem (or the userspace engine); the rest a tbf does
    qualifies: str | None = None  # a modifier of another setting (no part of its own)


IMPAIRMENT_SETTINGS = (
    Setting("delay_ms", "delay", float, 1000, "delay", True),
    Setting("jitter_ms", "jitter", float, 1000, "jitter", True),
    Setting("distribution", "distribution", str, 1, "distribution", False, qualifies="jitter_ms"),
    Setting("loss_pct", "loss", float, 100, "loss", True),
    Setting("loss_correlation_pct", "loss_correlation", float, 100, "correlation", False, qualifies="loss_pct"),
    Setting("duplicate_pct", "duplicate", float, 100, "duplicate", True),
    Setting("reorder_pct", "reorder", float, 100, "reorder", True),
    Setting("corrupt_pct", "corrupt", float, 100, "corrupt", True),
    Setting("rate_bit", "rate", int, 1, "rate", False),
    Setting("limit", "limit", int, 1, "limit", False),
)
SETTINGS = {s.key: s for s in IMPAIRMENT_SETTINGS}
NETEM_KEYS = tuple(s.key for s in IMPAIRMENT_SETTINGS if s.netem)
# The parts a mechanism does, as a person names them: settings that are not modifiers of another.
PARTS = tuple((s.key, s.word) for s in IMPAIRMENT_SETTINGS if s.qualifies is None)


def settings_from_lab(values: Mapping[str, Any]) -> dict:
    """A lab file's impairment fields (``delay`` in seconds, ``loss`` as a fraction, ...) -> agent settings."""
    result: dict = {}
    for s in IMPAIRMENT_SETTINGS:
        value = values.get(s.field)
        if s.kind is not str and value:
            result[s.key] = round(value * s.scale, 6) if s.kind is float else int(round(value * s.scale))
    if result.get("jitter_ms"):
        result["distribution"] = values.get("distribution") or "uniform"
    return result


def normalize(settings: Mapping[str, Any]) -> dict:
    """Agent settings with every zero left out; unknown keys and bad values are errors (ValueError)."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown impairment setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
    result: dict = {}
    for key, value in settings.items():
        if key == "distribution":
            if value not in DISTRIBUTIONS:
                raise ValueError(f"distribution must be uniform or normal, not {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{key} must be a number of at least 0, not {value!r}")
        if key.endswith("_pct") and value > 100:
            raise ValueError(f"{key} must be at most 100, not {value!r}")
        if value:
            result[key] = SETTINGS[key].kind(value)
    if result.get("jitter_ms"):
        result["distribution"] = settings.get("distribution") or "uniform"
    if not result.get("loss_pct"):
        result.pop("loss_correlation_pct", None)
    if result.get("reorder_pct") and not result.get("delay_ms"):
        raise ValueError("reorder_pct needs delay_ms: reordered packets are the ones sent without the delay")
    return result


def needs_netem(settings: Mapping[str, Any]) -> bool:
    return any(settings.get(key) for key in NETEM_KEYS)

