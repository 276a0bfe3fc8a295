"""One TCP state timeline per socket, from three independent sources.

- **Tracepoints** (sock:inet_sock_set_state) give the kernel's own transitions, exact,
  but only of full sockets. When a closing socket is handed to a timewait socket (for
  TIME_WAIT, and for an orphaned FIN_WAIT2, which lives on as a timewait socket in
  substate FIN_WAIT2 for tcp_fin_timeout), the full socket's tracepoint reads
  ... -> CLOSE while the connection lives on.
- **Sampling** (sock_diag every few ms) sees timewait sockets too, with their substate
  and timer, and when they are gone; a state shorter than a sample can be missed, and
  an entry is known only to within a sample interval.
- **Captures**: each endpoint's own capture replayed through the state machine
  (endpoint.py), exact to the packet, blind to what no segment marks.

Merged per socket incarnation: a transition keeps the time of its most exact source
(tracepoint, then capture, then sample) and lists every source that saw it. Where
sources disagree beyond their known precision, the timeline records the disagreement
(the report shows it) instead of quietly picking one; a state only one source claims
is kept unless a source that could not have missed it saw otherwise.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from ..rundir import read_jsonl, read_run
from . import endpoint, sysctls
from .segments import Segment, capture_path

TW_ENTRY_FROM = ("FIN_WAIT1", "FIN_WAIT2", "CLOSING")
MATCH_WINDOW = 0.5  # seconds between the tracepoint's CLOSE and the first sample of the timewait socket
# The kernel hashes the timewait socket just before the full socket's CLOSE event fires,
# so a sample can see TIME_WAIT a fraction of a millisecond "before" that event.
EARLY = 0.005
SAMPLE_INTERVAL = 0.005  # the agent's default (agent/actor.py); run.json may say otherwise
# States the full socket's tracepoints always show (TIME_WAIT is a timewait socket's; a
# passive open's SYN_RECV starts in a request socket, see endpoint.py).
TRACED_STATES = ("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "CLOSING", "LAST_ACK")
SOURCE_ORDER = ("tracepoint", "capture", "sample")


def normal(state: str | None) -> str | None:
    if state is None:
        return None
    state = state.removeprefix("TCP_")
    return "CLOSED" if state == "CLOSE" else state


@dataclass
class Transition:
    t: float
    state: str
    source: str  # tracepoint | sample | merged | capture | sources joined by "+"
    timer_ms: int | None = None
    sources: tuple[str, ...] = ()  # every source that saw this transition
    at: dict[str, float] = field(default_factory=dict)  # when each source put it
    why: str | None = None  # from a capture: the segment that made it
    before: bool = False  # known only to have happened at or before t

    def __post_init__(self) -> None:
        if not self.sources:
            self.sources = tuple(self.source.split("+")) if self.source != "merged" else ("tracepoint", "sample")
        if not self.at:
            self.at = {source: self.t for source in self.sources}


@dataclass
class Disagreement:
    """Two sources that do not tell the same story about one transition."""

    state: str
    at: dict[str, float | None]  # source -> the time it says (None: it shows no such transition)
    why: str  # why that is more than their precision allows, in words and numbers

    def describe(self, t0: float = 0.0) -> str:
        """'FIN_WAIT1: tracepoint at 12.100 ms, capture at 62.100 ms: 50.0 ms apart, ...' (times since ``t0``)."""
        said = ", ".join(f"{source} " + ("shows none" if t is None else f"at {(t - t0) * 1000:.3f} ms") for source, t in self.at.items())
        return f"{self.state}: {said}: {self.why}"

    @property
    def text(self) -> str:
        return self.describe()

    def to_json(self) -> dict:
        return {"state": self.state, "at": self.at, "why": self.why}


@dataclass
class SocketTimeline:
    node: str
    local: str
    remote: str
    transitions: list[Transition] = field(default_factory=list)
    disagreements: list[Disagreement] = field(default_factory=list)
    observed_by: tuple[str, ...] = ()  # the sources that were watching this socket

    @property
    def states(self) -> list[str]:
        return [t.state for t in self.transitions]

    @property
    def local_port(self) -> int:
        return int(self.local.rpartition(":")[2])

    @property
    def remote_port(self) -> int:
        return int(self.remote.rpartition(":")[2])

    def durations(self) -> list[tuple[str, float, float | None]]:
        """(state, entered, seconds held or None if still in it at the end of the run)."""
        result = []
        for i, transition in enumerate(self.transitions):
            after = self.transitions[i + 1].t if i + 1 < len(self.transitions) else None
            result.append((transition.state, transition.t, None if after is None else after - transition.t))
        return result

    def to_json(self) -> dict:
        return {"node": self.node, "local": self.local, "remote": self.remote,
                "transitions": [{"t": t.t, "state": t.state, "source": t.source, "sources": list(t.sources), "timer_ms": t.timer_ms}
                                for t in self.transitions],
                "disagreements": [d.to_json() for d in self.disagreements]}


def load_timelines(run_dir: Path, segments: list[Segment] | None = None, nodes: dict | None = None) -> list[SocketTimeline]:
    """Timelines from states.jsonl (tracepoints and sampling), merged with each endpoint's capture
    when ``segments`` (analysed, segments.py) and run.json's ``nodes`` are given."""
    records = sorted(read_jsonl(run_dir / "states.jsonl"), key=lambda r: r["t"])
    timelines = _kernel_timelines(records)
    if segments is None or nodes is None:
        return timelines
    run = read_run(run_dir)  # checked: a damaged run.json gives what is usable of it
    capturing = {node for node, info in nodes.items() for iface in info.get("interfaces", {})
                 if capture_path(run_dir, node, iface).exists()}
    machines = endpoint.replay(segments, nodes, capturing, endpoint.dropped_in_node(run_dir, segments), sysctls.load(run_dir),
                               endpoint.kills(run_dir))
    sampled_nodes = {r.get("node") for r in records if r.get("source") == "sample"}
    interval = float(((run.get("observers") or {}).get("sample_interval")) or SAMPLE_INTERVAL)
    traced = bool((run.get("observers") or {}).get("tracepoints")) or any(r.get("source") == "tracepoint" for r in records)
    return merge_captures(timelines, machines, traced=traced, sampled_nodes=sampled_nodes, interval=interval,
                          precision=capture_precision(run))


def capture_precision(run: dict) -> dict[str, float]:
    """How far each node's capture may be from its kernel, in seconds: a delay impairment on the
    node's own egress (netem, or the NFQUEUE shaper) holds what it sends before its capture sees it."""
    widest: dict[str, float] = {}
    for record in run.get("impairments") or []:
        if not isinstance(record, dict):
            continue
        settings = record.get("settings") or {}
        held = (float(settings.get("delay_ms") or 0) + float(settings.get("jitter_ms") or 0)) / 1000
        node = record.get("from") or record.get("node")
        if node and held:
            widest[node] = max(widest.get(node, 0.0), held)
    return {node: endpoint.CAPTURE_PRECISION + held for node, held in widest.items()}


# --- tracepoints and sampling ---------------------------------------------------------------

def _kernel_timelines(records: list[dict]) -> list[SocketTimeline]:
    traced: dict[tuple, list[dict]] = {}
    sampled: dict[tuple, list[dict]] = {}
    for i, record in enumerate(records):
        node = record.get("node")
        if node is None:
            continue
        if record.get("source") == "tracepoint" and record["local"].endswith(":0"):
            # connect() moves to SYN_SENT before the kernel picks the local port: the
            # socket's next event (same node, same peer) carries its real address.
            later = next((r for r in records[i + 1:] if r.get("source") == "tracepoint" and r.get("node") == node
                          and r["remote"] == record["remote"] and not r["local"].endswith(":0")), None)
            if later is not None:
                record = {**record, "local": later["local"]}
        key = (node, record["local"], record["remote"])
        (traced if record.get("source") == "tracepoint" else sampled).setdefault(key, []).append(record)
    timelines = []
    for key in sorted(set(traced) | set(sampled), key=lambda k: k):
        if key[1].startswith("0.0.0.0") and key[2].startswith("0.0.0.0") and key not in sampled:
            continue  # sockets that never had an address of their own (unbound, closed early)
        samples = _handoffs_removed(sorted(sampled.get(key, []), key=lambda r: r["t"]))
        for timeline in _merge(key, sorted(traced.get(key, []), key=lambda r: r["t"]), samples):
            timeline.observed_by = tuple(s for s, present in (("tracepoint", key in traced), ("sample", key in sampled)) if present)
            timelines.append(timeline)
    return timelines


def _timewait(record: dict) -> bool:
    """A sample of a timewait socket: flagged by the sampler, or (older runs) its time_wait timer."""
    return bool(record.get("timewait")) or record.get("timer") == "time_wait"


def _handoffs_removed(samples: list[dict]) -> list[dict]:
    """A full socket replaced by its timewait socket (another cookie, same 4-tuple, same sample)
    is not gone: the connection lives on. Drop that "gone"."""
    result = []
    for record in samples:
        if record.get("event") == "gone" and not _timewait(record) and any(
                other.get("event") == "state" and _timewait(other) and abs(other["t"] - record["t"]) < 1e-6 for other in samples):
            continue
        result.append(record)
    return result


def _merge(key: tuple, traced: list[dict], sampled: list[dict]) -> list[SocketTimeline]:
    node, local, remote = key
    transitions: list[Transition] = []
    if traced:
        for record in traced:
            # A child socket's first event reads LISTEN -> SYN_RECV: the LISTEN is its parent's.
            if not transitions and record.get("oldstate") and normal(record["oldstate"]) not in ("CLOSED", "LISTEN"):
                transitions.append(Transition(record["t"], normal(record["oldstate"]), "tracepoint"))
            transitions.append(Transition(record["t"], normal(record["newstate"]), "tracepoint"))
        # The timewait socket from sampling, spliced in at the exact time of the full socket's CLOSE:
        # TIME_WAIT, or FIN_WAIT2 for an orphan (the full socket's FIN_WAIT2 goes on in it).
        tw_samples = [r for r in sampled if r.get("event") == "state" and (r.get("state") == "TIME_WAIT" or _timewait(r))]
        spliced: set[int] = set()
        for sample in tw_samples:
            state = sample["state"]
            entry = None
            for i, transition in enumerate(transitions):
                if (transition.state == "CLOSED" and i > 0 and transitions[i - 1].state in TW_ENTRY_FROM and i not in spliced
                        and -EARLY <= sample["t"] - transition.t <= MATCH_WINDOW):
                    entry = i
            if entry is not None:
                spliced.add(entry)
                # The timer as the kernel reported it at the first sample (jiffy-rounded, so it
                # can read a full 60000 ms a few ms after entry).
                transitions[entry] = Transition(transitions[entry].t, state, "merged", sample.get("expires_ms") if state == "TIME_WAIT" else None,
                                                at={"tracepoint": transitions[entry].t, "sample": sample["t"]})
            else:
                transitions.append(Transition(sample["t"], state, "sample", sample.get("expires_ms") if state == "TIME_WAIT" else None))
            gone = next((r for r in sampled if r["t"] > sample["t"] and r.get("event") == "gone"
                         and r.get("cookie") == sample.get("cookie")), None)
            if gone is not None and not any(t.state == "CLOSED" and t.source == "sample" and t.t == gone["t"] for t in transitions):
                # A new connection that opened the 4-tuple before the sample saw the timewait socket gone
                # proves it gone by then (e.g. destroyed by ss -K just before the reconnect): its end goes
                # before the new socket's first state, not in the middle of the new socket's life.
                began = transitions[entry].t if entry is not None else sample["t"]
                reopened = min((t.t for t in transitions if t.state in ("SYN_SENT", "SYN_RECV") and began < t.t < gone["t"]),
                               default=None)
                if reopened is None:
                    transitions.append(Transition(gone["t"], "CLOSED", "sample"))
                else:
                    transitions.append(Transition(reopened - 1e-6, "CLOSED", "sample", at={"sample": gone["t"]}, before=True))
        transitions.sort(key=lambda t: t.t)
        _orphans_kept(transitions, sampled)
    else:
        # One socket per cookie (a timewait socket keeps its full socket's cookie): a new cookie on
        # the same 4-tuple is a new connection, whose samples interleave with the old one's "gone".
        by_cookie: dict = {}
        for record in sampled:
            by_cookie.setdefault(record.get("cookie"), []).append(record)
        if len(by_cookie) > 1:
            return [timeline for records in by_cookie.values() for timeline in _merge(key, [], records)]
        for record in sampled:
            state = "CLOSED" if record.get("event") == "gone" else normal(record["state"])
            timer = record.get("expires_ms") if state == "TIME_WAIT" else None
            transitions.append(Transition(record["t"], state, "sample", timer))
    # Collapse repeats, then split where a closed socket's 4-tuple is used again.
    collapsed: list[Transition] = []
    for transition in transitions:
        if collapsed and collapsed[-1].state == transition.state:
            continue
        collapsed.append(transition)
    timelines: list[SocketTimeline] = []
    current = SocketTimeline(node, local, remote)
    for transition in collapsed:
        # A socket never goes back to opening: SYN_SENT or SYN_RECV after anything is a new socket
        # (its predecessor's end was not recorded).
        if current.transitions and (current.transitions[-1].state == "CLOSED" and transition.state != "CLOSED"
                                    or transition.state in ("SYN_SENT", "SYN_RECV")):
            timelines.append(current)
            current = SocketTimeline(node, local, remote)
        current.transitions.append(transition)
    if current.transitions:
        timelines.append(current)
    return timelines


def _orphans_kept(transitions: list[Transition], sampled: list[dict]) -> None:
    """An orphaned FIN_WAIT2 handed to a timewait socket: the full socket's tracepoint reads
    FIN_WAIT2 -> CLOSE, but sampling still sees the connection in FIN_WAIT2 long after (runs
    from before the sampler flagged timewait sockets show only that). It ends when sampling
    sees it gone (or in TIME_WAIT, spliced above), or lives on past the end of the run.

    Only for runs whose sampler did not flag timewait sockets: a newer one writes the handoff
    itself (spliced above), while a late "gone" alone proves nothing (a loaded sampler may
    simply not have dumped in between)."""
    if any("timewait" in r for r in sampled):
        return
    for i in range(len(transitions) - 1, 0, -1):
        close, before = transitions[i], transitions[i - 1]
        if close.state != "CLOSED" or close.source != "tracepoint" or before.state != "FIN_WAIT2":
            continue
        after = [r for r in sampled if r["t"] >= close.t - EARLY]
        if not after and not any(r.get("state") == "FIN_WAIT2" for r in sampled):
            continue  # sampling never saw this socket in FIN_WAIT2: nothing says it lived on
        gone = next((r for r in after if r.get("event") == "gone"), None)
        if gone is None and not sampled:
            continue
        if gone is not None and gone["t"] - close.t <= 3 * SAMPLE_INTERVAL + EARLY:
            continue  # gone at the next samples: it really closed
        if any(t.t > close.t and t.state != "CLOSED" for t in transitions[i + 1:i + 2]):
            continue  # something else followed (TIME_WAIT was spliced in)
        del transitions[i]
        if gone is not None and not any(t.state == "CLOSED" and abs(t.t - gone["t"]) < 1e-9 for t in transitions):
            transitions.insert(i, Transition(gone["t"], "CLOSED", "sample"))
    transitions.sort(key=lambda t: t.t)


# --- the captures -------------------------------------------------------------------------------

def _from_capture(machine: endpoint.EndpointMachine) -> list[Transition]:
    return [Transition(t.t, t.state, "capture", why=t.why, before=t.before) for t in machine.transitions]


def merge_captures(timelines: list[SocketTimeline], machines: list[endpoint.EndpointMachine], *, traced: bool,
                   sampled_nodes: set, interval: float, precision: dict[str, float] | None = None) -> list[SocketTimeline]:
    by_key: dict[tuple, list[SocketTimeline]] = {}
    for timeline in timelines:
        by_key.setdefault((timeline.node, timeline.local, timeline.remote), []).append(timeline)
    paired: set[int] = set()
    result = list(timelines)
    for machine in sorted(machines, key=lambda m: m.first):
        candidates = [tl for tl in by_key.get((machine.node, machine.local, machine.remote), [])
                      if id(tl) not in paired and tl.transitions
                      and tl.transitions[0].t <= machine.last + 1.0 and _end(tl) >= machine.first - 1.0]
        captured = _from_capture(machine)
        if not candidates:
            result.append(SocketTimeline(machine.node, machine.local, machine.remote, captured, observed_by=("capture",)))
            continue
        timeline = min(candidates, key=lambda tl: abs(tl.transitions[0].t - machine.transitions[0].t))
        paired.add(id(timeline))
        _merge_pair(timeline, captured, machine, traced=traced and "tracepoint" in timeline.observed_by,
                    sampled=machine.node in sampled_nodes and "sample" in timeline.observed_by, interval=interval,
                    precision=(precision or {}).get(machine.node, endpoint.CAPTURE_PRECISION))
    result.sort(key=lambda tl: (tl.node, tl.local, tl.remote, tl.transitions[0].t if tl.transitions else 0.0))
    return result


def _end(timeline: SocketTimeline) -> float:
    last = timeline.transitions[-1]
    return float("inf") if last.state != "CLOSED" else last.t


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _merge_pair(timeline: SocketTimeline, captured: list[Transition], machine: endpoint.EndpointMachine, *,
                traced: bool, sampled: bool, interval: float, precision: float = endpoint.CAPTURE_PRECISION) -> None:
    kernel = timeline.transitions
    merged: list[Transition] = []
    disagreements = timeline.disagreements
    matcher = difflib.SequenceMatcher(a=[t.state for t in kernel], b=[t.state for t in captured], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for a, b in zip(kernel[i1:i2], captured[j1:j2]):
                # A TIME_WAIT only the capture showed: the kernel's CLOSE was its handoff to a timewait
                # socket (tracepoints see full sockets only), and the socket ended when the capture says.
                handoff = bool(merged) and merged[-1].state == "TIME_WAIT" and merged[-1].sources == ("capture",)
                merged.append(_agree(a, b, disagreements, interval, precision, handoff=handoff))
            continue
        for a in kernel[i1:i2]:
            merged.append(a)
            if "tracepoint" in a.sources and a.state in TRACED_STATES and machine.first - 0.001 <= a.t <= machine.last + 0.001 \
                    and not any(b.state == a.state for b in captured[j1:j2]):
                disagreements.append(Disagreement(a.state, {"tracepoint": a.t, "capture": None},
                                                  f"{machine.node}'s capture shows no segment that makes it"))
        for j in range(j1, j2):
            b = captured[j]
            held = (captured[j + 1].t - b.t) if j + 1 < len(captured) else None
            # Tracepoints refute a state only while they were still reporting this socket.
            watching = traced and any("tracepoint" in k.sources and k.t >= b.t - endpoint.CAPTURE_PRECISION for k in kernel)
            bounded = j + 1 < len(captured) and captured[j + 1].before  # its end is only known to come by then
            refuted = _refuted(b, held, traced=watching, sampled=sampled, interval=interval, bounded=bounded)
            if refuted:
                disagreements.append(Disagreement(b.state, {"capture": b.t, "tracepoint" if watching and b.state in TRACED_STATES else "sample": None},
                                                  f"the capture implies it ({b.why}); {refuted}"))
            else:
                merged.append(b)
    # Sequence order is the truth; times from different sources may cross by their precision.
    for previous, transition in zip(merged, merged[1:]):
        if transition.t < previous.t:
            transition.t = previous.t
    collapsed: list[Transition] = []
    for transition in merged:
        if collapsed and collapsed[-1].state == transition.state:
            continue
        collapsed.append(transition)
    timeline.transitions = collapsed
    timeline.observed_by = tuple(dict.fromkeys(timeline.observed_by + ("capture",)))


def _agree(a: Transition, b: Transition, disagreements: list[Disagreement], interval: float,
           precision: float = endpoint.CAPTURE_PRECISION, handoff: bool = False) -> Transition:
    """The same transition from the kernel's sources (``a``) and a capture (``b``): one transition, every source."""
    at = {**a.at, "capture": b.t}
    sources = tuple(s for s in SOURCE_ORDER if s in a.sources or s == "capture")
    t = a.t
    if handoff and a.state == "CLOSED" and b.t >= a.t:
        t = b.t
        sources = tuple(s for s in sources if s != "tracepoint")
    elif "tracepoint" in a.sources and a.at.get("tracepoint") is not None:
        kernel_t = a.at["tracepoint"]
        if a.state == "SYN_RECV" and b.t < kernel_t:
            t = b.t  # the request socket existed from the SYN; the tracepoint fires for the full socket at the ACK
        elif a.state == "TIME_WAIT" and not b.before and b.t > kernel_t + precision:
            # The full socket's CLOSE was its handoff to a timewait socket in substate FIN_WAIT2 (an
            # orphan); TIME_WAIT began when the peer's FIN came, as the capture shows.
            t = b.t
            sources = tuple(s for s in sources if s != "tracepoint")
        elif b.before:
            if kernel_t > b.t + precision:
                disagreements.append(Disagreement(a.state, {"tracepoint": kernel_t, "capture": b.t},
                                                  f"the tracepoint comes after the capture shows it must have happened ({b.why})"))
        elif abs(kernel_t - b.t) > precision:
            disagreements.append(Disagreement(a.state, {"tracepoint": kernel_t, "capture": b.t},
                                              f"{_ms(abs(kernel_t - b.t))} apart, more than the capture's {_ms(precision)} precision"))
    elif "sample" in a.sources:
        sample_t = a.at.get("sample", a.t)
        # A sample sees a state at most an interval (plus the dump) after it was entered.
        if b.before:
            t = min(sample_t, b.t)
        elif b.t > sample_t + EARLY or b.t < sample_t - 2 * interval - EARLY and a.state != "CLOSED":
            disagreements.append(Disagreement(a.state, {"sample": sample_t, "capture": b.t},
                                              f"{_ms(abs(sample_t - b.t))} apart, more than the {_ms(interval)} sample interval allows"))
            t = b.t
        else:
            t = b.t  # exact to the packet, and consistent with the sample
    return Transition(t, a.state, "+".join(sources), a.timer_ms, sources, at, b.why, b.before and t == b.t)


def _refuted(b: Transition, held: float | None, *, traced: bool, sampled: bool, interval: float, bounded: bool = False) -> str | None:
    """Why a state only the capture shows cannot be taken as true, or None when no other source could have seen it."""
    if b.state == "CLOSED":
        return None  # a socket's end: the other sources may simply not have watched to the end
    if traced and b.state in TRACED_STATES:
        return "the tracepoints, which show every change of a full socket, show none"
    if sampled and (held is None or held > 2 * interval + EARLY) and b.state != "SYN_RECV":
        if bounded:  # e.g. a timewait socket destroyed (ss -K) before the RST that shows it gone
            return (f"sampling every {_ms(interval)} never saw it, and the capture shows only that it was over "
                    f"{_ms(held)} later: it was never there, or lasted less than a sample")
        lasted = "until the end of the run" if held is None else f"for {_ms(held)}"
        return f"sampling every {_ms(interval)} would have seen it {lasted}, and never did"
    return None
