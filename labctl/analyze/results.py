"""What a run's analysis concludes: typed verdicts, each pointing at its evidence.

A verdict has one of three outcomes: it held (``pass``), it did not (``fail``), or the
evidence it needs was never collected (``undecided``: an observer missing, a state too
short for any source that was there), with the reason. Evidence is a list of typed
references into the run directory (a transmission, a socket, a step, a kernel event), so
a report finds the segment or socket itself instead of re-joining by time.

``Verdict.to_json`` is what verdicts.json holds; ``Verdict.from_json`` reads it back,
including the dicts older labctl versions wrote (no ``outcome``, only ``passed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

PASS, FAIL, UNDECIDED = "pass", "fail", "undecided"
OUTCOMES = (PASS, FAIL, UNDECIDED)


@dataclass(frozen=True)
class SegmentRef:
    """One transmission (segments.py numbers them), as seen at one capture point."""

    transmission: int
    at: str  # node/iface
    t: float
    summary: str

    kind = "segment"

    @property
    def text(self) -> str:
        return f"#{self.transmission} at {self.at}: {self.summary}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "transmission": self.transmission, "at": self.at, "t": self.t, "summary": self.summary}


@dataclass(frozen=True)
class StateMark:
    t: float
    state: str
    sources: tuple[str, ...]
    timer_ms: int | None = None

    def to_json(self) -> dict:
        return {"t": self.t, "state": self.state, "source": "+".join(self.sources), "sources": list(self.sources),
                "timer_ms": self.timer_ms}


@dataclass(frozen=True)
class SocketRef:
    """One socket incarnation on a node: its ends and the transitions that decided."""

    node: str
    local: str
    remote: str
    transitions: tuple[StateMark, ...] = ()

    kind = "states"

    @property
    def since(self) -> float | None:
        return self.transitions[0].t if self.transitions else None

    @property
    def socket(self) -> str:
        return f"{self.local}->{self.remote}"

    @property
    def text(self) -> str:
        return f"{self.node} {self.socket}: " + (" > ".join(m.state for m in self.transitions) or "no states")

    def to_json(self) -> dict:
        return {"kind": self.kind, "node": self.node, "socket": self.socket, "local": self.local, "remote": self.remote,
                "transitions": [m.to_json() for m in self.transitions]}


@dataclass(frozen=True)
class StepRef:
    index: int | None
    node: str | None
    step: str | None  # its kind: connect, close ...
    t: float | None
    ok: bool | None
    errno: str | None = None
    result: Any = None
    name: str | None = None  # its `as`

    kind = "step"

    @property
    def text(self) -> str:
        number = "?" if self.index is None else self.index + 1
        how = "ok" if self.ok else f"failed {self.errno or ''}".strip() if self.ok is False else "no outcome"
        return f"step {number} ({self.step or '?'}{' on ' + self.node if self.node else ''}): {how}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "index": self.index, "name": self.name, "t": self.t, "node": self.node, "step": self.step,
                "ok": self.ok, "errno": self.errno, "result": self.result}


@dataclass(frozen=True)
class EventRef:
    """A kernel event (tracepoint) from events.jsonl."""

    t: float
    node: str | None
    event: str
    summary: str

    kind = "event"

    @property
    def text(self) -> str:
        return self.summary

    def to_json(self) -> dict:
        return {"kind": self.kind, "t": self.t, "node": self.node, "event": self.event, "summary": self.summary}


Ref = Union[SegmentRef, SocketRef, StepRef, EventRef]


def ref_from_json(item: dict) -> Ref | None:
    kind = item.get("kind")
    if kind == "segment":
        return SegmentRef(int(item.get("transmission", -1)), str(item.get("at") or ""), float(item.get("t") or 0.0),
                          str(item.get("summary") or ""))
    if kind == "states":
        local, remote = item.get("local"), item.get("remote")
        if local is None and item.get("socket"):
            local, _, remote = str(item["socket"]).partition("->")
        marks = tuple(StateMark(float(m.get("t") or 0.0), str(m.get("state") or "?"),
                                tuple(m.get("sources") or str(m.get("source") or "").split("+")), m.get("timer_ms"))
                      for m in item.get("transitions") or [])
        return SocketRef(str(item.get("node") or "?"), str(local or "?"), str(remote or "?"), marks)
    if kind == "step":
        index = item.get("index")
        return StepRef(index if isinstance(index, int) else None, item.get("node"), item.get("step"), item.get("t"), item.get("ok"),
                       item.get("errno"), item.get("result"), item.get("name"))
    if kind == "event":
        return EventRef(float(item.get("t") or 0.0), item.get("node"), str(item.get("event") or ""), str(item.get("summary") or ""))
    return None


@dataclass
class Verdict:
    """One expectation, judged. ``index`` is its place in the scenario (checks the run adds itself,
    like a failed step no expectation was about, come after)."""

    index: int
    kind: str  # the expectation kind (segments, states ...), or step-ran / run-complete
    description: str
    outcome: str
    expected: str
    observed: str
    evidence: list[Ref] = field(default_factory=list)
    name: str | None = None
    spec: dict = field(default_factory=dict)
    reason: str | None = None  # why it is undecided (or, for a fail, what decided it)
    details: dict = field(default_factory=dict)  # structured observation (counts, durations) for the JSON

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")

    @property
    def passed(self) -> bool:
        return self.outcome == PASS

    @property
    def failed(self) -> bool:
        return self.outcome == FAIL

    @property
    def undecided(self) -> bool:
        return self.outcome == UNDECIDED

    def to_json(self) -> dict:
        return {"index": self.index, "kind": self.kind, "name": self.name, "spec": self.spec, "description": self.description,
                "outcome": self.outcome, "passed": self.passed, "reason": self.reason, "expected": self.expected,
                "observed": self.observed, "details": self.details, "evidence": [e.to_json() for e in self.evidence]}

    @classmethod
    def from_json(cls, data: dict, index: int = 0) -> "Verdict":
        outcome = data.get("outcome")
        if outcome not in OUTCOMES:
            outcome = PASS if data.get("passed") else FAIL
        evidence = [ref for ref in (ref_from_json(item) for item in data.get("evidence") or [] if isinstance(item, dict)) if ref]
        return cls(int(data.get("index", index)), str(data.get("kind") or "?"), str(data.get("description") or ""), outcome,
                   str(data.get("expected") or ""), str(data.get("observed") or ""), evidence, data.get("name"),
                   data.get("spec") or {}, data.get("reason"), data.get("details") or {})


def outcome_of(checks: list[bool | None]) -> str:
    """Checks combined: any False fails; else any None (could not be told) is undecided; else pass."""
    if any(c is False for c in checks):
        return FAIL
    if any(c is None for c in checks):
        return UNDECIDED
    return PASS


def exit_status(verdicts: list[Verdict], complete: bool = True) -> int:
    """0 every expectation held, 1 one failed (or the run did not complete), 3 none failed but one was undecided."""
    if not complete or any(v.failed for v in verdicts):
        return 1
    if any(v.undecided for v in verdicts):
        return 3
    return 0
