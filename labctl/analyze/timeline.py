"""One merged timeline of a run: segments, state transitions, step results, rule
actions, impairment changes and kernel events, on the host clock every node shares.

A *transmission* is one packet's journey: the capture records of the same bytes at
each hop (see segments.py). Its fate comes from where it was seen: at the receiver's
capture it was delivered; seen at the sender (or a router) and never at a receiver
that was capturing, it was dropped, after the last node that saw it.

A router *acted* on a run when a rule did something there (rules.jsonl), or when
the captures show a packet entering it and not leaving, leaving twice (a
duplicate), or leaving long after it entered (held). A report draws a router only
when it acted; otherwise packets cross it unremarkably.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..agent import tcp
from ..agent.tcp import flag_words
from ..rundir import read_jsonl
from ..steps import step_kind
from .segments import Connection, Segment, capture_path
from .states import SocketTimeline
from .verdicts import RunView

HELD = 0.010  # seconds between entering and leaving a router beyond which a packet counts as held there
RULE_MATCH_WINDOW = 5.0  # seconds between a rule's record and the capture of the packet it names
ACTING = ("drop", "hold", "delay", "duplicate", "release")  # rule actions that change what crosses a node ("watch", "armed" do not)
KIND_ORDER = {"step": 0, "impairment": 1, "rule": 2, "segment": 3, "kernel": 4, "state": 5}


@dataclass
class RuleAction:
    t: float
    node: str
    rule: str
    action: str
    packet: dict
    transmission: int | None = None

    def summary(self) -> str:
        p = self.packet or {}
        what = f"{p.get('src', '?')} > {p.get('dst', '?')} [{p.get('flags', '')}]"
        if p.get("seq") is not None:
            what += f" seq {p['seq']}"
        if p.get("ack") is not None:
            what += f" ack {p['ack']}"
        if p.get("len") is not None:
            what += f" len {p['len']}"
        return f"rule {self.rule}: {self.action} {what}"


@dataclass
class Transmission:
    number: int
    sightings: list[Segment]
    sender: str | None
    receiver: str | None
    fate: str  # delivered | dropped | unknown
    last_seen: str
    origin: str  # where it entered the captures: its sender, or the node that made it (a released or duplicated copy)
    rules: list[RuleAction] = field(default_factory=list)

    @property
    def first(self) -> Segment:
        return self.sightings[0]

    @property
    def t(self) -> float:
        return self.sightings[0].t

    @property
    def dropped(self) -> bool:
        return self.fate == "dropped"

    @property
    def dropped_at(self) -> str | None:
        """Where a dropped segment died: the node whose rule dropped it, else the last node that saw it."""
        if not self.dropped:
            return None
        return next((a.node for a in self.rules if a.action == "drop"), self.last_seen)

    def seen_at(self, node: str) -> list[Segment]:
        return [s for s in self.sightings if s.node == node]

    def arrival(self) -> float | None:
        at = self.seen_at(self.receiver) if self.receiver else []
        return at[0].t if at else None


@dataclass
class Event:
    t: float
    kind: str  # segment | state | step | rule | impairment | kernel
    node: str | None
    text: str
    ref: Any = None


@dataclass
class Timeline:
    dir: Path
    run: dict
    nodes: dict
    segments: list[Segment]
    connections: list[Connection]
    transmissions: list[Transmission]
    sockets: list[SocketTimeline]
    steps: list[dict]
    rules: list[RuleAction]
    kernel: list[dict]
    impairments: list[dict]
    captures: list[tuple[str, str]]
    acted: dict[str, list[str]]  # router -> what it did
    events: list[Event]

    @property
    def t0(self) -> float:
        """Time zero of a report: the first step or segment (kernel noise from before the run does not move it)."""
        starts = [s["t_start"] for s in self.steps if s.get("t_start")] + [tx.t for tx in self.transmissions]
        if starts:
            return min(starts)
        return self.events[0].t if self.events else float(self.run.get("started") or 0.0)

    @property
    def t_end(self) -> float:
        """The last moment something was observed (not when collection finished)."""
        ends = [e.t for e in self.events] + [s["t_end"] for s in self.steps if s.get("t_end")]
        return max(ends) if ends else self.t0


def owners(nodes: dict) -> dict[str, str]:
    """Lab address -> node, from run.json's node interfaces ("10.250.1.1/24")."""
    return {address.split("/")[0]: node for node, info in nodes.items() for address in info.get("interfaces", {}).values()}


def load(run_dir: Path) -> Timeline:
    view = RunView(run_dir)
    return build(view)


def build(view: RunView) -> Timeline:
    nodes = view.nodes
    owner = owners(nodes)
    captures = [(node, iface) for node, info in nodes.items() for iface in info.get("interfaces", {})
                if capture_path(view.dir, node, iface).exists()]
    capturing = {node for node, _ in captures}
    transmissions = _transmissions(view.segments, owner, capturing)
    rules = _rules(view.dir, transmissions)
    acted = _acted(transmissions, rules, nodes, captures)
    # events.jsonl also holds impairment changes and loops; those come from run.json's "impairments".
    kernel = [r for r in read_jsonl(view.dir / "events.jsonl") if r.get("event") not in ("impair", "loop", "loop-healed")]
    impairments = [r for r in view.run.get("impairments") or [] if isinstance(r, dict) and r.get("t") is not None]
    impairments += [{"t": s.get("t_start"), "node": s.get("node"), "args": s.get("args"), "ok": s.get("ok"), "step": s.get("index")}
                    for s in view.steps if s.get("kind") == "impair" and s.get("t_start") is not None]
    events: list[Event] = []
    for tx in transmissions:
        events.append(Event(tx.t, "segment", tx.sender, _segment_text(tx), tx))
    for timeline in view.timelines:
        for transition in timeline.transitions:
            events.append(Event(transition.t, "state", timeline.node, f"{timeline.local} > {timeline.remote} {transition.state}",
                                (timeline, transition)))
    for step in view.steps:
        if step.get("t_start") is None:
            continue
        events.append(Event(step["t_start"], "impairment" if step.get("kind") == "impair" else "step", step.get("node"),
                            step_text(step), step))
    for record in view.run.get("impairments") or []:
        if isinstance(record, dict) and record.get("t") is not None:
            events.append(Event(record["t"], "impairment", record.get("node"), str(record.get("summary") or record), record))
    for action in rules:
        events.append(Event(action.t, "rule", action.node, action.summary(), action))
    for record in kernel:
        if record.get("t") is None:
            continue
        text = f"{record.get('event')} {record.get('local')} > {record.get('remote')}" + (f" in {record['state']}" if record.get("state") else "")
        events.append(Event(record["t"], "kernel", record.get("node"), text, record))
    events.sort(key=lambda e: (e.t, KIND_ORDER.get(e.kind, 9)))
    return Timeline(view.dir, view.run, nodes, view.segments, view.connections, transmissions, view.timelines, view.steps,
                    rules, kernel, impairments, captures, acted, events)


def _transmissions(segments: list[Segment], owner: dict[str, str], capturing: set[str]) -> list[Transmission]:
    grouped: dict[int, list[Segment]] = {}
    for segment in segments:
        grouped.setdefault(segment.transmission, []).append(segment)
    result = []
    for number, sightings in grouped.items():
        sightings.sort(key=lambda s: s.t)
        first = sightings[0]
        sender, receiver = owner.get(first.src), owner.get(first.dst)
        seen = {s.node for s in sightings}
        if receiver is not None and receiver in seen:
            fate = "delivered"
        elif receiver is not None and receiver in capturing:
            fate = "dropped"
        else:
            fate = "unknown"
        # A packet its sender's own capture never saw, first seen at a router, was made there.
        origin = sightings[0].node if sender in capturing and sender not in seen else (sender or sightings[0].node)
        result.append(Transmission(number, sightings, sender, receiver, fate, sightings[-1].node, origin))
    result.sort(key=lambda tx: (tx.t, tx.number))
    return result


def _rules(run_dir: Path, transmissions: list[Transmission]) -> list[RuleAction]:
    actions = []
    for record in read_jsonl(run_dir / "rules.jsonl"):
        if record.get("t") is None:
            continue
        actions.append(RuleAction(float(record["t"]), record.get("node") or "?", str(record.get("rule") or "?"),
                                  str(record.get("action") or "?"), record.get("packet") or {}))
    for action in actions:
        action.transmission = _match_rule(action, transmissions)
        if action.transmission is not None:
            next(tx for tx in transmissions if tx.number == action.transmission).rules.append(action)
    return actions


def _match_rule(action: RuleAction, transmissions: list[Transmission]) -> int | None:
    """The transmission a rule's record names: same ends, flags and numbers, seen nearest in time at the rule's node."""
    packet = action.packet
    if not packet.get("src") or not packet.get("dst"):
        return None
    best: tuple[float, int] | None = None
    for tx in transmissions:
        first = tx.first
        if f"{first.src}:{first.sport}" != packet["src"] or f"{first.dst}:{first.dport}" != packet["dst"]:
            continue
        if packet.get("flags") is not None and tcp.flag_set(packet["flags"]) != set(first.flags):
            continue
        if packet.get("seq") is not None and packet["seq"] not in (first.seq, first.rel_seq):
            continue
        if packet.get("ack") is not None and "A" in first.flags and packet["ack"] not in (first.ack, first.rel_ack):
            continue
        if packet.get("len") is not None and packet["len"] != first.length:
            continue
        candidates = tx.seen_at(action.node) or tx.sightings
        distance = min(abs(s.t - action.t) for s in candidates)
        if distance <= RULE_MATCH_WINDOW and (best is None or distance < best[0]):
            best = (distance, tx.number)
    return best[1] if best else None


def _acted(transmissions: list[Transmission], rules: list[RuleAction], nodes: dict,
           captures: list[tuple[str, str]]) -> dict[str, list[str]]:
    acted: dict[str, list[str]] = {}
    for action in rules:
        if action.action in ACTING:
            acted.setdefault(action.node, []).append(f"{action.action} (rule {action.rule})")
    for tx in transmissions:
        for node in {s.node for s in tx.sightings} - {tx.sender, tx.receiver}:
            at = tx.seen_at(node)
            if tx.dropped and tx.dropped_at == node:
                acted.setdefault(node, []).append(f"dropped #{tx.number}")
            elif tx.origin == node:
                made = f"duplicated #{tx.first.duplicate_of}" if tx.first.duplicate_of is not None else f"sent #{tx.number} in {tx.sender}'s name"
                acted.setdefault(node, []).append(made)
            elif at[-1].t - at[0].t > HELD:
                acted.setdefault(node, []).append(f"held #{tx.number} {1000 * (at[-1].t - at[0].t):.0f} ms")
    return acted


def marks(segment, fate: str = "delivered", *, origin: str | None = None, sender: str | None = None,
          dropped_at: str | None = None, short: bool = False) -> list[str]:
    """What is remarkable about a segment, in words, most important first.

    ``short`` words it to ride on a ladder arrow; ``origin``/``sender``/``dropped_at``
    add where a copy was made and where a dropped segment was last seen.
    """
    found = []
    if origin is not None and origin != sender:
        found.append(f"made at {origin}")
    if fate == "dropped":
        if dropped_at is None:
            found.append("dropped")
        elif short:
            found.append(f"dropped at {dropped_at}" if dropped_at != sender else "lost on the link")
        else:
            found.append(f"dropped after {dropped_at}")
    if segment.rst:
        found.append(f"RST ({segment.rst})" if short else f"RST: {segment.rst}")
    if segment.duplicate_of is not None:
        found.append(f"duplicate of #{segment.duplicate_of}")
    elif segment.retransmission:
        found.append("retransmission")
    if segment.out_of_window:
        found.append("out of window")
    if segment.dup_ack:
        found.append("dup ACK" if short else "duplicate ACK")
    if segment.keepalive:
        found.append("keep-alive")
    return found


def signed(relative: int) -> int:
    """A relative sequence number as a person reads it: one from before the ISN is negative."""
    return relative - 2**32 if relative >= 2**31 else relative


def label(flags: str, rel_seq: int, rel_ack: int, length: int) -> str:
    """'FIN ACK seq=6 ack=1 len=0': what a ladder writes on a segment's arrow."""
    text = f"{flag_words(flags)} seq={signed(rel_seq)}"
    if "A" in flags:
        text += f" ack={signed(rel_ack)}"
    return text + f" len={length}"


def segment_label(segment: Segment) -> str:
    return label(segment.flags, segment.rel_seq, segment.rel_ack, segment.length)


def _segment_text(tx: Transmission) -> str:
    ends = f"{tx.sender or tx.first.src} > {tx.receiver or tx.first.dst}"
    extra = marks(tx.first, tx.fate)
    if tx.dropped:
        extra[0] = f"dropped at {tx.dropped_at}"
    return f"#{tx.number} {ends} {segment_label(tx.first)}" + (f" ({', '.join(extra)})" if extra else "")


def step_call(step: dict) -> str:
    """A step as a call, packetdrill style: 'close(c)', 'connect(server:5000)'; each kind says how it reads."""
    key = step.get("kind") or "?"
    kind = step_kind(key)
    name = f"{step['as']} = " if step.get("as") and kind.makes_socket else ""
    return f"{name}{key}({kind.reads((step.get('args') or {}).get(key))})"


def step_outcome(step: dict) -> str:
    if step.get("background") and step.get("ok") is None:
        return "started in background"
    if not step.get("ok"):
        return f"failed: {step.get('errno') or ''} {step.get('error') or ''}".strip()
    result = step.get("result") or {}
    if isinstance(result, dict) and result.get("returned") is not None:
        return f"= {result['returned']}"
    return "ok"


def step_text(step: dict) -> str:
    where = f" on {step['node']}" if step.get("node") else ""
    text = f"step {step.get('index', 0) + 1}{where}: {step_call(step)} {step_outcome(step)}"
    return text + (f" ({step['note']})" if step.get("note") else "")
