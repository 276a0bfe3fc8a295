"""Expectations -> verdicts, each with the evidence that decided it.

Reads the run directory only. A verdict says what was expected, what was
observed, and lists the segments, transitions or step results behind it,
so a failure explains itself ("expected 2 FINs from server, saw 1: ...").
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from ..agent import tcp
from ..expectations import EXPECTATION_KINDS, judges
from ..rundir import Damage, read_jsonl, read_run
from ..scenario import Expectation
from .results import FAIL, PASS, UNDECIDED, EventRef, SegmentRef, SocketRef, StateMark, StepRef, Verdict, outcome_of
from . import endpoint
from .segments import Segment, capture_path, load_segments
from .damage import addresses_from_captures, nodes_from_files, survey, unusable as _unusable
from .states import SAMPLE_INTERVAL, SocketTimeline, load_timelines

EVIDENCE_LIMIT = 20


class RunView:
    """What the run directory says, loaded once for all expectations."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        # What is wrong with the directory's files, found while reading them: a report's notes.
        self.damage: list[Damage] = []
        self.run = read_run(run_dir, self.damage)
        self.nodes: dict = nodes_from_files(run_dir, self.run.get("nodes") or {})
        self.segments, self.connections = load_segments(run_dir, self.nodes, self.damage)
        addresses_from_captures(self.nodes, self.segments)
        self.capturing = {node for node, info in self.nodes.items() for iface in info.get("interfaces", {})
                          if capture_path(run_dir, node, iface).is_file()
                          and not any(d.file == f"pcaps/{node}-{iface}.pcap" and _unusable(d) for d in self.damage)}
        survey(run_dir, self.run, self.nodes, self.damage)
        self.timelines = load_timelines(run_dir, self.segments, self.nodes)
        records = list(read_jsonl(run_dir / "steps.jsonl", self.damage))
        self.steps = [r for r in records if "index" in r]
        done = {r.get("name"): r for r in records if r.get("event") == "done"}
        # A background step's outcome arrives later: its final record replaces the "started" one.
        for record in self.steps:
            if record.get("background") and record.get("as") in done:
                final = done[record["as"]]
                record.update(ok=final.get("ok"), errno=final.get("errno"), result=final.get("result"),
                              error=final.get("error"), t_end=final.get("t_end"))

    @property
    def observers(self) -> dict:
        return self.run.get("observers") or {}

    @property
    def tracepoints(self) -> bool:
        return bool(self.observers.get("tracepoints"))

    @property
    def sample_interval(self) -> float:
        return float(self.observers.get("sample_interval") or SAMPLE_INTERVAL)

    def state_observers(self, node: str) -> tuple[str, ...]:
        """The sources of TCP states that watched a node in this run."""
        nodes = self.observers.get("nodes") or {}
        sampled = (nodes.get(node) or {}).get("sampler") if node in nodes else any(
            r.get("node") == node and r.get("source") == "sample" for r in read_jsonl(self.dir / "states.jsonl"))
        return tuple(s for s, on in (("tracepoint", self.tracepoints), ("capture", node in self.capturing), ("sample", bool(sampled))) if on)

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


def _capture_missing(view: RunView, spec: dict) -> str | None:
    """Why the captures a segments expectation reads were not there, or None."""
    if not view.capturing:
        return "no capture was made on any node"
    at = spec.get("at") or (spec.get("from") if spec.get("from") in view.nodes else None)  # where segments_seen looks
    if at and at not in view.capturing:
        return f"no capture on {at}" + ("" if spec.get("at") else " (the sender, where its segments are counted)")
    return None


def _undecided_segments(description: str, expected: str, reason: str) -> Verdict:
    return Verdict(0, "", description, UNDECIDED, expected, f"not observed: {reason}", [], reason=reason)


def _seen_text(seen: list[Segment]) -> str:
    if not seen:
        return "none seen"
    shown = ", ".join(f"#{s.transmission}" for s in seen[:8]) + (f" and {len(seen) - 8} more" if len(seen) > 8 else "")
    return f"{len(seen)} seen: {shown}"


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
    missing = _capture_missing(view, spec)
    if missing and not (passed and n):  # what was seen was seen; a count short of it may be the missing capture's
        return _undecided_segments(f"{' and '.join(bounds)} {describe_match(spec)}", " and ".join(bounds), missing)
    return _verdict(f"{' and '.join(bounds)} {describe_match(spec)}", passed, " and ".join(bounds), _seen_text(seen),
                    _segment_evidence(seen), details={"count": n})


@judges("no_segments")
def _judge_no_segments(view: RunView, spec: dict) -> Verdict:
    seen = segments_seen(view, spec)
    missing = _capture_missing(view, spec)
    if missing and not seen:
        return _undecided_segments(f"no {describe_match(spec)}", "none", missing)
    return _verdict(f"no {describe_match(spec)}", not seen, "none", _seen_text(seen), _segment_evidence(seen),
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
    return not _missing_in_order(states, wanted)


def _missing_in_order(states: list[str], wanted: list[str]) -> list[str]:
    """The wanted states a timeline does not go through in order: each found after the one before
    it (the earliest such), a state not found is skipped, so only what is really absent is named."""
    missing, position = [], 0
    for state in wanted:
        try:
            position = states.index(state, position) + 1
        except ValueError:
            missing.append(state)
    return missing


def seconds_text(seconds: float) -> str:
    """A duration as a person reads it: 40 µs, 0.4 ms, 206 ms, 60.0 s."""
    if seconds < 0.0001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"


def story(timeline: SocketTimeline) -> str:
    """'SYN_RECV 0.4 ms -> ESTABLISHED 10 ms -> CLOSE_WAIT -> ...': each state with how long it was held."""
    parts = []
    for state, _, held in timeline.durations():
        parts.append(state if held is None or state == "CLOSED" else f"{state} {seconds_text(held)}")
    return " -> ".join(parts) or "no states"


def _blind_spot(view: RunView, timeline: SocketTimeline | None, node: str, state: str, after: str | None = None) -> str | None:
    """Why a state could have happened unseen on this socket, or None when a source that sees it was watching."""
    watching = timeline.observed_by if timeline is not None else view.state_observers(node)
    end_by_timer = state == "CLOSED" and after in ("TIME_WAIT", "FIN_WAIT2")
    if "tracepoint" in watching and state not in ("TIME_WAIT",) and not end_by_timer:
        return None
    if "capture" in watching and not end_by_timer and state != "LISTEN":
        return None
    if "sample" in watching and end_by_timer:
        return None
    missing = []
    if "sample" in watching:
        missing.append(f"shorter than the {seconds_text(view.sample_interval)} sample")
    else:
        missing.append(f"no sampling on {node}")
    if end_by_timer:
        missing.append(f"its end shows in no segment")
    elif node not in view.capturing:
        missing.append(f"no capture on {node}")
    if not view.tracepoints:
        missing.append("no tracepoints")
    return ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]


def _check_socket(view: RunView, spec: dict, timeline: SocketTimeline) -> tuple[list[bool | None], list[str]]:
    """One socket against a states expectation: each check's result (None: could not be told) and notes in words."""
    node, states = spec["node"], timeline.states
    results: list[bool | None] = []
    notes: list[str] = []
    if spec.get("sequence"):
        missing = _missing_in_order(states, spec["sequence"])
        if not missing:
            results.append(True)
        for state in missing:
            previous = spec["sequence"][spec["sequence"].index(state) - 1] if spec["sequence"].index(state) else None
            blind = _blind_spot(view, timeline, node, state, previous)
            results.append(None if blind else False)
            notes.append(f"{state} not seen" + (f": {blind}" if blind else ""))
    if spec.get("final"):
        results.append(bool(states) and states[-1] == spec["final"])
        if not results[-1]:
            notes.append(f"ends in {states[-1] if states else 'nothing'}, not {spec['final']}")
    if spec.get("never"):
        seen = [state for state in spec["never"] if state in states]
        if seen:
            results.append(False)
            notes.append(f"{'/'.join(seen)} seen")
        else:
            blind = [b for b in (_blind_spot(view, timeline, node, state) for state in spec["never"]) if b]
            results.append(None if blind else True)
            if blind:
                notes.append(f"{'/'.join(spec['never'])} not seen, but a short one could have been missed: {blind[0]}")
    if spec.get("held"):
        held = [seconds for state, _, seconds in timeline.durations() if state == spec["held"]]
        if not held:
            blind = _blind_spot(view, timeline, node, spec["held"])
            results.append(None if blind else False)
            notes.append(f"{spec['held']} not seen" + (f": {blind}" if blind else ""))
        for seconds in held:
            ok = True
            if spec.get("min") is not None and seconds is not None and seconds < spec["min"]:
                ok = False
            if spec.get("max") is not None and (seconds is None or seconds > spec["max"]):
                ok = False
            results.append(ok)
            if not ok:
                notes.append(f"{spec['held']} held " + ("until the end of the run" if seconds is None else seconds_text(seconds)))
    if spec.get("timer_min") is not None or spec.get("timer_max") is not None:
        timers = [t.timer_ms / 1000 for t in timeline.transitions if t.state == "TIME_WAIT" and t.timer_ms is not None]
        if not timers:
            sampled = "sample" in timeline.observed_by
            results.append(False if sampled else None)
            notes.append("no TIME_WAIT timer read" + ("" if sampled else f": only sampling reads it, and it saw no timewait socket on {node}"))
        for timer in timers:
            ok = not (spec.get("timer_min") is not None and timer < spec["timer_min"]
                      or spec.get("timer_max") is not None and timer > spec["timer_max"])
            results.append(ok)
            notes.append(f"TIME_WAIT timer {timer:.1f} s at entry")
    if False in results:
        wanted = set(spec.get("sequence") or []) | set(spec.get("never") or []) | {spec.get("final"), spec.get("held")}
        disputed = [d for d in timeline.disagreements if d.state in wanted]
        if disputed:  # the sources do not agree on what decided it: not a fail of the lab
            results = [None if r is False else r for r in results]
            notes += [f"sources disagree: {d.describe(timeline.transitions[0].t if timeline.transitions else 0.0)}" for d in disputed]
    return results, notes


@judges("states")
def _judge_states(view: RunView, spec: dict) -> Verdict:
    sockets = _sockets(view, spec)
    checks: list[str] = []
    if spec.get("sequence"):
        checks.append("through " + " -> ".join(spec["sequence"]))
    if spec.get("final"):
        checks.append(f"ending in {spec['final']}")
    if spec.get("never"):
        checks.append("never " + "/".join(spec["never"]))
    if spec.get("held"):
        bounds = [f">= {spec['min']:g}s" if spec.get("min") is not None else "", f"<= {spec['max']:g}s" if spec.get("max") is not None else ""]
        checks.append(" ".join([f"holding {spec['held']}", *(b for b in bounds if b)]))
    if spec.get("timer_min") is not None or spec.get("timer_max") is not None:
        checks.append(f"TIME_WAIT timer in [{spec.get('timer_min', 0)}, {spec.get('timer_max', 'inf')}] s")
    which = f"a socket on {spec['node']}" + (f" port {spec['local_port']}" if spec.get("local_port") else "") + \
            (f" to port {spec['remote_port']}" if spec.get("remote_port") else "")
    description, expected = f"{which} " + ", ".join(checks), ", ".join(checks)
    if not sockets:
        watching = view.state_observers(spec["node"])
        if not watching:
            reason = f"no observer of TCP states on {spec['node']}: no capture, no sampling, no tracepoints"
            return Verdict(0, "", description, UNDECIDED, expected, f"no matching socket: {reason}", [], reason=reason)
        return _verdict(description, False, expected, f"no matching socket (watched by {', '.join(watching)})", [])
    outcomes, lines, reasons = [], [], []
    satisfying: list[SocketTimeline] = []
    for timeline in sockets:
        results, notes = _check_socket(view, spec, timeline)
        outcome = outcome_of(results)
        outcomes.append(outcome)
        if outcome == PASS:
            satisfying.append(timeline)
        if outcome == UNDECIDED:
            reasons += [n for n in notes if ":" in n]
        lines.append(f"{timeline.local}->{timeline.remote}: {story(timeline)}" + (f"; {'; '.join(notes)}" if notes else ""))
    # `never` alone must hold for every socket; the other checks for at least one.
    if spec.get("never") and not (spec.get("sequence") or spec.get("final") or spec.get("held")):
        outcome = outcome_of([{PASS: True, FAIL: False, UNDECIDED: None}[o] for o in outcomes])
    else:
        outcome = PASS if PASS in outcomes else UNDECIDED if UNDECIDED in outcomes else FAIL
    observed = " | ".join(lines[:6]) + (f" | and {len(lines) - 6} more sockets" if len(lines) > 6 else "")
    evidence = [socket_ref(tl) for tl in (satisfying or sockets)[:EVIDENCE_LIMIT]]
    return Verdict(0, "", description, outcome, expected, observed, evidence,
                   reason="; ".join(dict.fromkeys(reasons)) if outcome == UNDECIDED else None,
                   details={"sockets": [{"node": tl.node, "local": tl.local, "remote": tl.remote, "outcome": o,
                                         "states": [{"state": st, "entered": t, "held": h} for st, t, h in tl.durations()]}
                                        for tl, o in zip(sockets[:EVIDENCE_LIMIT], outcomes)]})


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
        checks.append(f"takes >= {spec['min_seconds']:g} s")
        passed &= took is not None and took >= spec["min_seconds"]
    if spec.get("max_seconds") is not None:
        checks.append(f"takes <= {spec['max_seconds']:g} s")
        passed &= took is not None and took <= spec["max_seconds"]
    observed = "ok" if record.get("ok") else _call_error(record)
    if result.get("returned") is not None:
        observed += f", returned {result['returned']}"
    if took is not None:
        observed += f", took {took:.3f} s"
    return _verdict(f"step {spec['step']} ({record.get('kind')}) " + ", ".join(checks), passed, ", ".join(checks), observed,
                    [_step_evidence(record)], details={"took": took})


def _call_error(record: dict) -> str:
    """How a call that raised reads: "EADDRINUSE ([Errno 98] bind: Address already in use)". Not
    "failed: ...": an expectation may want exactly that error, and then its row says ok."""
    errno, error = record.get("errno"), str(record.get("error") or "").strip()
    if errno and error and error.lower() != str(errno).lower():
        return f"{errno} ({error})"
    return str(errno or error or "error, not said which")


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
        checks.append(f"equals {json.dumps(spec['equals'], ensure_ascii=False)}")
        passed &= data == spec["equals"]
    if spec.get("contains") is not None:
        checks.append(f"contains {json.dumps(spec['contains'], ensure_ascii=False)}")
        passed &= data is not None and spec["contains"] in data
    if spec.get("not_contains") is not None:
        checks.append(f"does not contain {json.dumps(spec['not_contains'], ensure_ascii=False)}")
        passed &= data is not None and spec["not_contains"] not in data
    return _verdict(f"data received by {spec['step']} " + ", ".join(checks), bool(passed), ", ".join(checks),
                    data_text(data), [_step_evidence(record)] if record else [], details={"data": data})


def data_text(data: object) -> str:
    """What a step received, as text in quotes with its length ('"hello" (5 bytes)'), never a repr."""
    if data is None:
        return "nothing received"
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    shown = json.dumps(text[:120], ensure_ascii=False) + ("..." if len(text) > 120 else "")
    return f"received {shown} ({len(text.encode())} bytes)" if isinstance(data, str) else f"received {shown}"


# Kernel events a capture shows too: what a node's own capture holds when tracepoints are missing.
CAPTURE_EVENTS = ("tcp_send_reset", "tcp_receive_reset", "tcp_retransmit_skb")


def _events_from_captures(view: RunView, event: str, node: str | None) -> list[EventRef] | None:
    """The events a tracepoint would have shown, read from the endpoints' own captures (None: not every
    endpoint asked about had a capture, or the capture cannot show that event)."""
    owner = endpoint.endpoints(view.nodes)
    nodes = [node] if node else sorted(set(owner.values()))
    if (event not in CAPTURE_EVENTS or not nodes or any(n not in view.capturing for n in nodes)
            or any(n not in owner.values() for n in nodes)):  # a router's capture shows what it forwards, not its own sockets
        return None
    found: list[EventRef] = []
    if event == "tcp_receive_reset":  # tcp_reset(): an RST a full socket accepted (not a timewait socket)
        for tl in view.timelines:
            for before, t in zip(tl.transitions, tl.transitions[1:]):
                if tl.node in nodes and t.why == "received RST" and before.state != "TIME_WAIT":
                    found.append(EventRef(t.t, tl.node, event, f"{event} {tl.local} -> {tl.remote} in {before.state} (from the capture)"))
    else:
        seen: set[int] = set()
        for s in view.segments:
            sender = owner.get(s.src)
            if sender not in nodes or s.node != sender or s.transmission in seen:
                continue
            if event == "tcp_send_reset" and "R" in s.flags or event == "tcp_retransmit_skb" and s.retransmission:
                seen.add(s.transmission)
                found.append(EventRef(s.t, sender, event, f"{event} {s.src}:{s.sport} -> {s.dst}:{s.dport} #{s.transmission} (from the capture)"))
    return sorted(found, key=lambda e: e.t)


@judges("events")
def _judge_events(view: RunView, spec: dict) -> Verdict:
    where = f" on {spec['node']}" if spec.get("node") else ""
    bounds, tests = [], []
    for key, word, test in (("count", "exactly", lambda a, b: a == b), ("min", "at least", lambda a, b: a >= b), ("max", "at most", lambda a, b: a <= b)):
        if spec.get(key) is not None:
            bounds.append(f"{word} {spec[key]}")
            tests.append(lambda n, test=test, key=key: test(n, spec[key]))
    if not bounds:
        bounds, tests = ["at least 1"], [lambda n: n >= 1]
    description, expected = f"{' and '.join(bounds)} {spec['event']} events{where}", " and ".join(bounds)
    source = "tracepoints"
    if view.tracepoints:
        events = [EventRef(e["t"], e.get("node"), e["event"], f"{e['event']} {e['local']} -> {e['remote']} {e.get('state', '')}".strip())
                  for e in read_jsonl(view.dir / "events.jsonl")
                  if e.get("event") == spec["event"] and (spec.get("node") is None or e.get("node") == spec["node"])]
    else:
        why = view.observers.get("tracepoints_unavailable") or "no reason recorded"
        events = _events_from_captures(view, spec["event"], spec.get("node"))
        if events is None:
            reason = f"kernel tracepoints were not available on this host ({why}), and no capture shows {spec['event']}{where}"
            return Verdict(0, "", description, UNDECIDED, expected, f"not observed: {reason}", [], reason=reason)
        source = f"the capture{'s' if not spec.get('node') else ''} (tracepoints were not available: {why})"
    n = len(events)
    return _verdict(description, all(test(n) for test in tests), expected, f"{n} seen, from {source}", events[:EVIDENCE_LIMIT],
                    details={"count": n, "source": "tracepoint" if view.tracepoints else "capture"})


def judge(run_dir: Path, view: RunView | None = None) -> list[Verdict]:
    """``view``: the run directory already loaded (a report loads it once for everything)."""
    view = view or RunView(run_dir)
    verdicts: list[Verdict] = []
    covered: set[str] = set()
    for index, written in enumerate(view.run.get("expect", [])):
        # run.json keeps what the author wrote (55s, 5%); read it back into numbers.
        try:
            parsed = Expectation.model_validate(written)
        except ValidationError as exc:  # a damaged run.json, or one whose expectation this labctl no longer reads
            reason = f"run.json's expectation {index + 1} cannot be read: {exc.errors()[0].get('msg', 'not an expectation')}"
            verdicts.append(Verdict(index, "?", f"expectation {index + 1}", UNDECIDED, "?", f"not judged: {reason}", [],
                                    reason=reason))
            continue
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
