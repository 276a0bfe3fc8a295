"""Expectation kinds: what a scenario says must (or must not) be in the evidence.

Each kind has its model, its key in the scenario file, and the check of the
names it uses against the lab, found through one registry. How the evidence
decides it is analysis's business: ``labctl/analyze/verdicts.py`` registers
one judge per kind with ``@judges(key)``. Adding an expectation kind is a
class here and its judge there.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal

from pydantic import Field

from .steps import Names, Strict, TcpState
from .steps.packets import Match
from .units import MAX_COUNT, Duration, Port


class SegmentMatch(Match):
    """A segment in a capture: what a rule can match, and whether it was a retransmission."""

    retransmission: bool | None = Field(None, description="Only retransmissions (true) or only first transmissions (false).")


class SegmentsExpect(Match):
    count: int | None = Field(None, ge=0, le=MAX_COUNT, description="Exactly this many.")
    min: int | None = Field(None, ge=0, le=MAX_COUNT)
    max: int | None = Field(None, ge=0, le=MAX_COUNT)
    at: str | None = Field(None, description="Count in this node's capture (default: the sender's).")
    retransmission: bool | None = Field(None, description="Only retransmissions (true) or only first transmissions (false).")
    after: "SegmentMatch | None" = Field(None, description="Count only segments seen after the first one matching this (order).")


class StatesExpect(Strict):
    node: str
    local_port: Port | None = None
    remote_port: Port | None = None
    sequence: list[TcpState] | None = Field(None, description="These states, in this order (others may come between).")
    final: TcpState | None = None
    never: list[TcpState] | None = Field(None, description="States that must never be reached.")
    held: TcpState | None = Field(None, description="A state whose duration is checked with min/max.")
    min: Duration | None = None
    max: Duration | None = None
    timer_min: Duration | None = Field(None, description="The TIME_WAIT timer seen at entry is at least this.")
    timer_max: Duration | None = None


class StepExpect(Strict):
    step: str = Field(description="The step's `as` name.")
    ok: bool | None = None
    errno: str | None = Field(None, description="e.g. EADDRINUSE, ECONNRESET; 'none' for success.")
    returned: int | None = Field(None, description="The return value (bytes sent/received, exit status).")
    min_seconds: Duration | None = Field(None, description="The step took at least this long.")
    max_seconds: Duration | None = None


class DataExpect(Strict):
    step: str = Field(description="A recv step's `as` name.")
    equals: str | None = None
    contains: str | None = None
    not_contains: str | None = None


class EventsExpect(Strict):
    """Kernel events from tracepoints (needs tracefs on the host)."""

    event: Literal["tcp_retransmit_skb", "tcp_send_reset", "tcp_receive_reset"]
    node: str | None = None
    count: int | None = Field(None, ge=0, le=MAX_COUNT)
    min: int | None = Field(None, ge=0, le=MAX_COUNT)
    max: int | None = Field(None, ge=0, le=MAX_COUNT)


Judge = Callable[[Any, dict], Any]  # (the loaded run directory, the expectation as numbers) -> a verdict


class ExpectationKind:
    """One kind of expectation. Subclass it here and decorate it with ``@register``."""

    key: ClassVar[str]
    model: ClassVar[Any]
    judge: Judge | None = None  # set by the analysis (``@judges(key)``)

    def check(self, body: Any, here: tuple, names: Names) -> None:
        """Refuse names the lab or the steps do not have (``here``: the expectation's path)."""


EXPECTATION_KINDS: dict[str, ExpectationKind] = {}  # in the order error messages list them


def register(cls: type[ExpectationKind]) -> type[ExpectationKind]:
    if cls.key in EXPECTATION_KINDS:
        raise ValueError(f"expectation kind '{cls.key}' registered twice")
    EXPECTATION_KINDS[cls.key] = cls()
    return cls


def judges(key: str) -> Callable[[Judge], Judge]:
    """Register the function that decides expectations of kind ``key`` from the evidence."""
    def register_judge(judge: Judge) -> Judge:
        EXPECTATION_KINDS[key].judge = judge
        return judge
    return register_judge


class OnSegments(ExpectationKind):
    def check(self, body: Any, here: tuple, names: Names) -> None:
        for field_name in ("from_", "to", "at"):
            names.endpoint(getattr(body, field_name, None), (*here, self.key, field_name.rstrip("_")))


@register
class Segments(OnSegments):
    key, model = "segments", SegmentsExpect


@register
class NoSegments(OnSegments):
    key, model = "no_segments", Match


@register
class States(ExpectationKind):
    key, model = "states", StatesExpect

    def check(self, body: StatesExpect, here: tuple, names: Names) -> None:
        if body.node not in names.lab.nodes:
            raise names.error((*here, self.key, "node"), f"unknown node '{body.node}'")


class OnStep(ExpectationKind):
    def check(self, body: Any, here: tuple, names: Names) -> None:
        if body.step not in names.steps:
            raise names.error((*here, self.key, "step"), f"no step is named '{body.step}'", hint="name steps with `as:`")


@register
class StepOutcome(OnStep):
    key, model = "step", StepExpect


@register
class Data(OnStep):
    key, model = "data", DataExpect


@register
class Events(ExpectationKind):
    key, model = "events", EventsExpect

    def check(self, body: EventsExpect, here: tuple, names: Names) -> None:
        if body.node is not None and body.node not in names.lab.nodes:
            raise names.error((*here, self.key, "node"), f"unknown node '{body.node}'", hint=f"nodes: {', '.join(names.lab.nodes)}")
