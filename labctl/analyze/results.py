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


def _number(value: Any) -> float:
    """A number as verdicts.json stores one; ValueError for anything else (a string, a boolean)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"not text: {value!r}")
    return value


def ref_from_json(item: dict) -> Ref | None:
    """A reference as verdicts.json holds it; ValueError (or TypeError) when it is not one labctl writes."""
    kind = item.get("kind")
    if kind == "segment":
        transmission = item.get("transmission", -1)
        if isinstance(transmission, bool) or not isinstance(transmission, int):
            raise ValueError(f"not a transmission number: {transmission!r}")
        return SegmentRef(transmission, _text(item.get("at")) or "", _number(item.get("t") or 0.0), _text(item.get("summary")) or "")
    if kind == "states":
        local, remote = item.get("local"), item.get("remote")
        if local is None and item.get("socket"):
            local, _, remote = str(item["socket"]).partition("->")
        marks = []
        for m in item.get("transitions") or []:
            sources = m.get("sources") or str(m.get("source") or "").split("+")
            if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
                raise ValueError(f"not a list of sources: {sources!r}")
            timer = m.get("timer_ms")
            marks.append(StateMark(_number(m.get("t") or 0.0), _text(m.get("state")) or "?", tuple(sources),
                                   None if timer is None else int(_number(timer))))
        return SocketRef(_text(item.get("node")) or "?", str(_text(local) or "?"), str(_text(remote) or "?"), tuple(marks))
    if kind == "step":
        index = item.get("index")
        t, ok = item.get("t"), item.get("ok")
        if ok is not None and not isinstance(ok, bool):
            raise ValueError(f"not a boolean: {ok!r}")
        return StepRef(index if isinstance(index, int) and not isinstance(index, bool) and index >= 0 else None,
                       _text(item.get("node")), _text(item.get("step")), None if t is None else _number(t), ok,
                       _text(item.get("errno")), item.get("result"), _text(item.get("name")))
    if kind == "event":
        return EventRef(_number(item.get("t") or 0.0), _text(item.get("node")), _text(item.get("event")) or "",
                        _text(item.get("summary")) or "")
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
    def read(cls, data: Any, index: int, damage: list[str]) -> "Verdict | None":
        """One item of verdicts.json, checked: None (and why, in ``damage``) when it is not a verdict;
        a field of the wrong type is left out, an evidence item that is not one is dropped."""
        if not isinstance(data, dict):
            damage.append(f"verdict {index + 1} is {_kind_of(data)}, not a verdict: left out")
            return None
        data = dict(data)
        for key, types in _VERDICT_FIELDS.items():
            if key in data and data[key] is not None and (not isinstance(data[key], types) or
                                                          (isinstance(data[key], bool) and bool not in types)):
                damage.append(f"verdict {index + 1}'s '{key}' is {_kind_of(data[key])}: left out")
                data.pop(key)
        if data.get("outcome") is not None and data["outcome"] not in OUTCOMES:
            damage.append(f"verdict {index + 1}'s outcome {data['outcome']!r} is not pass, fail or undecided"
                          + ("" if isinstance(data.get("passed"), bool) else ": shown as undecided"))
            data["outcome"] = None
        if data.get("outcome") is None and not isinstance(data.get("passed"), bool):
            if "outcome" not in data or data["outcome"] is not None:
                damage.append(f"verdict {index + 1} has no outcome that can be read: shown as undecided")
            data["outcome"] = UNDECIDED
            data["reason"] = "its stored outcome could not be read"
        evidence = []
        for item in data.get("evidence") or []:
            try:
                ref = ref_from_json(item) if isinstance(item, dict) else None
            except (TypeError, ValueError, AttributeError):
                ref = None
            if ref is None:
                damage.append(f"verdict {index + 1} has evidence that is not a reference labctl writes: left out")
            else:
                evidence.append(ref.to_json())
        data["evidence"] = evidence
        return cls.from_json(data, index)

    @classmethod
    def from_json(cls, data: dict, index: int = 0) -> "Verdict":
        outcome = data.get("outcome")
        if outcome not in OUTCOMES:
            outcome = PASS if data.get("passed") else FAIL
        evidence = [ref for ref in (ref_from_json(item) for item in data.get("evidence") or [] if isinstance(item, dict)) if ref]
        return cls(int(data.get("index", index)), str(data.get("kind") or "?"), str(data.get("description") or ""), outcome,
                   str(data.get("expected") or ""), str(data.get("observed") or ""), evidence, data.get("name"),
                   data.get("spec") or {}, data.get("reason"), data.get("details") or {})


_VERDICT_FIELDS: dict[str, tuple] = {"index": (int,), "kind": (str,), "description": (str,), "outcome": (str,), "passed": (bool,),
                                     "expected": (str,), "observed": (str,), "evidence": (list,), "name": (str,), "spec": (dict,),
                                     "reason": (str,), "details": (dict,)}


def _kind_of(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


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
