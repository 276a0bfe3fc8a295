"""Quantities as lab authors write them: 50ms, 2s, 5%, 1mbit.

Parsed once at the edge into plain numbers (seconds, fractions, bits per
second); every error names what was written and what is allowed.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

# Ranges every quantity is checked against before anything is created (the README's "Limits").
MAX_DURATION = 86_400.0          # seconds: no wait, timeout or sleep of a lab lasts more than a day
MAX_RATE = 1e12                  # bits per second: a terabit
MAX_COUNT = 1_000_000            # packets a rule acts on, a count in an expectation
MAX_BYTES = 1 << 30              # bytes one send or recv step moves

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|min)?\s*$")
_SCALE = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0}
_PERCENT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*%\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)\s*$", re.IGNORECASE)
_RATE_SCALE = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}


def shown(value: object, most: int = 40) -> str:
    """A value as an error message quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= most else text[:most - 3] + "..."


def parse_duration(value: object) -> float:
    """'50ms' -> 0.05; a bare number is seconds. Negative durations are refused."""
    if isinstance(value, bool):
        raise ValueError(f"{shown(value)} is not a duration; write e.g. 50ms, 2s")
    if isinstance(value, (int, float)):
        seconds = float(value) if abs(value) < 1e300 else math.inf
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{shown(value)} is not a duration; write e.g. 50ms, 2s, 1.5s")
        seconds = float(match.group(1)) * _SCALE[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{shown(value)} is not a duration: it must be a finite number of seconds")
    if seconds < 0:
        raise ValueError(f"{shown(value)}: a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"{shown(value)} is more than a day (at most {MAX_DURATION:g} s)")
    return seconds


def parse_percent(value: object) -> float:
    """'5%' -> 0.05. Between 0% and 100%."""
    if isinstance(value, bool):
        raise ValueError(f"{shown(value)} is not a percentage; write e.g. 5%")
    if isinstance(value, (int, float)):
        fraction = float(value) / 100.0 if abs(value) < 1e300 else math.inf
    else:
        match = _PERCENT.match(str(value))
        if not match:
            raise ValueError(f"{shown(value)} is not a percentage; write e.g. 5% or 0.5%")
        fraction = float(match.group(1)) / 100.0
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{shown(value)} is outside 0% to 100%")
    return fraction


def parse_rate(value: object) -> float:
    """'1mbit' -> 1e6 bits per second (tc's units: bit, kbit, mbit, gbit; bps = bytes/s)."""
    match = _RATE.match(str(value)) if isinstance(value, str) else None
    if not match or isinstance(value, bool):
        raise ValueError(f"{shown(value)} is not a rate; write e.g. 1mbit, 500kbit, 10mbps (bytes)")
    rate = float(match.group(1)) * _RATE_SCALE[match.group(2).lower()]
    if rate <= 0:
        raise ValueError(f"{shown(value)}: a rate must be above zero")
    if not math.isfinite(rate) or rate > MAX_RATE:
        raise ValueError(f"{shown(value)} is more than {format_rate(MAX_RATE)}")
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


# --- bounded integers and checked words, shared by the lab and scenario models ------

Port = Annotated[int, Field(ge=1, le=65535, description="A TCP or UDP port, 1 to 65535.")]
PortOrAny = Annotated[int, Field(ge=0, le=65535, description="A port, 0 to 65535 (0: any).")]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT, description=f"A count, 0 to {MAX_COUNT:,}.")]
Bytes = Annotated[int, Field(ge=1, le=MAX_BYTES, description=f"A number of bytes, 1 to {MAX_BYTES:,}.")]
Seq32 = Annotated[int, Field(ge=0, le=2**32 - 1, description="A relative sequence or acknowledgment number (32 bits).")]
ExitStatus = Annotated[int, Field(ge=0, le=255, description="A process exit status, 0 to 255.")]
SockOptValue = Annotated[int, Field(ge=0, le=2**31 - 1, description="A socket option's integer value.")]

# Letters of the TCP control bits (RFC 9293 3.1, RFC 3168): '.' is tcpdump's ACK; a leading
# '=' means exactly these, '!' none of these.
TcpFlags = Annotated[str, Field(pattern=r"^[=!]?[SFRPAUECsfrpauec.]{1,8}$",
                                description="TCP flags: letters of SFRPAUEC ('.' = A); prefix '=' for exactly these, '!' for none of them.")]
# The state filters `ss` accepts (ss(8), STATE-FILTER): what kill_socket passes it.
SsState = Literal["all", "connected", "synchronized", "bucket", "big", "established", "syn-sent", "syn-recv",
                  "fin-wait-1", "fin-wait-2", "time-wait", "closed", "close-wait", "last-ack", "listening", "closing"]
# Only network sysctls are per network namespace; kernel.*, vm.*, fs.* would be the host's.
SysctlName = Annotated[str, Field(pattern=r"^net(\.[a-z0-9_-]+)+$", max_length=128,
                                  description="A network sysctl (net.*): only these are per node.")]
SysctlValue = Annotated[str, Field(pattern=r"^[A-Za-z0-9 _.,:/+-]{0,256}$",
                                   description="A sysctl value: a number, or words and numbers (e.g. '4096 87380 6291456').")] | int
