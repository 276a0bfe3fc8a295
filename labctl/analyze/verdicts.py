"""Expectations -> verdicts, each with the evidence that decided it.

Reads the run directory only. A verdict says what was expected, what was
observed, and lists the segments, transitions or step results behind it,
so a failure explains itself ("expected 2 FINs from server, saw 1: ...").
"""

from __future__ import annotations

from pathlib import Path

from ..agent import tcp
from ..expectations import EXPECTATION_KINDS, judges
from ..rundir import read_json, read_jsonl
from ..scenario import Expectation
from .results import FAIL, PASS, EventRef, SegmentRef, SocketRef, StateMark, StepRef, Verdict
from .segments import Segment, load_segments
from .states import SocketTimeline, load_timelines

EVIDENCE_LIMIT = 20


class RunView:
    """What the run directory says, loaded once for all expectations."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.run = read_json(run_dir / "run.json")
        self.nodes: dict = self.run["nodes"]
        self.segments, self.connections = load_segments(run_dir, self.nodes)
        self.timelines = load_timelines(run_dir, self.segments, self.nodes)
        self.steps = [r for r in read_jsonl(run_dir / "steps.jsonl") if "index" in r]
        done = {r.get("name"): r for r in read_jsonl(run_dir / "steps.jsonl") if r.get("event") == "done"}
        # A background step's outcome arrives later: its final record replaces the "started" one.
        for record in self.steps:
            if record.get("background") and record.get("as") in done:
                final = done[record["as"]]
                record.update(ok=final.get("ok"), errno=final.get("errno"), result=final.get("result"),
                              error=final.get("error"), t_end=final.get("t_end"))

    def addresses(self, who: str | None) -> set[str] | None:
        if who is None:
            return None
        if who in self.nodes:
            return {address.split("/")[0] for address in self.nodes[who]["interfaces"].values()}
        return {who}

    def step(self, name: str) -> dict | None:
        return next((s for s in self.steps if s.get("as") == name), None)


def segment_matches(segment: Segment, spec: dict, view: RunView) -> bool:
    if not tcp.matches(spec, segment, sources=view.addresses(spec.get("from")), targets=view.addresses(spec.get("to")),
                       relative=lambda: (segment.rel_seq, segment.rel_ack)):
        return False
    retransmission = spec.get("retransmission")
    return retransmission is None or segment.retransmission == retransmission


def segments_seen(view: RunView, spec: dict) -> list[Segment]:
    """Matching segments, each transmission once: at the `at` node's capture, else the sender's."""
    at = spec.get("at") or (spec.get("from") if spec.get("from") in view.nodes else None)
    since = None
    if spec.get("after"):
        # Order: only what comes after the first sighting (on any capture) of the `after` segment.
        marks = [s.t for s in view.segments if segment_matches(s, spec["after"], view)]
        if not marks:
            return []
        since = min(marks)
    chosen: dict[int, Segment] = {}
    for segment in view.segments:
        if at is not None and segment.node != at:
            continue
        if since is not None and segment.t <= since:
            continue
        if segment_matches(segment, spec, view):
            chosen.setdefault(segment.transmission, segment)
    return sorted(chosen.values(), key=lambda s: s.t)


def describe_match(spec: dict) -> str:
    parts = []
    if spec.get("flags"):
        parts.append(f"[{spec['flags']}]")
    parts.append("segments")
    if spec.get("from"):
        parts.append(f"from {spec['from']}")
    if spec.get("to"):
        parts.append(f"to {spec['to']}")
    if spec.get("retransmission") is not None:
        parts.append("(retransmissions)" if spec["retransmission"] else "(first transmissions)")
    if spec.get("at"):
        parts.append(f"seen at {spec['at']}")
    if spec.get("after"):
        parts.append(f"after the first {describe_match(spec['after'])}".replace(" segments", " segment", 1))
    return " ".join(parts)


def _verdict(description: str, passed: bool, expected: str, observed: str, evidence: list, **extra) -> Verdict:
    """A decided verdict; ``judge`` fills in the index, kind, name and spec."""
    return Verdict(0, "", description, PASS if passed else FAIL, expected, observed, evidence, **extra)


@judges("segments")
def _judge_segments(view: RunView, spec: dict) -> Verdict:
    seen = segments_seen(view, spec)
    n = len(seen)
    bounds = []
    passed = True
    if spec.get("count") is not None:
        bounds.append(f"exactly {spec['count']}")
        passed &= n == spec["count"]
    if spec.get("min") is not None:
        bounds.append(f"at least {spec['min']}")
        passed &= n >= spec["min"]
    if spec.get("max") is not None:
        bounds.append(f"at most {spec['max']}")
        passed &= n <= spec["max"]
    if not bounds:
        bounds.append("at least 1")
        passed = n >= 1
    return _verdict(f"{' and '.join(bounds)} {describe_match(spec)}", passed, " and ".join(bounds), f"{n} seen",
                    _segment_evidence(seen), details={"count": n})


@judges("no_segments")
def _judge_no_segments(view: RunView, spec: dict) -> Verdict:
    seen = segments_seen(view, spec)
    return _verdict(f"no {describe_match(spec)}", not seen, "none", f"{len(seen)} seen", _segment_evidence(seen),
                    details={"count": len(seen)})


def _segment_evidence(seen: list[Segment]) -> list[SegmentRef]:
    return [SegmentRef(s.transmission, f"{s.node}/{s.iface}", s.t, s.summary()) for s in seen[:EVIDENCE_LIMIT]]


def socket_ref(timeline: SocketTimeline) -> SocketRef:
    return SocketRef(timeline.node, timeline.local, timeline.remote,
                     tuple(StateMark(t.t, t.state, t.sources, t.timer_ms) for t in timeline.transitions))


def _sockets(view: RunView, spec: dict) -> list[SocketTimeline]:
    return [tl for tl in view.timelines if tl.node == spec["node"]
            and (spec.get("local_port") is None or tl.local_port == spec["local_port"])
            and (spec.get("remote_port") is None or tl.remote_port == spec["remote_port"])
            and "LISTEN" not in tl.states]  # listeners are not connections


def _contains_in_order(states: list[str], wanted: list[str]) -> bool:
    position = 0
    for state in states:
        if position < len(wanted) and state == wanted[position]:
            position += 1
    return position == len(wanted)


@judges("states")
def _judge_states(view: RunView, spec: dict) -> Verdict:
    sockets = _sockets(view, spec)
    checks: list[str] = []
    satisfying: list[SocketTimeline] = []
    for timeline in sockets:
        ok = True
        if spec.get("sequence"):
            ok &= _contains_in_order(timeline.states, spec["sequence"])
        if spec.get("final"):
            ok &= bool(timeline.states) and timeline.states[-1] == spec["final"]
        if spec.get("never"):
            ok &= not set(spec["never"]) & set(timeline.states)
        if spec.get("held"):
            held = [(entered, seconds) for state, entered, seconds in timeline.durations() if state == spec["held"]]
            if not held:
                ok = False
            for _, seconds in held:
                if spec.get("min") is not None and (seconds is not None and seconds < spec["min"]):
                    ok = False
                if spec.get("max") is not None and (seconds is None or seconds > spec["max"]):
                    ok = False
        if spec.get("timer_min") is not None or spec.get("timer_max") is not None:
            timers = [t.timer_ms / 1000 for t in timeline.transitions if t.state == "TIME_WAIT" and t.timer_ms is not None]
            if not timers:
                ok = False
            for timer in timers:
                if spec.get("timer_min") is not None and timer < spec["timer_min"]:
                    ok = False
                if spec.get("timer_max") is not None and timer > spec["timer_max"]:
                    ok = False
        if ok:
            satisfying.append(timeline)
    if spec.get("sequence"):
        checks.append("through " + " -> ".join(spec["sequence"]))
    if spec.get("final"):
        checks.append(f"ending in {spec['final']}")
    if spec.get("never"):
        checks.append("never " + "/".join(spec["never"]))
    if spec.get("held"):
        bounds = [f">= {spec['min']}s" if spec.get("min") is not None else "", f"<= {spec['max']}s" if spec.get("max") is not None else ""]
        checks.append(f"holding {spec['held']} " + " ".join(b for b in bounds if b))
    if spec.get("timer_min") is not None or spec.get("timer_max") is not None:
        checks.append(f"TIME_WAIT timer in [{spec.get('timer_min', 0)}, {spec.get('timer_max', 'inf')}] s")
    which = f"a socket on {spec['node']}" + (f" port {spec['local_port']}" if spec.get("local_port") else "") + \
            (f" to port {spec['remote_port']}" if spec.get("remote_port") else "")
    # `never` must hold for every socket; the other checks for at least one.
    passed = (len(satisfying) == len(sockets) and bool(sockets)) if spec.get("never") and not (spec.get("sequence") or spec.get("final") or spec.get("held")) else bool(satisfying)
    observed = "; ".join(f"{tl.local}->{tl.remote}: {' -> '.join(tl.states)}" for tl in sockets[:6]) or "no matching socket"
    evidence = [socket_ref(tl) for tl in (satisfying or sockets)[:EVIDENCE_LIMIT]]
    return _verdict(f"{which} " + ", ".join(checks), passed, ", ".join(checks), observed, evidence)


@judges("step")
def _judge_step(view: RunView, spec: dict) -> Verdict:
    record = view.step(spec["step"])
    if record is None:
        return _verdict(f"step {spec['step']}", False, "the step ran", "it never ran", [])
    checks, passed = [], True
    if spec.get("ok") is not None:
        checks.append("succeeds" if spec["ok"] else "fails")
        passed &= bool(record.get("ok")) == spec["ok"]
    if spec.get("errno") is not None:
        wanted = None if spec["errno"].lower() == "none" else spec["errno"]
        checks.append(f"errno {spec['errno']}")
        passed &= record.get("errno") == wanted
    result = record.get("result") or {}
    if spec.get("returned") is not None:
        checks.append(f"returns {spec['returned']}")
        passed &= result.get("returned") == spec["returned"]
    took = (result.get("blocked_seconds") if record.get("kind") == "close" and result else None)
    if took is None and record.get("t_end") and record.get("t_start"):
        took = record["t_end"] - record["t_start"]
    if spec.get("min_seconds") is not None:
        checks.append(f"takes >= {spec['min_seconds']} s")
        passed &= took is not None and took >= spec["min_seconds"]
    if spec.get("max_seconds") is not None:
        checks.append(f"takes <= {spec['max_seconds']} s")
        passed &= took is not None and took <= spec["max_seconds"]
    observed = ("ok" if record.get("ok") else f"failed: {record.get('errno') or ''} {record.get('error') or ''}".strip())
    if result.get("returned") is not None:
        observed += f", returned {result['returned']}"
    if took is not None:
        observed += f", took {took:.3f} s"
    return _verdict(f"step {spec['step']} ({record.get('kind')}) " + ", ".join(checks), passed, ", ".join(checks), observed,
                    [_step_evidence(record)], details={"took": took})


def _step_evidence(record: dict) -> StepRef:
    return StepRef(record.get("index"), record.get("node"), record.get("kind"), record.get("t_start"), record.get("ok"),
                   record.get("errno"), record.get("result"), record.get("as"))


@judges("data")
def _judge_data(view: RunView, spec: dict) -> Verdict:
    record = view.step(spec["step"])
    result = (record or {}).get("result") or {}
    data = result.get("data", result.get("stdout"))  # what a recv got, or what a command printed
    checks, passed = [], data is not None
    if spec.get("equals") is not None:
        checks.append(f"equals {spec['equals']!r}")
        passed &= data == spec["equals"]
    if spec.get("contains") is not None:
        checks.append(f"contains {spec['contains']!r}")
        passed &= data is not None and spec["contains"] in data
    if spec.get("not_contains") is not None:
        checks.append(f"does not contain {spec['not_contains']!r}")
        passed &= data is not None and spec["not_contains"] not in data
    return _verdict(f"data received by {spec['step']} " + ", ".join(checks), bool(passed), ", ".join(checks),
                    repr(data) if data is not None else "nothing received", [_step_evidence(record)] if record else [])


@judges("events")
def _judge_events(view: RunView, spec: dict) -> Verdict:
    events = [e for e in read_jsonl(view.dir / "events.jsonl")
              if e.get("event") == spec["event"] and (spec.get("node") is None or e.get("node") == spec["node"])]
    where = f" on {spec['node']}" if spec.get("node") else ""
    if not view.run.get("observers", {}).get("tracepoints"):
        return _verdict(f"{spec['event']} events{where}", False, "tracepoint events",
                        "tracepoints were not available on this host: " + str(view.run.get("observers", {}).get("tracepoints_unavailable")), [])
    n, bounds, passed = len(events), [], True
    for key, word, test in (("count", "exactly", lambda a, b: a == b), ("min", "at least", lambda a, b: a >= b), ("max", "at most", lambda a, b: a <= b)):
        if spec.get(key) is not None:
            bounds.append(f"{word} {spec[key]}")
            passed &= test(n, spec[key])
    if not bounds:
        bounds, passed = ["at least 1"], n >= 1
    return _verdict(f"{' and '.join(bounds)} {spec['event']} events{where}", passed, " and ".join(bounds), f"{n} seen",
                    [EventRef(e["t"], e.get("node"), e["event"], f"{e['event']} {e['local']} -> {e['remote']} {e.get('state', '')}".strip())
                     for e in events[:EVIDENCE_LIMIT]], details={"count": n})


def judge(run_dir: Path, view: RunView | None = None) -> list[Verdict]:
    """``view``: the run directory already loaded (a report loads it once for everything)."""
    view = view or RunView(run_dir)
    verdicts: list[Verdict] = []
    covered: set[str] = set()
    for index, written in enumerate(view.run.get("expect", [])):
        # run.json keeps what the author wrote (55s, 5%); read it back into numbers.
        parsed = Expectation.model_validate(written)
        expectation = parsed.model_dump(mode="python", by_alias=True, exclude_none=True)
        kind = parsed.kind
        spec = expectation[kind]
        verdict = EXPECTATION_KINDS[kind].judge(view, spec)
        verdict.index, verdict.kind, verdict.name, verdict.spec = index, kind, expectation.get("name"), spec
        verdicts.append(verdict)
        if kind in ("step", "data"):
            covered.add(spec["step"])
    # A step that failed with no expectation about it is a failure of the run itself.
    for record in view.steps:
        if not record.get("ok") and record.get("as") not in covered:
            where = f" on {record['node']}" if record.get("node") else ""
            verdicts.append(Verdict(len(verdicts), "step-ran", f"step {record['index'] + 1} ({record['kind']}{where}) succeeds", FAIL,
                                    "success (or an expectation about its failure)",
                                    f"{record.get('errno') or ''} {record.get('error') or ''}".strip(), [_step_evidence(record)],
                                    spec={"step": record.get("index")}))
    if view.run.get("status") != "complete":
        verdicts.append(Verdict(len(verdicts), "run-complete", "the run completed", FAIL, "complete",
                                str(view.run.get("reason") or view.run.get("status")), []))
    return verdicts
