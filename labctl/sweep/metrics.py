"""Figures of one run, read from its run directory alone (no engine): what a sweep plots.

Built on labctl's analysis (``analyze.timeline``: transmissions, socket state
timelines, steps). Every metric is a number in its unit, or None when the run
does not show it (no FIN was retransmitted, TIME_WAIT outlasted the run);
a summary counts how many runs had a value.

Verdicts are read through ``outcome``, which takes a verdict as a dict (as in
verdicts.json) or as an object with attributes, so it does not depend on how
the analysis represents them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import UserError
from ..analyze.damage import stored_verdicts
from ..rundir import Damage

PASS, FAIL, UNDECIDED = "pass", "fail", "undecided"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # as an axis shows it: 's', 'segments'
    title: str  # as an axis names it (without the unit)
    description: str
    measure: Callable[[Any], float | None]  # analyze.timeline.Timeline -> value

    @property
    def label(self) -> str:
        return f"{self.title} ({self.unit})" if self.unit else self.title


# --- verdicts ---------------------------------------------------------------------------

def _field(verdict: Any, name: str) -> Any:
    if isinstance(verdict, Mapping):
        return verdict.get(name)
    return getattr(verdict, name, None)


def outcome(verdict: Any) -> str:
    """pass | fail | undecided, from a verdict dict or object (``outcome``/``status``, or ``passed``)."""
    for name in ("outcome", "status", "result"):
        value = _field(verdict, name)
        value = getattr(value, "value", value)  # an Enum
        if isinstance(value, str):
            word = value.lower()
            if word in ("pass", "passed", "ok", "held"):
                return PASS
            if word in ("fail", "failed"):
                return FAIL
            if word in ("undecided", "unknown", "not decided", "undecidable"):
                return UNDECIDED
    if _field(verdict, "undecided"):
        return UNDECIDED
    passed = _field(verdict, "passed")
    if passed is True:
        return PASS
    if passed is False:
        return FAIL
    return UNDECIDED


def run_outcome(verdicts: list) -> str:
    """A run fails when one verdict failed; else it is undecided when one could not be decided."""
    outcomes = [outcome(v) for v in verdicts]
    if FAIL in outcomes:
        return FAIL
    if UNDECIDED in outcomes:
        return UNDECIDED
    return PASS


def read_verdicts(run_dir: Path, damage: list[Damage] | None = None) -> list:
    """verdicts.json's verdicts, read through the checked readers: a damaged file gives the verdicts
    that are whole (as dicts, as stored) and says in ``damage`` what was wrong."""
    return stored_verdicts(run_dir, damage)[0]


def recorded_outcome(run_dir: Path, damage: list[Damage]) -> str:
    """The run's outcome as its stored verdicts say, never a pass they cannot vouch for: when
    verdicts.json cannot be read, or one of its verdicts was left out, a run that would pass is
    undecided (a readable failed verdict still fails it). What was wrong goes to ``damage``."""
    verdicts, whole = stored_verdicts(run_dir, damage)
    result = run_outcome(verdicts)
    return UNDECIDED if result == PASS and not whole else result


# --- metrics -----------------------------------------------------------------------------

def _retransmissions(timeline) -> float:
    return float(sum(1 for tx in timeline.transmissions if any(s.retransmission for s in tx.sightings)))


def _fin_retransmission_delay(timeline) -> float | None:
    """Seconds from a FIN's first transmission to its first retransmission (the longest such wait in the run)."""
    first: dict[tuple, float] = {}
    delays: dict[tuple, float] = {}
    for tx in sorted(timeline.transmissions, key=lambda tx: tx.t):
        segment = tx.first
        if "F" not in segment.flags:
            continue
        key = (segment.connection, segment.incarnation, segment.src, segment.sport, segment.rel_seq)
        if key not in first:
            first[key] = tx.t
        elif segment.retransmission and key not in delays:
            delays[key] = tx.t - first[key]
    return max(delays.values(), default=None)


def _time_wait(timeline) -> float | None:
    """Seconds a socket held TIME_WAIT (the longest in the run); None when it outlasted the run."""
    held = [seconds for socket in timeline.sockets for state, _, seconds in socket.durations()
            if state == "TIME_WAIT" and seconds is not None]
    return max(held, default=None)


def _time_wait_timer(timeline) -> float | None:
    """Seconds the kernel's TIME_WAIT timer showed when the socket was first seen in TIME_WAIT
    (the largest in the run; ss reports it rounded to jiffies)."""
    timers = [t.timer_ms / 1000 for socket in timeline.sockets for t in socket.transitions
              if t.state == "TIME_WAIT" and t.timer_ms is not None]
    return max(timers, default=None)


def _transfer_time(timeline) -> float | None:
    """Seconds from the first data byte leaving its sender to the ACK of the last one reaching it back,
    for the connection direction that carried the most data (flow completion time)."""
    sent: dict[tuple, list] = {}
    for tx in timeline.transmissions:
        segment = tx.first
        if segment.length > 0 and "R" not in segment.flags:
            sent.setdefault((segment.connection, segment.incarnation, segment.src, segment.sport), []).append(tx)
    if not sent:
        return None
    key, data = max(sent.items(), key=lambda item: sum(tx.first.length for tx in item[1]))
    connection, incarnation, src, sport = key
    start = min(tx.t for tx in data)
    end_seq = max(tx.first.rel_seq + tx.first.length for tx in data)
    acks = [tx for tx in timeline.transmissions
            if tx.first.connection == connection and tx.first.incarnation == incarnation and tx.first.dst == src
            and tx.first.dport == sport and "A" in tx.first.flags and tx.first.rel_ack >= end_seq]
    arrivals = [tx.arrival() or tx.t for tx in acks]
    return (min(arrivals) - start) if arrivals else None


def _duration(timeline) -> float | None:
    """Seconds from the first step's start to the last step's end."""
    starts = [s["t_start"] for s in timeline.steps if s.get("t_start") is not None]
    ends = [s["t_end"] for s in timeline.steps if s.get("t_end") is not None]
    return (max(ends) - min(starts)) if starts and ends else None


def _segments(timeline) -> float:
    return float(len(timeline.transmissions))


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("retransmissions", "segments", "retransmissions",
           "segments that repeat sequence space their sender had already sent (any connection, any direction)", _retransmissions),
    Metric("fin_retransmission_delay", "s", "FIN retransmission delay",
           "from a FIN's first transmission to its first retransmission (None: no FIN was retransmitted)", _fin_retransmission_delay),
    Metric("time_wait", "s", "time in TIME_WAIT",
           "how long a socket held TIME_WAIT (None: it still did when the run ended)", _time_wait),
    Metric("time_wait_timer", "s", "TIME_WAIT timer",
           "the kernel's TIME_WAIT timer when the socket was first sampled in TIME_WAIT (None: never sampled there)", _time_wait_timer),
    Metric("transfer_time", "s", "transfer completion time",
           "from the first data byte sent to the ACK of the last one back at the sender", _transfer_time),
    Metric("duration", "s", "scenario duration", "from the first step's start to the last step's end", _duration),
    Metric("segments", "segments", "segments", "transmissions seen in the captures", _segments),
)}
DEFAULT_METRIC = "transfer_time"


def step_metric(name: str) -> Metric:
    """``step:NAME``: how long the step named NAME (its ``as:``, or its number from 1) took."""
    def measure(timeline) -> float | None:
        for step in timeline.steps:
            if step.get("as") == name or (name.isdigit() and step.get("index") == int(name) - 1):
                if step.get("t_start") is not None and step.get("t_end") is not None:
                    return step["t_end"] - step["t_start"]
        return None

    return Metric(f"step:{name}", "s", f"duration of step {name}", f"how long step '{name}' took", measure)


def metric(name: str) -> Metric:
    if name.startswith("step:") and name[5:]:
        return step_metric(name[5:])
    if name in METRICS:
        return METRICS[name]
    raise UserError(f"unknown metric '{name}'", hint=f"metrics: {', '.join(METRICS)}, or step:NAME (a step's duration)")


def measure(run_dir: Path, names: list[str], damage: list[Damage] | None = None) -> dict[str, float | None]:
    """The named metrics of one run directory (analysis is loaded once for all of them); what
    analysis found damaged (a bad line skipped, a capture cut short) goes to ``damage``."""
    from ..analyze.timeline import build
    from ..analyze.verdicts import RunView

    view = RunView(run_dir)
    if damage is not None:
        damage.extend(d for d in view.damage if d not in damage)
    timeline = build(view)
    values: dict[str, float | None] = {}
    for name in names:
        value = metric(name).measure(timeline)
        values[name] = None if value is None else round(float(value), 6)
    return values
