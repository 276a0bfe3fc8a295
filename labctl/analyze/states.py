"""One TCP state timeline per socket, merged from tracepoints and sampling.

Tracepoints give exact transition times but never show TIME_WAIT: when a
socket enters it, the kernel replaces the full socket by a small timewait
socket, and the full socket's tracepoint reads FIN_WAIT2 -> CLOSE. Sampling
(sock_diag every few ms) does see the timewait socket, with its timer.
So: a CLOSE from FIN_WAIT1/FIN_WAIT2/CLOSING followed, for the same
4-tuple, by a sampled TIME_WAIT is really the entry into TIME_WAIT, at the
tracepoint's exact time; TIME_WAIT ends when sampling no longer sees it.
Without tracepoints, the timeline comes from sampling alone (resolution:
the sample interval).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..rundir import read_jsonl

TW_ENTRY_FROM = ("FIN_WAIT1", "FIN_WAIT2", "CLOSING")
MATCH_WINDOW = 0.5  # seconds between the tracepoint's CLOSE and the first TIME_WAIT sample
# The kernel hashes the timewait socket just before the full socket's CLOSE event fires,
# so a sample can see TIME_WAIT a fraction of a millisecond "before" that event.
EARLY = 0.005


def normal(state: str | None) -> str | None:
    if state is None:
        return None
    state = state.removeprefix("TCP_")
    return "CLOSED" if state == "CLOSE" else state


@dataclass
class Transition:
    t: float
    state: str
    source: str  # tracepoint | sample | merged
    timer_ms: int | None = None
    sources: tuple[str, ...] = ()  # every source that saw this transition

    def __post_init__(self) -> None:
        if not self.sources:
            self.sources = ("tracepoint", "sample") if self.source == "merged" else (self.source,)


@dataclass
class SocketTimeline:
    node: str
    local: str
    remote: str
    transitions: list[Transition] = field(default_factory=list)

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
                "transitions": [{"t": t.t, "state": t.state, "source": t.source, "timer_ms": t.timer_ms} for t in self.transitions]}


def load_timelines(run_dir: Path) -> list[SocketTimeline]:
    traced: dict[tuple, list[dict]] = {}
    sampled: dict[tuple, list[dict]] = {}
    records = sorted(read_jsonl(run_dir / "states.jsonl"), key=lambda r: r["t"])
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
        timelines.extend(_merge(key, sorted(traced.get(key, []), key=lambda r: r["t"]), sorted(sampled.get(key, []), key=lambda r: r["t"])))
    return timelines


def _merge(key: tuple, traced: list[dict], sampled: list[dict]) -> list[SocketTimeline]:
    node, local, remote = key
    transitions: list[Transition] = []
    if traced:
        for record in traced:
            # A child socket's first event reads LISTEN -> SYN_RECV: the LISTEN is its parent's.
            if not transitions and record.get("oldstate") and normal(record["oldstate"]) not in ("CLOSED", "LISTEN"):
                transitions.append(Transition(record["t"], normal(record["oldstate"]), "tracepoint"))
            transitions.append(Transition(record["t"], normal(record["newstate"]), "tracepoint"))
        # TIME_WAIT from sampling, spliced in at the exact time of the full socket's CLOSE.
        tw_samples = [r for r in sampled if r.get("state") == "TIME_WAIT" and r.get("event") == "state"]
        for sample in tw_samples:
            entry = None
            for i, transition in enumerate(transitions):
                if (transition.state == "CLOSED" and i > 0 and transitions[i - 1].state in TW_ENTRY_FROM
                        and -EARLY <= sample["t"] - transition.t <= MATCH_WINDOW):
                    entry = i
            if entry is not None:
                # The timer as the kernel reported it at the first sample (jiffy-rounded, so it
                # can read a full 60000 ms a few ms after entry).
                transitions[entry] = Transition(transitions[entry].t, "TIME_WAIT", "merged", sample.get("expires_ms"))
                gone = next((r for r in sampled if r["t"] > sample["t"] and r.get("event") == "gone"), None)
                if gone is not None:
                    transitions.insert(entry + 1, Transition(gone["t"], "CLOSED", "sample"))
            else:
                transitions.append(Transition(sample["t"], "TIME_WAIT", "sample", sample.get("expires_ms")))
                gone = next((r for r in sampled if r["t"] > sample["t"] and r.get("event") == "gone"), None)
                if gone is not None:
                    transitions.append(Transition(gone["t"], "CLOSED", "sample"))
        transitions.sort(key=lambda t: t.t)
    else:
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
        if current.transitions and current.transitions[-1].state == "CLOSED" and transition.state != "CLOSED":
            timelines.append(current)
            current = SocketTimeline(node, local, remote)
        current.transitions.append(transition)
    if current.transitions:
        timelines.append(current)
    return timelines
