"""Quantities as lab authors write them: 50ms, 2s, 5%, 1mbit.

Parsed once at the edge into plain numbers (seconds, fractions, bits per
second); every error names what was written and what is allowed.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|min)?\s*$")
_SCALE = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0}
_PERCENT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*%\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)\s*$", re.IGNORECASE)
_RATE_SCALE = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}


def parse_duration(value: object) -> float:
    """'50ms' -> 0.05; a bare number is seconds. Negative durations are refused."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 50ms, 2s")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. 50ms, 2s, 1.5s")
        seconds = float(match.group(1)) * _SCALE[match.group(2)]
    if seconds < 0:
        raise ValueError(f"{value!r}: a duration cannot be negative")
    return seconds


def parse_percent(value: object) -> float:
    """'5%' -> 0.05. Between 0% and 100%."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a percentage; write e.g. 5%")
    if isinstance(value, (int, float)):
        fraction = float(value) / 100.0
    else:
        match = _PERCENT.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a percentage; write e.g. 5% or 0.5%")
        fraction = float(match.group(1)) / 100.0
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{value!r} is outside 0% to 100%")
    return fraction


def parse_rate(value: object) -> float:
    """'1mbit' -> 1e6 bits per second (tc's units: bit, kbit, mbit, gbit; bps = bytes/s)."""
    match = _RATE.match(str(value))
    if not match or isinstance(value, bool):
        raise ValueError(f"{value!r} is not a rate; write e.g. 1mbit, 500kbit, 10mbps (bytes)")
    rate = float(match.group(1)) * _RATE_SCALE[match.group(2).lower()]
    if rate <= 0:
        raise ValueError(f"{value!r}: a rate must be above zero")
    return rate


def format_duration(seconds: float) -> str:
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds * 1000:g}ms"


def format_percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def format_rate(bits: float) -> str:
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits:g}bit"


Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str, when_used="json"),
                     WithJsonSchema({"type": ["string", "number"], "pattern": r"^\d+(\.\d+)?\s*(us|ms|s|m|min)?$",
                                     "description": "A duration: 50ms, 2s; a bare number is seconds."})]
Percent = Annotated[float, BeforeValidator(parse_percent), PlainSerializer(format_percent, return_type=str, when_used="json"),
                    WithJsonSchema({"type": ["string", "number"], "pattern": r"^\d+(\.\d+)?\s*%$",
                                    "description": "A percentage from 0% to 100%."})]
Rate = Annotated[float, BeforeValidator(parse_rate), PlainSerializer(format_rate, return_type=str, when_used="json"),
                 WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$",
                                 "description": "A rate: 1mbit, 500kbit (bits/s) or 10mbps (bytes/s)."})]
