"""A run directory -> the data every report format draws from.

Built from the run directory alone (analysis never talks to the engine), with
times relative to the run's first event, ids every format shares (``s5`` is
transmission 5, ``k2`` a socket, ``step3`` a step) so a verdict can point at
its evidence in any format, and the lanes of a ladder diagram: one per
endpoint, plus one per router that acted.
"""

from __future__ import annotations

import difflib
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..analyze.segments import RST_KINDS
from ..analyze.states import SocketTimeline
from ..analyze import timeline as timelines
from ..analyze.timeline import Timeline, Transmission, label, step_call, step_outcome
from ..analyze.timeline import marks as segment_marks
from ..analyze.results import PASS, UNDECIDED, SegmentRef, SocketRef, StepRef, Verdict
from ..analyze.verdicts import RunView
from ..errors import UserError
from ..rundir import Damage, load_json, type_name

REPORT_SCHEMA_VERSION = 2


@dataclass
class Sighting:
    at: str  # node/iface
    node: str
    t: float


@dataclass
class SegmentRow:
    id: str
    number: int
    t: float
    connection: str | None
    incarnation: int
    sender: str
    receiver: str
    origin: str  # the sender, or the node that made this copy
    src: str
    dst: str
    flags: str
    seq: int
    ack: int
    rel_seq: int
    rel_ack: int
    length: int
    window: int
    ip_id: int
    seen: list[Sighting]
    fate: str
    dropped_after: str | None
    retransmission: bool
    duplicate_of: int | None
    dup_ack: bool
    keepalive: bool
    out_of_window: bool
    rst: str | None
    rules: list[str]
    payload: str

    @property
    def label(self) -> str:
        return label(self.flags, self.rel_seq, self.rel_ack, self.length)

    @property
    def marks(self) -> list[str]:
        return segment_marks(self, self.fate, origin=self.origin, sender=self.sender, dropped_at=self.dropped_after) + list(self.rules)

    @property
    def interesting(self) -> bool:
        """Worth keeping when a large ladder is folded: the handshake, the teardown and anything unusual."""
        return bool(set(self.flags) & {"S", "F", "R"}) or bool(self.marks) or self.fate != "delivered"

    def arrival(self) -> float | None:
        at = [s.t for s in self.seen if s.node == self.receiver]
        return at[0] if at else None

    def departure(self) -> float:
        at = [s.t for s in self.seen if s.node == self.origin]
        return at[0] if at else self.t



@dataclass
class Band:
    state: str
    start: float
    end: float | None  # None: still in it when the run ended
    source: str
    timer_ms: int | None = None
    sources: tuple[str, ...] = ()  # every source that saw the transition into this state
    why: str | None = None  # from a capture: the segment that made it
    before: bool = False  # entered at an unknown time at or before ``start``

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass
class SocketRow:
    id: str
    node: str
    local: str
    remote: str
    connection: str | None
    bands: list[Band]
    disagreements: list[str] = field(default_factory=list)  # where its sources tell different stories, in words
    disagreement_data: list[dict] = field(default_factory=list)  # the same, structured (times since t0)
    observed_by: tuple[str, ...] = ()

    @property
    def states(self) -> list[str]:
        return [b.state for b in self.bands]

    @property
    def name(self) -> str:
        return f"{self.node} {self.local} > {self.remote}"


@dataclass
class StepRow:
    id: str
    index: int
    t: float
    t_end: float | None
    node: str | None
    kind: str
    call: str
    outcome: str
    ok: bool | None
    errno: str | None
    note: str | None


@dataclass
class RuleRow:
    id: str
    t: float
    node: str
    rule: str
    action: str
    packet: dict
    segment: str | None


@dataclass
class Evidence:
    kind: str
    ref: str | None  # an id of a segment, socket or step in this report
    text: str
    data: dict = field(default_factory=dict)  # the structured reference, as verdicts.json holds it


@dataclass
class VerdictRow:
    index: int
    kind: str
    name: str | None
    description: str
    outcome: str  # pass | fail | undecided
    expected: str
    observed: str
    evidence: list[Evidence]
    reason: str | None = None
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.outcome == PASS

    @property
    def undecided(self) -> bool:
        return self.outcome == UNDECIDED


@dataclass
class TimelineRow:
    t: float
    kind: str
    node: str | None
    text: str
    ref: str | None


@dataclass
class Lane:
    name: str
    role: str  # host | router | outside
    addresses: list[str]
    acted: list[str] = field(default_factory=list)


@dataclass
class ConnectionRow:
    id: str
    name: str
    incarnation: int
    client: str
    server: str
    isn: dict[str, int]
    first: float
    last: float
    segments: int


@dataclass
class Report:
    run_dir: Path
    run: dict
    t0: float
    duration: float
    lanes: list[Lane]
    segments: list[SegmentRow]
    connections: list[ConnectionRow]
    sockets: list[SocketRow]
    steps: list[StepRow]
    rules: list[RuleRow]
    verdicts: list[VerdictRow]
    timeline: list[TimelineRow]
    captures: list[str]
    notes: list[str]
    kernel: list[dict]
    damage: list[Damage] = field(default_factory=list)  # what is wrong with the run directory's files (also in notes)

    @property
    def title(self) -> str:
        # The instance, where it is not the lab itself: two instances' reports must not read alike.
        from ..instances import DEFAULT_INSTANCE

        instance = self.run.get("instance")
        lab = f"{self.run.get('lab', '?')}" + (f" (instance {instance})" if instance and instance != DEFAULT_INSTANCE else "")
        return f"{lab} / {self.run.get('label') or self.run.get('scenario') or '?'}"

    @property
    def passed(self) -> bool:
        return self.run.get("status") == "complete" and all(v.passed for v in self.verdicts)

    @property
    def outcome(self) -> str:
        """pass, fail (one failed, or the run did not complete), or undecided (none failed, one could not be told;
        or run.json is lost, so whether the run completed cannot be told)."""
        if any(v.outcome == "fail" for v in self.verdicts):
            return "fail"
        if self.run.get("status") is None and self.damage:
            return "undecided"
        if self.run.get("status") != "complete":
            return "fail"
        return "undecided" if any(v.undecided for v in self.verdicts) else PASS

    @property
    def headline(self) -> str:
        return {"pass": "PASSED", "fail": "FAILED", "undecided": "UNDECIDED"}[self.outcome]

    @property
    def summary(self) -> dict[str, int]:
        rsts = [s for s in self.segments if s.rst]
        return {
            "segments": len(self.segments),
            "capture_records": sum(len(s.seen) for s in self.segments),
            "connections": len(self.connections),
            "retransmissions": sum(s.retransmission and s.duplicate_of is None for s in self.segments),
            "duplicates": sum(s.duplicate_of is not None for s in self.segments),
            "duplicate_acks": sum(s.dup_ack for s in self.segments),
            "out_of_window": sum(s.out_of_window for s in self.segments),
            "resets": len(rsts),
            "dropped": sum(s.fate == "dropped" for s in self.segments),
            "rule_actions": len(self.rules),
            "expectations": len(self.verdicts),
            "failed": sum(v.outcome == "fail" for v in self.verdicts),
            "undecided": sum(v.undecided for v in self.verdicts),
        }

    def segment(self, ref: str) -> SegmentRow | None:
        return next((s for s in self.segments if s.id == ref), None)


def resolve_run(ref: str | Path | None, root: Path | None = None) -> Path:
    """A run directory, a lab (its latest run) or nothing (the latest run of any lab) -> a run directory."""
    from ..rundir import latest_run, results_root

    root = root or results_root()
    if ref is None:
        runs = sorted((p for p in root.glob("*/*") if (p / "run.json").exists()), key=lambda p: p.name) if root.is_dir() else []
        if not runs:
            raise UserError(f"no runs under {root}", hint="run a scenario first: `labctl run LAB`")
        return runs[-1]
    path = Path(ref)
    if (path / "run.json").exists() or looks_like_run(path):
        return path
    if path.is_dir() and any(path.glob("*/run.json")):  # a lab's results directory
        return sorted((p for p in path.iterdir() if (p / "run.json").exists()), key=lambda p: p.name)[-1]
    if path.exists() and not (path / "lab.yaml").exists() and path.suffix not in (".yaml", ".yml"):
        raise UserError(f"{path} is not a run directory (it has no run.json)")
    if path.exists():  # a lab directory or file: its runs are filed under its name
        from ..loader import load_lab

        lab = load_lab(path).lab.name
    else:
        lab = str(ref)
    found = latest_run(lab, root)
    if found is None:
        raise UserError(f"no runs of lab '{lab}' under {root}", hint=f"run one first: `labctl run {lab}`")
    return found


RUN_FILES = ("verdicts.json", "steps.jsonl", "states.jsonl", "events.jsonl", "rules.jsonl", "pcaps")


def looks_like_run(path: Path) -> bool:
    """A run directory that has lost its run.json still holds what the run wrote besides it."""
    return path.is_dir() and not (path / "lab.yaml").exists() and any((path / name).exists() for name in RUN_FILES)


def build(run_dir: Path) -> Report:
    if not (run_dir / "run.json").exists() and not looks_like_run(run_dir):
        raise UserError(f"{run_dir} is not a run directory (it has no run.json)")
    view = RunView(run_dir)
    timeline = timelines.build(view)
    t0 = timeline.t0

    def rel(t: float | None) -> float | None:
        return None if t is None else t - t0

    lanes = _lanes(timeline)
    connection_ids = {(c.name, c.incarnation): f"c{i + 1}" for i, c in enumerate(timeline.connections)}
    segments = [_segment_row(tx, t0, connection_ids) for tx in timeline.transmissions]
    by_number = {s.number: s for s in segments}
    counts: dict[tuple, int] = {}
    for tx in timeline.transmissions:
        key = (tx.first.connection, tx.first.incarnation)
        counts[key] = counts.get(key, 0) + 1
    connections = [ConnectionRow(connection_ids[(c.name, c.incarnation)], c.name, c.incarnation, f"{c.client[0]}:{c.client[1]}",
                                 f"{c.server[0]}:{c.server[1]}", {f"{a}:{p}": isn for (a, p), isn in c.isn.items()},
                                 c.first - t0, c.last - t0, counts.get((c.name, c.incarnation), 0))
                   for c in timeline.connections]
    sockets = [_socket_row(i, tl, timeline, t0, connection_ids) for i, tl in enumerate(timeline.sockets)]
    steps = [StepRow(f"step{s.get('index', i) + 1}", s.get("index", i), rel(s.get("t_start")) or 0.0, rel(s.get("t_end")), s.get("node"),
                     s.get("kind") or "?", step_call(s), step_outcome(s), s.get("ok"), s.get("errno"), s.get("note"))
             for i, s in enumerate(timeline.steps)]
    rules = [RuleRow(f"r{i + 1}", a.t - t0, a.node, a.rule, a.action, a.packet,
                     by_number[a.transmission].id if a.transmission in by_number else None)
             for i, a in enumerate(timeline.rules)]
    rows = []
    socket_ids = {id(tl): f"k{i + 1}" for i, tl in enumerate(timeline.sockets)}
    for event in timeline.events:
        ref = None
        if event.kind == "segment":
            ref = by_number[event.ref.number].id
        elif event.kind == "state":
            ref = socket_ids.get(id(event.ref[0]))
        elif event.kind in ("step", "impairment") and isinstance(event.ref, dict) and "index" in event.ref:
            ref = f"step{event.ref['index'] + 1}"
        elif event.kind == "rule":
            ref = by_number[event.ref.transmission].id if event.ref.transmission in by_number else None
        rows.append(TimelineRow(event.t - t0, event.kind, event.node, event.text, ref))
    verdicts = _verdicts(run_dir, view, timeline, sockets, steps)
    damage = list(view.damage)
    report = Report(run_dir, timeline.run, t0, timeline.t_end - t0, lanes, segments, connections, sockets, steps, rules, verdicts,
                    rows, [f"{n}/{i}" for n, i in timeline.captures], [d.text for d in damage] + _notes(timeline),
                    timeline.kernel, damage)
    return report


def _segment_row(tx: Transmission, t0: float, connection_ids: dict) -> SegmentRow:
    first = tx.first
    payload = first.payload[:48].decode("utf-8", "replace") if first.payload else ""
    payload = "".join(c if c.isprintable() else "." for c in payload)
    return SegmentRow(
        id=f"s{tx.number}", number=tx.number, t=tx.t - t0, connection=connection_ids.get((first.connection, first.incarnation)),
        incarnation=first.incarnation, sender=tx.sender or first.src, receiver=tx.receiver or first.dst, origin=tx.origin,
        src=f"{first.src}:{first.sport}", dst=f"{first.dst}:{first.dport}", flags=first.flags, seq=first.seq, ack=first.ack,
        rel_seq=first.rel_seq, rel_ack=first.rel_ack, length=first.length, window=first.window, ip_id=first.ip_id,
        seen=[Sighting(f"{s.node}/{s.iface}", s.node, s.t - t0) for s in tx.sightings], fate=tx.fate,
        dropped_after=tx.dropped_at, retransmission=first.retransmission, duplicate_of=first.duplicate_of,
        dup_ack=first.dup_ack, keepalive=first.keepalive, out_of_window=first.out_of_window, rst=first.rst or None,
        rules=[f"rule {a.rule} at {a.node}: {a.action}" for a in tx.rules], payload=payload)


def _socket_row(i: int, tl: SocketTimeline, timeline: Timeline, t0: float, connection_ids: dict) -> SocketRow:
    bands = []
    for j, transition in enumerate(tl.transitions):
        after = tl.transitions[j + 1].t - t0 if j + 1 < len(tl.transitions) else None
        bands.append(Band(transition.state, transition.t - t0, after, transition.source, transition.timer_ms, transition.sources,
                          transition.why, transition.before))
    connection = None
    start = tl.transitions[0].t if tl.transitions else 0.0
    local, remote = tl.local, tl.remote
    best = None
    for c in timeline.connections:
        ends = {f"{c.client[0]}:{c.client[1]}", f"{c.server[0]}:{c.server[1]}"}
        if ends == {local, remote} and c.first <= start + 1.0 and (best is None or c.first > best.first):
            best = c
    if best is not None:
        connection = connection_ids[(best.name, best.incarnation)]
    return SocketRow(f"k{i + 1}", tl.node, local, remote, connection, bands, [d.describe(t0) for d in tl.disagreements],
                     [{"state": d.state, "why": d.why, "at": {k: None if v is None else round(v - t0, 6) for k, v in d.at.items()}}
                      for d in tl.disagreements], tl.observed_by)


def _lanes(timeline: Timeline) -> list[Lane]:
    """Endpoints and acting routers, in path order from the first connection's client."""
    nodes = timeline.nodes
    present: list[str] = []
    for tx in timeline.transmissions:
        for end in (tx.sender or tx.first.src, tx.receiver or tx.first.dst):
            if end not in present:
                present.append(end)
    for router in timeline.acted:
        if router not in present:
            present.append(router)
    graph: dict[str, list[str]] = {}
    for link in (timeline.run.get("links") or {}).values():
        ends = link.get("endpoints") or []
        for a in ends:
            graph.setdefault(a, []).extend(b for b in ends if b != a)
    start = None
    if timeline.connections:
        client = timeline.connections[0].client[0]
        start = next((n for n, info in nodes.items() if any(a.split("/")[0] == client for a in info.get("interfaces", {}).values())), None)
    start = start or (present[0] if present else None)
    order: dict[str, int] = {}
    if start is not None:
        queue = deque([start])
        order[start] = 0
        while queue:
            here = queue.popleft()
            for there in graph.get(here, []):
                if there not in order:
                    order[there] = len(order)
                    queue.append(there)
    appearance = {name: i for i, name in enumerate(present)}
    present.sort(key=lambda n: (order.get(n, len(order) + appearance[n]), appearance[n]))
    lanes = []
    for name in present:
        info = nodes.get(name)
        role = (info or {}).get("role", "host") if info else "outside"
        addresses = [a.split("/")[0] for a in (info or {}).get("interfaces", {}).values()] if info else [name]
        lanes.append(Lane(name, role, addresses, list(timeline.acted.get(name, []))))
    return lanes


def _verdicts(run_dir: Path, view: RunView, timeline: Timeline, sockets: list[SocketRow], steps: list[StepRow]) -> list[VerdictRow]:
    """The verdicts the run recorded (its exit status came from them), or judged now from the directory.

    Recorded verdicts are checked against the directory as it is now: a verdict judged again
    that comes out otherwise, or evidence the captures no longer show, becomes a note (in
    ``view.damage``), so a report never contradicts what it shows without saying so."""
    from ..analyze.verdicts import judge

    damage = view.damage
    path = run_dir / "verdicts.json"
    stored = load_json(path, damage, missing="the run did not store its verdicts (it did not finish, or the file was lost): "
                                             "the verdicts shown were judged now from the run directory")
    verdicts: list[Verdict] | None = None
    if stored is not None:
        items = stored.get("verdicts")
        if not isinstance(items, list):
            damage.append(Damage("verdicts.json", f"its 'verdicts' is {type_name(items)}, not a list of verdicts"))
        else:
            problems: list[str] = []
            verdicts = [v for v in (Verdict.read(item, i, problems) for i, item in enumerate(items)) if v is not None]
            damage.extend(Damage("verdicts.json", p) for p in dict.fromkeys(problems))
    now = judge(run_dir, view) if view.run.get("expect") is not None or verdicts is None else None
    if verdicts is None:
        verdicts = now or []
        if path.exists() and view.run:
            damage.append(Damage("verdicts.json", "its verdicts cannot be used: the verdicts shown were judged now from the run directory"))
    else:
        _contradictions(verdicts, now, timeline, damage)
    numbers = {tx.number for tx in timeline.transmissions}
    t0 = timeline.t0
    result = []
    for verdict in verdicts:
        evidence = []
        for item in verdict.evidence:
            ref = None
            if isinstance(item, SegmentRef):
                ref = f"s{item.transmission}" if item.transmission in numbers else None
            elif isinstance(item, SocketRef):
                candidates = [k for k in sockets if (k.node, k.local, k.remote) == (item.node, item.local, item.remote)]
                if candidates and item.since is not None:
                    ref = min(candidates, key=lambda k: abs((k.bands[0].start if k.bands else 0) - (item.since - t0))).id
                elif candidates:
                    ref = candidates[0].id
            elif isinstance(item, StepRef) and item.index is not None:
                ref = f"step{item.index + 1}"
            text = item.summary if isinstance(item, SegmentRef) else item.text
            if isinstance(item, StepRef):
                step = next((s for s in steps if s.id == ref), None)
                text = f"step {'?' if item.index is None else item.index + 1}" + (f" {step.call} {step.outcome}" if step else "")
            evidence.append(Evidence(item.kind, ref, text, item.to_json()))
        result.append(VerdictRow(verdict.index, verdict.kind, verdict.name, verdict.description, verdict.outcome, verdict.expected,
                                 verdict.observed, evidence, verdict.reason, verdict.details))
    return result


def _contradictions(stored: list[Verdict], now: list[Verdict] | None, timeline: Timeline, damage: list[Damage]) -> None:
    """Where the stored verdicts and the run directory as it is now disagree, in words."""
    numbers = {tx.number for tx in timeline.transmissions}
    for verdict in stored:
        cited = [e.transmission for e in verdict.evidence if isinstance(e, SegmentRef)]
        gone = [n for n in cited if n not in numbers]
        if gone:
            shown = ", ".join(f"#{n}" for n in gone[:8]) + (" ..." if len(gone) > 8 else "")
            damage.append(Damage("verdicts.json", f"verdict {verdict.index + 1} ({verdict.description}) cites segment"
                                                  f"{'s' if len(gone) > 1 else ''} {shown}, which the captures do not show now "
                                                  f"(they hold {len(timeline.transmissions)} segments)"))
    if now is None:
        return
    by_index = {v.index: v for v in now}
    for verdict in stored:
        again = by_index.get(verdict.index)
        if again is not None and again.kind == verdict.kind and again.outcome != verdict.outcome:
            damage.append(Damage("verdicts.json", f"verdict {verdict.index + 1} ({verdict.description}) was stored as "
                                                  f"{verdict.outcome} ({verdict.observed}), but judged again from the run "
                                                  f"directory as it is now it is {again.outcome} ({again.observed}): the files "
                                                  "changed since the run, or this labctl judges otherwise; the stored verdict is shown"))


def _notes(timeline: Timeline) -> list[str]:
    notes = []
    run = timeline.run
    if run.get("status") not in (None, "running", "complete"):  # a lost or unfinished run.json: the damage notes say so
        notes.append(f"the run is {run.get('status')}: {run.get('reason') or 'no reason recorded'}; what it collected is shown")
    observers = run.get("observers") or {}
    capturing = {n for n, _ in timeline.captures}
    if observers and not observers.get("tracepoints"):
        notes.append("kernel tracepoints were unavailable" + (f" ({observers['tracepoints_unavailable']})" if observers.get("tracepoints_unavailable") else "")
                     + ": TCP states come from each endpoint's capture (exact to the packet) where there is one, "
                     + "and from sampling (to within a sample interval)")
    for k, tl in enumerate(timeline.sockets):
        for d in tl.disagreements:
            notes.append(f"sources disagree on {tl.node} {tl.local} > {tl.remote} (k{k + 1}): {d.describe(timeline.t0)}")
    missing = [n for n in timeline.nodes if n not in capturing]
    if missing:
        notes.append(f"no capture from {', '.join(missing)}: what happened there is inferred from the other captures")
    for rst in sorted({s.rst for s in timeline.segments if s.rst}):
        notes.append(f"RST ({rst}): {RST_KINDS[rst]}")
    return notes


# --- comparing two runs -------------------------------------------------------------

@dataclass
class Comparison:
    a: Report
    b: Report
    summary: list[tuple[str, int, int]]
    verdicts: list[tuple[str, bool | None, bool | None]]
    states: list[tuple[str, str, str]]
    flow: list[tuple[str, str | None, str | None]]  # (equal|replace|delete|insert, line in A, line in B)

    @property
    def differences(self) -> int:
        return (sum(a != b for _, a, b in self.summary) + sum(a != b for _, a, b in self.verdicts)
                + sum(a != b for _, a, b in self.states) + sum(tag != "equal" for tag, _, _ in self.flow))


def flow_lines(report: Report) -> list[str]:
    """What happened, in order, in words that do not depend on ports, ISNs or times: comparable across runs."""
    items: list[tuple[float, int, str]] = []
    for s in report.segments:
        extra = [m for m in s.marks if not m.startswith("drop")]
        fate = " DROPPED" if s.fate == "dropped" else ""
        items.append((s.t, 1, f"{s.sender} > {s.receiver}: {s.label}{fate}" + (f" ({', '.join(extra)})" if extra else "")))
    for k in report.sockets:
        if "LISTEN" in k.states:
            continue
        for band in k.bands:
            items.append((band.start, 2, f"{k.node}: {band.state}"))
    for step in report.steps:
        if step.kind in ("sleep", "wait"):
            continue
        call = re.sub(r":\d{2,5}\b", ":PORT", step.call)  # two runs of a lab often differ only in ports
        items.append((step.t, 0, f"{step.node or ''}: {call} {step.outcome}".strip()))
    items.sort(key=lambda x: (x[0], x[1]))
    return [text for _, _, text in items]


def _state_summary(report: Report) -> dict[str, str]:
    """Per connection socket: 'client (1)' -> 'SYN_SENT > ESTABLISHED > ...', numbered per node in order."""
    seen: dict[str, int] = {}
    result = {}
    for k in report.sockets:
        if "LISTEN" in k.states:
            continue
        seen[k.node] = seen.get(k.node, 0) + 1
        label = k.node if seen[k.node] == 1 else f"{k.node} ({seen[k.node]})"
        result[label] = " > ".join(k.states)
    return result


def compare(a: Report, b: Report) -> Comparison:
    sa, sb = a.summary, b.summary
    summary = [(key, sa[key], sb[key]) for key in sa]
    verdicts = []
    by_desc_b = {v.description: v for v in b.verdicts}
    matched = set()
    for v in a.verdicts:
        other = by_desc_b.get(v.description)
        if other is not None:
            matched.add(other.description)
        verdicts.append((v.description, v.passed, other.passed if other else None))
    for v in b.verdicts:
        if v.description not in matched:
            verdicts.append((v.description, None, v.passed))
    states_a, states_b = _state_summary(a), _state_summary(b)
    states = [(k, states_a.get(k, "-"), states_b.get(k, "-")) for k in list(states_a) + [k for k in states_b if k not in states_a]]
    la, lb = flow_lines(a), flow_lines(b)
    flow: list[tuple[str, str | None, str | None]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=la, b=lb, autojunk=False).get_opcodes():
        if tag == "equal":
            flow.extend(("equal", x, y) for x, y in zip(la[i1:i2], lb[j1:j2]))
        elif tag == "replace":
            left, right = la[i1:i2], lb[j1:j2]
            for k in range(max(len(left), len(right))):
                flow.append(("replace", left[k] if k < len(left) else None, right[k] if k < len(right) else None))
        elif tag == "delete":
            flow.extend(("delete", x, None) for x in la[i1:i2])
        else:
            flow.extend(("insert", None, y) for y in lb[j1:j2])
    return Comparison(a, b, summary, verdicts, states, flow)


# --- shared formatting ------------------------------------------------------------------

def format_duration(seconds: float | None, still: bool = False) -> str:
    if seconds is None:
        return "until the end"
    if seconds < 0.001:
        text = f"{seconds * 1e6:.0f} µs"
    elif seconds < 1:
        text = f"{seconds * 1000:.1f} ms"
    else:
        text = f"{seconds:.2f} s"
    return (">= " + text) if still else text


def format_ms(t: float) -> str:
    return f"{t * 1000:.3f}"


def band_text(band: Band, report: Report) -> str:
    """A state band's duration as a student should read it; an open band ran to the end of the run (and beyond)."""
    if band.end is None:
        text = format_duration(report.duration - band.start, still=True)
        if band.timer_ms:
            text += f", timer {band.timer_ms / 1000:.1f} s left at entry"
        return text
    return format_duration(band.duration)


def params_text(report: Report) -> str:
    params = report.run.get("params") or {}
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "none"


def generator() -> str:
    return f"labctl {__version__}"
