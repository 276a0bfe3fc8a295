"""A sweep's grid: named parameters, each with its values, and every combination of them.

Values are written as a person would on the command line or in a sweep file:
``0..30:5`` (a range, both ends included, step 5), ``0..30:5%`` or
``10ms..50ms:20ms`` (a range with a unit: each value carries it), ``10ms,50ms``
(a list; pieces may themselves be ranges), or a YAML list. A value reaches the
lab and scenario files exactly as written here (``5%``, ``10ms``), so its unit
is the one the file's impairment or step reads.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Mapping, Sequence

from ..errors import UserError

MAX_VALUES = 10_000  # a typo such as 0..1000000 would otherwise plan a million runs
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"[A-Za-z%µ/]*"
_RANGE = re.compile(rf"^\s*({_NUMBER})\s*({_UNIT})\s*\.\.\s*({_NUMBER})\s*({_UNIT})\s*(?::\s*({_NUMBER})\s*({_UNIT}))?\s*$")
_QUANTITY = re.compile(rf"^\s*({_NUMBER})\s*({_UNIT})\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Axis:
    """One swept parameter and its values, as strings (what the templates receive)."""

    name: str
    values: tuple[str, ...]

    @property
    def swept(self) -> bool:
        return len(self.values) > 1

    @property
    def unit(self) -> str:
        """The unit every value shares ('%', 'ms'), or '' when they share none or have none."""
        units = {quantity(v)[1] for v in self.values}
        return units.pop() if len(units) == 1 and None not in units else ""

    @property
    def numbers(self) -> tuple[float, ...] | None:
        """The values as numbers in the axis's unit, when every value is one (else None: categories)."""
        parsed = [quantity(v) for v in self.values]
        if any(number is None for number, _ in parsed) or len({unit for _, unit in parsed}) > 1:
            return None
        return tuple(float(number) for number, _ in parsed)

    @property
    def title(self) -> str:
        """How a chart names this axis: 'loss (%)', 'delay (ms)', or the bare name."""
        return f"{self.name} ({self.unit})" if self.unit else self.name

    def to_json(self) -> dict:
        return {"name": self.name, "values": list(self.values), "unit": self.unit}


def quantity(value: str) -> tuple[Decimal | None, str | None]:
    """'25ms' -> (25, 'ms'); '5' -> (5, ''); 'cubic' -> (None, None)."""
    match = _QUANTITY.match(str(value))
    if not match:
        return None, None
    try:
        return Decimal(match.group(1)), match.group(2)
    except InvalidOperation:
        return None, None


def _plain(number: Decimal) -> str:
    """30 not 3E+1, 0.5 not 0.50."""
    text = format(number.normalize(), "f")
    return text if text not in ("-0",) else "0"


def expand_range(text: str, name: str = "") -> list[str] | None:
    """'0..30:10%' -> ['0%', '10%', '20%', '30%']; None when ``text`` is not a range."""
    match = _RANGE.match(text)
    if not match:
        return None
    start, start_unit, stop, stop_unit, step, step_unit = match.groups()
    units = {u for u in (start_unit, stop_unit, step_unit) if u}
    where = f"parameter '{name}': " if name else ""
    if len(units) > 1:
        raise UserError(f"{where}range '{text}' mixes units ({', '.join(sorted(units))})",
                        hint="write one unit, e.g. 10..50:20ms or 10ms..50ms:20ms")
    unit = units.pop() if units else ""
    first, last = Decimal(start), Decimal(stop)
    increment = Decimal(step) if step is not None else Decimal(1)
    if increment <= 0:
        raise UserError(f"{where}range '{text}' needs a step above zero", hint="e.g. 0..30:5")
    count = int((abs(last - first) / increment).to_integral_value(rounding="ROUND_FLOOR")) + 1
    if count > MAX_VALUES:
        raise UserError(f"{where}range '{text}' has {count} values (at most {MAX_VALUES})", hint="use a larger step")
    direction = 1 if last >= first else -1
    return [_plain(first + direction * i * increment) + unit for i in range(count)]


def parse_values(name: str, written: Any) -> tuple[str, ...]:
    """Every way a sweep's values can be written (a string, a number, a YAML list) -> the values."""
    if isinstance(written, bool) or written is None:
        raise UserError(f"parameter '{name}': give values, e.g. {name}=0..30:5 or {name}=10ms,50ms")
    pieces: list[Any] = list(written) if isinstance(written, (list, tuple)) else str(written).split(",")
    values: list[str] = []
    for piece in pieces:
        if isinstance(piece, (list, tuple, dict)) or piece is None or isinstance(piece, bool):
            raise UserError(f"parameter '{name}': '{piece}' is not a value")
        text = str(piece).strip()
        if not text:
            raise UserError(f"parameter '{name}': an empty value in '{written}'", hint="values are separated by commas")
        values.extend(expand_range(text, name) or [text])
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise UserError(f"parameter '{name}': {', '.join(duplicates)} given twice")
    if len(values) > MAX_VALUES:
        raise UserError(f"parameter '{name}' has {len(values)} values (at most {MAX_VALUES})")
    return tuple(values)


def parse_axis(spec: str) -> Axis:
    """'loss=0..30:5%' -> Axis('loss', ('0%', '5%', ...))."""
    name, sep, written = spec.partition("=")
    name = name.strip()
    if not sep or not name:
        raise UserError(f"parameter '{spec}' is not NAME=VALUES", hint="e.g. --param loss=0..30:5% --param delay=10ms,50ms")
    return make_axis(name, written)


def make_axis(name: str, written: Any) -> Axis:
    if not _NAME.match(name):
        raise UserError(f"parameter name '{name}' is not a template name", hint="letters, digits and _, not starting with a digit")
    return Axis(name, parse_values(name, written))


def merge_axes(*groups: Iterable[Axis]) -> tuple[Axis, ...]:
    """Later groups win by name (the command line over a sweep file), keeping first-seen order."""
    merged: dict[str, Axis] = {}
    for group in groups:
        for axis in group:
            merged[axis.name] = axis
    return tuple(merged.values())


def points(axes: Sequence[Axis]) -> list[dict[str, str]]:
    """Every combination, the first axis varying slowest."""
    return [dict(zip((a.name for a in axes), combination)) for combination in itertools.product(*(a.values for a in axes))]


def count(axes: Sequence[Axis], repeat: int = 1) -> int:
    total = repeat
    for axis in axes:
        total *= len(axis.values)
    return total


def axes_from_mapping(written: Mapping[str, Any]) -> tuple[Axis, ...]:
    return tuple(make_axis(str(name), values) for name, values in written.items())
