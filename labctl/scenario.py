"""The scenario model: steps that act on a lab, and expectations on what happened.

A scenario reads like a textbook trace: each step names a node and one
action (a socket call, a packet rule, a sysctl, a command, a wait), and
each expectation names the evidence that must (or must not) exist.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .model import Impairment, LinkName, LoopMatch, NodeName
from .units import Duration

StepName = str
TCP_STATES = ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSED",
              "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV")
TcpState = Literal["ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSED",
                   "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- socket steps --------------------------------------------------------------

class Listen(_Strict):
    port: int = Field(ge=1, le=65535)
    address: str = Field("0.0.0.0", description="Local address to bind.")
    backlog: int = 16
    reuseaddr: bool = Field(False, description="Set SO_REUSEADDR before bind.")
    reuseport: bool = False


class Accept(_Strict):
    sock: str = Field(description="The listening socket's name.")
    timeout: Duration = 10.0


class Bind(_Strict):
    address: str = "0.0.0.0"
    port: int = Field(0, ge=0, le=65535)


class Connect(_Strict):
    to: str = Field(description="A node name or IPv4 address.")
    port: int = Field(ge=1, le=65535)
    bind: Bind | None = Field(None, description="Local address and port to bind first.")
    reuseaddr: bool = Field(False, description="Set SO_REUSEADDR before bind/connect.")
    timeout: Duration = 10.0


class Send(_Strict):
    sock: str
    data: str = Field("", description="Text to send (UTF-8).")
    size: int | None = Field(None, ge=1, description="Send this many bytes of a repeating pattern instead of data.")


class Recv(_Strict):
    sock: str
    size: int = Field(65536, ge=1)
    expect: str | None = Field(None, description="The text that must arrive; the step fails otherwise.")
    timeout: Duration = 5.0
    all: bool = Field(False, description="Keep reading until `size` bytes or end of stream.")


class Shutdown(_Strict):
    sock: str
    how: Literal["rd", "wr", "rdwr"] = "wr"


class Linger(_Strict):
    onoff: int = Field(1, ge=0, le=1)
    linger: int = Field(0, ge=0)


class SetSockOpt(_Strict):
    sock: str
    option: Literal["SO_LINGER", "SO_REUSEADDR", "SO_REUSEPORT", "TCP_NODELAY", "SO_RCVBUF", "SO_SNDBUF", "SO_KEEPALIVE"]
    value: int | Linger


# --- packets ---------------------------------------------------------------------

class Match(_Strict):
    """Which packets a rule (or an `after` context) means. Every given field must match."""

    from_: str | None = Field(None, alias="from", description="Sender: a node name or IPv4 address.")
    to: str | None = Field(None, description="Receiver: a node name or IPv4 address.")
    flags: str | None = Field(None, description="TCP flags that must be set (letters of SFRPAU; '.' = A); prefix '=' for exactly these.")
    sport: int | None = None
    dport: int | None = None
    payload: bool | str | None = Field(None, description="true: has payload; false: none; text: payload contains it.")
    seq: int | None = Field(None, description="Relative sequence number (0 = the ISN of its connection).")
    ack: int | None = Field(None, description="Relative acknowledgment number (1 acknowledges the peer's SYN).")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Rule(Match):
    action: Literal["drop", "delay", "duplicate", "hold", "watch"]
    after: Match | None = Field(None, description="Only after a packet matching this has been seen (context).")
    count: int = Field(1, ge=0, description="How many packets the action applies to (0: all).")
    nth: int = Field(1, ge=1, description="Start acting at the n-th matching packet.")
    delay: Duration | None = Field(None, description="For action delay: how long to hold each packet.")
    keep: Literal["packet", "copy"] = Field("packet", description="For hold: keep the packet (it is not delivered) or a copy (it is).")


class Rewrite(_Strict):
    seq: Literal["shift"] | int | None = Field(None, description="'shift': move seq/ack relative to the newest connection on the same 4-tuple; a number: add it.")
    strip_timestamps: bool = Field(False, description="Replace the TCP timestamps option with NOPs.")


class Release(_Strict):
    rule: str = Field(description="The hold rule whose packets to send.")
    rewrite: Rewrite | None = None
    copy_: bool = Field(False, alias="copy", description="Send a copy and keep the held packet.")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class KillSocket(_Strict):
    """Destroy sockets as `ss -K` does (INET_DIAG_DESTROY); TIME_WAIT ones included."""

    local_port: int | None = None
    remote_port: int | None = None
    remote: str | None = Field(None, description="A node name or IPv4 address.")
    state: str | None = Field(None, description="Only sockets in this state, e.g. time-wait.")


class Exec(_Strict):
    cmd: list[str] | str = Field(description="Argument list, or a shell command line.")
    background: bool = Field(False, description="Start it and go on; it is stopped when the scenario ends.")
    timeout: Duration = 30.0
    expect_exit: int | None = Field(0, description="The exit status that makes the step pass (null: any).")


class Wait(_Strict):
    node: str | None = None
    state: TcpState | None = Field(None, description="Wait until a socket on `node` is in this state.")
    local_port: int | None = None
    remote_port: int | None = None
    gone: bool = Field(False, description="Wait until no socket is in `state` any more.")
    step: str | None = Field(None, description="Wait until a background step has finished.")
    rule: str | None = Field(None, description="Wait until this rule has acted `count` times.")
    count: int = 1
    timeout: Duration = 10.0


# --- links ---------------------------------------------------------------------------

class ImpairStep(Impairment):
    """Change a link's impairment now: these settings replace what is in force in those directions
    (every endpoint's egress, or only `from`'s); `clear: true` removes it. Undone when the run ends."""

    link: LinkName = Field(description="The link to impair.")
    clear: bool = Field(False, description="Remove the impairment instead (in that direction, or every one).")


class LoopStep(_Strict):
    """A transient forwarding loop between two routers; it heals by itself after `for`, while the steps go on."""

    routers: list[NodeName] = Field(min_length=2, max_length=2, description="Two routers that share a link.")
    for_: Duration = Field(alias="for", description="How long the loop lasts, e.g. 2s.")
    match: LoopMatch | None = Field(None, description="Only packets matching this circulate (default: every forwarded packet).")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Step(_Strict):
    """One action, on one node where the action needs one."""

    node: str | None = None
    as_: str | None = Field(None, alias="as", description="A name for the socket, rule or step this creates.")
    background: bool = Field(False, description="Do not wait for this step; `wait: {step: NAME}` does.")
    note: str | None = Field(None, description="Shown in the report beside the step.")

    listen: Listen | None = None
    accept: str | Accept | None = None
    connect: Connect | None = None
    send: Send | None = None
    recv: Recv | None = None
    shutdown: Shutdown | None = None
    close: str | None = Field(None, description="The socket to close.")
    setsockopt: SetSockOpt | None = None
    sysctl: dict[str, int | str] | None = None
    kill_socket: KillSocket | None = None
    exec: Exec | str | None = None
    rule: Rule | None = None
    unrule: str | None = Field(None, description="Remove a rule by name.")
    release: Release | None = None
    impair: ImpairStep | None = None
    loop: LoopStep | None = None
    sleep: Duration | None = None
    wait: Wait | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_action(self) -> "Step":
        given = [k for k in ACTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a step needs exactly one action of: {', '.join(ACTIONS)}" + (f" (got {', '.join(given)})" if given else ""))
        if given[0] in NODE_ACTIONS and self.node is None:
            raise ValueError(f"step '{given[0]}' needs `node:`")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ACTIONS if getattr(self, k) is not None)

    @property
    def action(self) -> Any:
        return getattr(self, self.kind)


ACTIONS = ("listen", "accept", "connect", "send", "recv", "shutdown", "close", "setsockopt", "sysctl", "kill_socket",
           "exec", "rule", "unrule", "release", "impair", "loop", "sleep", "wait")
NODE_ACTIONS = ("listen", "accept", "connect", "send", "recv", "shutdown", "close", "setsockopt", "sysctl", "kill_socket",
                "exec", "rule", "unrule", "release")


# --- expectations -----------------------------------------------------------------

class SegmentMatch(Match):
    """A segment in a capture: what a rule can match, and whether it was a retransmission."""

    retransmission: bool | None = Field(None, description="Only retransmissions (true) or only first transmissions (false).")


class SegmentsExpect(Match):
    count: int | None = Field(None, ge=0, description="Exactly this many.")
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)
    at: str | None = Field(None, description="Count in this node's capture (default: the sender's).")
    retransmission: bool | None = Field(None, description="Only retransmissions (true) or only first transmissions (false).")
    after: "SegmentMatch | None" = Field(None, description="Count only segments seen after the first one matching this (order).")


class StatesExpect(_Strict):
    node: str
    local_port: int | None = None
    remote_port: int | None = None
    sequence: list[TcpState] | None = Field(None, description="These states, in this order (others may come between).")
    final: TcpState | None = None
    never: list[TcpState] | None = Field(None, description="States that must never be reached.")
    held: TcpState | None = Field(None, description="A state whose duration is checked with min/max.")
    min: Duration | None = None
    max: Duration | None = None
    timer_min: Duration | None = Field(None, description="The TIME_WAIT timer seen at entry is at least this.")
    timer_max: Duration | None = None


class StepExpect(_Strict):
    step: str = Field(description="The step's `as` name.")
    ok: bool | None = None
    errno: str | None = Field(None, description="e.g. EADDRINUSE, ECONNRESET; 'none' for success.")
    returned: int | None = Field(None, description="The return value (bytes sent/received, exit status).")
    min_seconds: Duration | None = Field(None, description="The step took at least this long.")
    max_seconds: Duration | None = None


class DataExpect(_Strict):
    step: str = Field(description="A recv step's `as` name.")
    equals: str | None = None
    contains: str | None = None
    not_contains: str | None = None


class EventsExpect(_Strict):
    """Kernel events from tracepoints (needs tracefs on the host)."""

    event: Literal["tcp_retransmit_skb", "tcp_send_reset", "tcp_receive_reset"]
    node: str | None = None
    count: int | None = Field(None, ge=0)
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)


class Expectation(_Strict):
    name: str | None = None
    events: EventsExpect | None = None
    segments: SegmentsExpect | None = None
    no_segments: Match | None = None
    states: StatesExpect | None = None
    step: StepExpect | None = None
    data: DataExpect | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Expectation":
        given = [k for k in EXPECTATIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"an expectation needs exactly one of: {', '.join(EXPECTATIONS)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in EXPECTATIONS if getattr(self, k) is not None)


EXPECTATIONS = ("segments", "no_segments", "states", "step", "data", "events")


class Scenario(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    guide: str | None = Field(None, description="What to look for and why (Markdown).")
    params: dict[str, Any] = Field(default_factory=dict, description="Defaults for {{ name }} in the steps; -p overrides.")
    matrix: dict[str, list[Any]] = Field(default_factory=dict, description="One run per combination of these values.")
    steps: list[Step] = Field(min_length=1)
    expect: list[Expectation] = Field(default_factory=list)


def scenario_json_schema() -> dict:
    schema = Scenario.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "labctl scenario file"
    return schema
