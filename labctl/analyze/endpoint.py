"""Each endpoint's TCP state machine, replayed from that endpoint's own capture.

A third source of states, independent of the kernel's tracepoints and of sampling:
what a node's capture shows it send and receive (SYN, FIN, ACK, RST) drives the state
diagram of RFC 9293 3.3.2, to the packet's timestamp. Linux's differences, kept here:

- A passive open holds a request socket (NEW_SYN_RECV, `ss` shows SYN-RECV) from the
  SYN on; the full socket, whose tracepoint reads LISTEN -> SYN_RECV, is made only when
  the handshake's ACK arrives. The capture puts SYN_RECV at the SYN.
- A FIN+ACK that acknowledges our FIN in FIN_WAIT1 is taken as its ACK first, then its
  FIN: FIN_WAIT2 for no time, then TIME_WAIT (the tracepoints read the same).
- An RST is accepted only when its sequence number is exactly the next expected one
  (RFC 5961 3.2; Linux answers other in-window RSTs with a challenge ACK); in SYN_SENT,
  only with an ACK of our SYN (RFC 9293 3.10.7.3).
- An RST at RCV.NXT kills a TIME_WAIT socket ("TIME-WAIT assassination", RFC 1337) with
  Linux's default net.ipv4.tcp_rfc1337=0; with 1 the socket ignores it and lives on
  (tcp_timewait_state_process), so the node's own setting at the RST's time decides
  (analyze/sysctls.py). A timewait socket still in FIN_WAIT2 dies of an RST either way.
- A FIN from the peer answered with an RST met no socket: ours was gone before it came
  (an orphaned FIN_WAIT2 that outlived tcp_fin_timeout). The capture cannot say when.
- A segment is processed when it is in order: a FIN behind a lost segment takes effect
  when the gap is filled (its retransmission arrives).
- With net.ipv4.tcp_max_tw_buckets=0 a socket that would enter TIME_WAIT is destroyed
  instead (tcp_time_wait finds no bucket), after ACKing the FIN: CLOSED, not TIME_WAIT.
- A socket a kill_socket step destroyed (ss -K: INET_DIAG_DESTROY, which reaches timewait
  sockets too) is CLOSED from that step's start: no segment marks it, the step's reply
  names the socket (and, with a state filter, its state), so it was alive, in that state,
  when the step began, and gone by its end (the time is as precise as the step is short).

Precision: a sent segment is captured just after the state change that sent it, a
received one just before the kernel processes it (tens of µs), unless a packet rule in
the endpoint itself holds it in between. What the capture cannot show: states no segment
marks (TIME_WAIT's end, an orphan's timeout, LISTEN), and anything on a node without a
capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..rundir import read_jsonl
from .segments import Segment
from .sysctls import NodeSysctls

# States in which a socket is synchronized or opening: an RST it sends or accepts closes it.
OPEN_STATES = ("SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "CLOSING", "LAST_ACK")
# How far a capture's time may be from the kernel's change, in seconds (see the docstring).
CAPTURE_PRECISION = 0.002
RULE_MATCH_WINDOW = 5.0


def signed(relative: int) -> int:
    return relative - 2**32 if relative >= 2**31 else relative


@dataclass
class CaptureTransition:
    t: float
    state: str
    why: str  # the segment that made it, in words
    transmission: int | None = None
    before: bool = False  # the change happened at an unknown time at or before t


@dataclass
class EndpointMachine:
    """One socket incarnation as its node's capture shows it."""

    node: str
    local: str
    remote: str
    incarnation: int
    transitions: list[CaptureTransition] = field(default_factory=list)
    first: float = 0.0
    last: float = 0.0  # the last segment of this socket the capture saw
    # Sequence bookkeeping, relative to the incarnation's ISNs.
    peer_next: int | None = None  # the next sequence number expected from the peer (RCV.NXT)
    fin_end: int | None = None  # our FIN's sequence number + 1, once sent
    pending: list[Segment] = field(default_factory=list)  # received out of order
    last_received: Segment | None = None
    acked: int | None = None  # the highest ACK received (SND.UNA)
    rfc1337: Callable[[float], bool] = lambda t: False  # net.ipv4.tcp_rfc1337 on this node at time t
    no_tw_buckets: Callable[[float], bool] = lambda t: False  # net.ipv4.tcp_max_tw_buckets=0 there at time t

    @property
    def state(self) -> str | None:
        return self.transitions[-1].state if self.transitions else None

    def enter(self, state: str, segment: Segment, why: str, before: bool = False) -> None:
        if self.state != state:
            self.transitions.append(CaptureTransition(segment.t, state, why, segment.transmission, before))


def endpoints(nodes: dict) -> dict[str, str]:
    """Lab address -> node, for nodes that are not routers."""
    return {address.split("/")[0]: node for node, info in nodes.items() if info.get("role") != "router"
            for address in info.get("interfaces", {}).values()}


def dropped_in_node(run_dir: Path, segments: list[Segment]) -> set[tuple[str, int]]:
    """(node, transmission) of packets a rule in that node dropped or held after its capture saw them arrive."""
    found: set[tuple[str, int]] = set()
    for record in read_jsonl(run_dir / "rules.jsonl"):
        if record.get("action") not in ("drop", "hold") or (record.get("action") == "hold" and record.get("keep") == "copy"):
            continue
        packet, node = record.get("packet") or {}, record.get("node")
        for s in segments:
            if (s.node == node and f"{s.src}:{s.sport}" == packet.get("src") and f"{s.dst}:{s.dport}" == packet.get("dst")
                    and packet.get("seq") == s.seq and packet.get("flags") == s.flags and abs(s.t - float(record.get("t") or 0)) <= RULE_MATCH_WINDOW):
                found.add((node, s.transmission))
    return found


@dataclass(frozen=True)
class Kill:
    """A socket a kill_socket step destroyed: its node, ends, state (when the step named one), when."""
    node: str
    local: str
    remote: str
    state: str | None
    t: float
    step: int


# ss's state names (its `state` filter and its State column) as the kernel's.
SS_STATES = {"established": "ESTABLISHED", "estab": "ESTABLISHED", "syn-sent": "SYN_SENT", "syn-recv": "SYN_RECV",
             "fin-wait-1": "FIN_WAIT1", "fin-wait-2": "FIN_WAIT2", "time-wait": "TIME_WAIT", "close-wait": "CLOSE_WAIT",
             "last-ack": "LAST_ACK", "closing": "CLOSING", "listen": "LISTEN"}


def kills(run_dir: Path) -> list[Kill]:
    """Every socket the run's kill_socket steps destroyed, from steps.jsonl."""
    found = []
    for record in read_jsonl(run_dir / "steps.jsonl"):
        if record.get("kind") != "kill_socket" or not record.get("ok") or record.get("t_end") is None:
            continue
        wanted = ((record.get("args") or {}).get("kill_socket") or {}).get("state")
        for line in (record.get("result") or {}).get("killed") or []:
            words = line.split()
            if len(words) < 4:
                continue
            # With a state filter ss leaves its State column out; with "all" it comes first.
            state = SS_STATES.get(str(wanted).lower()) if wanted and wanted != "all" else SS_STATES.get(words[0].lower())
            found.append(Kill(record.get("node"), words[-2], words[-1], state, float(record.get("t_start") or record["t_end"]),
                              int(record.get("index", -1))))
    return found


def replay(segments: list[Segment], nodes: dict, capturing: set[str], dropped: set[tuple[str, int]] = frozenset(),
           sysctls: NodeSysctls | None = None, killed: list[Kill] = ()) -> list[EndpointMachine]:
    """Every endpoint socket incarnation that a capturing node's capture saw, with its states.

    ``sysctls``: what each node ran with (None: Linux's defaults); ``killed``: sockets kill_socket steps destroyed."""
    sysctls = sysctls or NodeSysctls()
    owner = endpoints(nodes)
    machines: dict[tuple, EndpointMachine] = {}
    ordered: dict[tuple, list[tuple[Segment, bool]]] = {}
    seen: set[tuple[str, int]] = set()
    for s in sorted(segments, key=lambda s: (s.t, s.transmission)):
        if s.node not in capturing or (s.node, s.transmission) in seen:
            continue
        sent = owner.get(s.src) == s.node
        received = owner.get(s.dst) == s.node
        if not (sent or received) or (received and (s.node, s.transmission) in dropped):
            continue
        seen.add((s.node, s.transmission))
        local, remote = (f"{s.src}:{s.sport}", f"{s.dst}:{s.dport}") if sent else (f"{s.dst}:{s.dport}", f"{s.src}:{s.sport}")
        key = (s.node, local, remote, s.incarnation)
        ordered.setdefault(key, []).append((s, sent))
    for key, items in ordered.items():
        machine = EndpointMachine(*key, first=items[0][0].t, last=items[-1][0].t,
                                  rfc1337=lambda t, node=key[0]: sysctls.enabled(node, "net.ipv4.tcp_rfc1337", t),
                                  no_tw_buckets=lambda t, node=key[0]: sysctls.value(node, "net.ipv4.tcp_max_tw_buckets", t) == "0")
        destroyed = sorted((k for k in killed if (k.node, k.local, k.remote) == key[:3]), key=lambda k: k.t)
        for i, (segment, sent) in enumerate(items):
            while destroyed and destroyed[0].t <= segment.t:
                _destroyed(machine, destroyed.pop(0))
            if sent:
                _sent(machine, segment)
            else:
                _received(machine, segment, items[i + 1:])
        for kill in destroyed:
            _destroyed(machine, kill)
        machines[key] = machine
    # A TIME_WAIT socket whose 4-tuple a new connection took (a SYN it accepted) is gone then.
    by_socket: dict[tuple, list[EndpointMachine]] = {}
    for machine in machines.values():
        by_socket.setdefault((machine.node, machine.local, machine.remote), []).append(machine)
    for group in by_socket.values():
        group.sort(key=lambda m: m.incarnation)
        for old, new in zip(group, group[1:]):
            if old.state == "TIME_WAIT" and new.transitions:
                # A SYN it received ends it then (RFC 6191, or the ISN rule); a connect() of our own
                # could use the 4-tuple only once it was gone (or reused with tcp_tw_reuse): at or before.
                ours = new.transitions[0].state == "SYN_SENT"
                old.transitions.append(CaptureTransition(new.first, "CLOSED", "the 4-tuple was taken by a new connection",
                                                         new.transitions[0].transmission, before=ours))
    return [m for m in machines.values() if m.transitions]


def _destroyed(m: EndpointMachine, kill: Kill) -> None:
    """A kill_socket step destroyed this socket, if it was the one alive then (in the state the step named)."""
    if m.state in (None, "CLOSED") or kill.t < m.first or (kill.state is not None and kill.state != m.state):
        return
    m.transitions.append(CaptureTransition(kill.t, "CLOSED", f"destroyed by step {kill.step + 1} (kill_socket, ss -K)"))


def _sent(m: EndpointMachine, s: Segment) -> None:
    flags, state = s.flags, m.state
    if "R" in flags:
        answered = m.last_received
        if state in ("FIN_WAIT2", "TIME_WAIT") and s.rst == "reply" and answered is not None and "F" in answered.flags:
            # A FIN_WAIT2 or TIME_WAIT socket answers a FIN with an ACK: an RST means it was already gone.
            m.enter("CLOSED", s, "gone before the peer's FIN came: it was answered with RST", before=True)
        elif state in OPEN_STATES or state == "TIME_WAIT":
            m.enter("CLOSED", s, "sent RST" + (" (abort)" if s.rst == "abort" else ""))
        return
    if "S" in flags and "A" not in flags:
        if state in (None, "CLOSED"):
            m.enter("SYN_SENT", s, "sent SYN")
        return
    if "S" in flags:  # SYN-ACK: the SYN that asked for it may have come before the capture started
        if state in (None, "CLOSED", "SYN_SENT"):
            m.enter("SYN_RECV", s, "sent SYN-ACK")
        return
    if "F" in flags and m.fin_end is None:
        m.fin_end = (s.rel_seq + s.length + 1) % 2**32
        # close() changes the state at once, but queues the FIN behind data not yet sent: a FIN that
        # carries data, or leaves while data is unacknowledged, only bounds the change.
        queued = s.length > 0 or (m.acked is not None and signed((s.rel_seq - m.acked) % 2**32) > 0)
        if state in ("ESTABLISHED", "SYN_RECV", None):
            m.enter("FIN_WAIT1", s, "sent FIN" + (" behind queued data" if queued else ""), before=queued)
        elif state == "CLOSE_WAIT":
            m.enter("LAST_ACK", s, "sent FIN" + (" behind queued data" if queued else ""), before=queued)


def _acks_our_fin(m: EndpointMachine, s: Segment) -> bool:
    return "A" in s.flags and m.fin_end is not None and 0 <= signed((s.rel_ack - m.fin_end) % 2**32) < 2**30


def _received(m: EndpointMachine, s: Segment, later: list[tuple[Segment, bool]]) -> None:
    m.last_received = s
    if "A" in s.flags and "R" not in s.flags and not s.out_of_window and (m.acked is None or signed((s.rel_ack - m.acked) % 2**32) > 0):
        m.acked = s.rel_ack
    flags, state = s.flags, m.state
    if "R" in flags:
        if state == "SYN_SENT":
            acceptable = "A" in flags and s.rel_ack == 1
        else:
            acceptable = m.peer_next is None or s.rel_seq == m.peer_next
        if acceptable and state == "TIME_WAIT" and m.rfc1337(s.t):
            return  # tcp_rfc1337=1: TIME_WAIT ignores it
        if acceptable and (state in OPEN_STATES or state == "TIME_WAIT"):
            m.enter("CLOSED", s, "received RST" + (" (TIME-WAIT assassination, tcp_rfc1337=0)" if state == "TIME_WAIT" else ""))
        return
    if "S" in flags:
        m.peer_next = (s.rel_seq + 1) % 2**32
        if "A" not in flags:
            if state in (None, "CLOSED", "SYN_SENT") and not _answered_with_rst(s, later):  # refused: no socket at all
                m.enter("SYN_RECV", s, "received SYN")
        elif state == "SYN_SENT" and s.rel_ack == 1:
            m.enter("ESTABLISHED", s, "received SYN-ACK")
        elif state == "SYN_RECV" and s.rel_ack == 1:  # simultaneous open
            m.enter("ESTABLISHED", s, "received SYN-ACK")
        return
    if s.out_of_window:
        return
    if state == "SYN_RECV" and "A" in flags and s.rel_ack >= 1:
        m.enter("ESTABLISHED", s, "received the handshake's ACK")
    elif state is None:
        m.enter("ESTABLISHED", s, "first segment seen (the handshake was not captured)")
    if _acks_our_fin(m, s):
        if m.state == "FIN_WAIT1":
            m.enter("FIN_WAIT2", s, "received the ACK of our FIN")
        elif m.state == "CLOSING":
            m.enter("TIME_WAIT", s, "received the ACK of our FIN")
        elif m.state == "LAST_ACK":
            m.enter("CLOSED", s, "received the ACK of our FIN")
    space = s.length + ("F" in flags)
    if not space:
        return
    start = signed(s.rel_seq)
    if m.peer_next is not None and start > signed(m.peer_next):
        m.pending.append(s)  # behind a gap: processed when the gap is filled
        return
    _in_order(m, s, s, later)
    # The gap is filled: what waited behind it is processed now, at this segment's time.
    progressed = True
    while progressed and m.pending:
        progressed = False
        for waiting in sorted(m.pending, key=lambda x: signed(x.rel_seq)):
            if signed(waiting.rel_seq) <= signed(m.peer_next):
                m.pending.remove(waiting)
                _in_order(m, waiting, s, later)
                progressed = True


def _in_order(m: EndpointMachine, s: Segment, now: Segment, later: list[tuple[Segment, bool]]) -> None:
    """A received segment that starts at or before RCV.NXT; ``now`` is the one whose arrival made it so."""
    end = (s.rel_seq + s.length + ("F" in s.flags)) % 2**32
    if m.peer_next is None or signed(end) > signed(m.peer_next):
        new_fin = "F" in s.flags
        m.peer_next = end
    else:
        new_fin = False  # a retransmission of what was already received (a FIN again in TIME_WAIT, LAST_ACK ...)
    if not new_fin:
        return
    state = m.state
    if state == "FIN_WAIT2" and _answered_with_rst(now, later):
        m.enter("CLOSED", now, "gone before the peer's FIN arrived: it was answered with RST", before=True)
    elif state in ("ESTABLISHED", "SYN_RECV"):
        m.enter("CLOSE_WAIT", now, "received FIN")
    elif state == "FIN_WAIT1":
        m.enter("CLOSING", now, "received FIN before the ACK of ours")
    elif state == "FIN_WAIT2" and m.no_tw_buckets(now.t):
        m.enter("CLOSED", now, "received FIN; no TIME_WAIT: tcp_max_tw_buckets=0 (tcp_time_wait found no bucket)")
    elif state == "FIN_WAIT2":
        m.enter("TIME_WAIT", now, "received FIN")


def _answered_with_rst(segment: Segment, later: list[tuple[Segment, bool]]) -> bool:
    reply = next((s for s, sent in later if sent), None)
    return reply is not None and "R" in reply.flags and reply.t - segment.t < 1.0
