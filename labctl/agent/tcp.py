"""The TCP vocabulary labctl speaks: flags, the header and its options, matching
a segment against a rule or expectation pattern, incarnations of a 4-tuple.

Imported by the agent (packet rules, inside nodes: standard library only, the
node's Debian python3) and by the analysis on the host, so a rule and an
expectation with the same pattern pick the same segments.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterator, Protocol

# RFC 9293 3.1 (and RFC 3168 for ECE/CWR): the control bits, lowest first, with the
# letter tcpdump prints and the word a student reads.
FLAGS = (("F", 0x01, "FIN"), ("S", 0x02, "SYN"), ("R", 0x04, "RST"), ("P", 0x08, "PSH"),
         ("A", 0x10, "ACK"), ("U", 0x20, "URG"), ("E", 0x40, "ECE"), ("C", 0x80, "CWR"))
# The order a person names them in ("SYN ACK", "FIN ACK").
WORD_ORDER = "SFRPAUEC"

OPT_END, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_TIMESTAMPS = 0, 1, 2, 3, 8
MAX_WSCALE = 14  # RFC 7323 2.3: a larger shift is taken as 14


def flag_string(bits: int) -> str:
    """The control bits as letters: 0x11 -> 'FA'."""
    return "".join(letter for letter, bit, _ in FLAGS if bits & bit)


def flag_bits(letters: str) -> int:
    return sum(bit for letter, bit, _ in FLAGS if letter in letters)


def flag_words(flags: str) -> str:
    """Flags as a student reads them: 'SYN ACK', 'FIN ACK', 'RST'."""
    words = {letter: word for letter, _, word in FLAGS}
    return " ".join(words[letter] for letter in WORD_ORDER if letter in flags) or "none"


def flag_set(pattern: str | None) -> set[str]:
    """A written flag pattern's letters: '.' is tcpdump's ACK, case does not matter."""
    return set((pattern or "").lstrip("=!").replace(".", "A").upper())


def flags_match(wanted: str | None, flags: str) -> bool:
    """``F``: at least FIN; ``=A``: exactly ACK; ``!R``: no RST; none: anything."""
    if not wanted:
        return True
    letters = flag_set(wanted)
    if wanted.startswith("="):
        return set(flags) == letters
    if wanted.startswith("!"):
        return not letters & set(flags)
    return letters <= set(flags)


# --- the header ----------------------------------------------------------------------

def options(buf, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(kind, offset, size) of each TCP option between ``start`` and ``end`` (RFC 9293 3.2).

    Stops at End of Option List and at a malformed option (size below 2 or past the header),
    as the kernel's tcp_parse_options does.
    """
    i = start
    while i < end:
        kind = buf[i]
        if kind == OPT_END:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2 or i + buf[i + 1] > end:
            return
        size = buf[i + 1]
        yield kind, i, size
        i += size


def option_values(buf, start: int, end: int) -> tuple[tuple[int, int] | None, int | None, int | None]:
    """(timestamps (TSval, TSecr), window scale shift, MSS) from the options, None where absent."""
    timestamps = wscale = mss = None
    for kind, at, size in options(buf, start, end):
        if kind == OPT_TIMESTAMPS and size == 10:
            timestamps = (int.from_bytes(buf[at + 2:at + 6], "big"), int.from_bytes(buf[at + 6:at + 10], "big"))
        elif kind == OPT_WSCALE and size == 3:
            wscale = min(buf[at + 2], MAX_WSCALE)  # RFC 7323 2.3
        elif kind == OPT_MSS and size == 4:
            mss = int.from_bytes(buf[at + 2:at + 4], "big")
    return timestamps, wscale, mss


@dataclass(slots=True)
class Header:
    """The fields of one IPv4/TCP packet that rules and analysis look at.

    ``buf`` is what it was read from, ``ip`` where the IP header starts in it; the payload
    ends where the IP total length says, not at the frame's end (Ethernet pads).
    """

    buf: bytes
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: str
    window: int
    ip_id: int
    ttl: int
    ip: int
    ihl: int
    doff: int
    payload_start: int
    payload_end: int
    timestamps: tuple[int, int] | None = None
    wscale: int | None = None
    mss: int | None = None

    @property
    def length(self) -> int:
        return self.payload_end - self.payload_start

    @property
    def payload(self) -> bytes:
        return bytes(self.buf[self.payload_start:self.payload_end])

    @property
    def tuple4(self) -> tuple[str, int, str, int]:
        return (self.src, self.sport, self.dst, self.dport)


def parse(buf, ip: int = 0) -> Header | None:
    """An IPv4 packet starting at ``ip`` in ``buf`` -> its TCP header, or None when it is not the
    common case (not IPv4, not TCP, a fragment, truncated or malformed): callers decide what
    to do with the rest."""
    if len(buf) < ip + 20 or buf[ip] >> 4 != 4 or buf[ip + 9] != socket.IPPROTO_TCP:
        return None
    ihl = (buf[ip] & 0x0F) * 4
    total = int.from_bytes(buf[ip + 2:ip + 4], "big")
    fragment = int.from_bytes(buf[ip + 6:ip + 8], "big") & 0x3FFF  # MF and the offset
    tcp = ip + ihl
    if fragment or ihl < 20 or len(buf) < tcp + 20 or len(buf) < ip + total:
        return None
    doff = (buf[tcp + 12] >> 4) * 4
    end = ip + total
    if doff < 20 or tcp + doff > end:
        return None
    timestamps, wscale, mss = option_values(buf, tcp + 20, tcp + doff)
    sport, dport, seq, ack = struct.unpack_from("!HHII", buf, tcp)
    return Header(buf, socket.inet_ntoa(bytes(buf[ip + 12:ip + 16])), socket.inet_ntoa(bytes(buf[ip + 16:ip + 20])), sport, dport,
                  seq, ack, flag_string(buf[tcp + 13]), int.from_bytes(buf[tcp + 14:tcp + 16], "big"),
                  int.from_bytes(buf[ip + 4:ip + 6], "big"), buf[ip + 8], ip, ihl, doff, tcp + doff, end, timestamps, wscale, mss)


# --- matching a pattern ------------------------------------------------------------------

class Seen(Protocol):
    """What matching needs of a segment (an agent's packet or an analysed capture record)."""

    src: str
    dst: str
    sport: int
    dport: int
    flags: str

    @property
    def length(self) -> int: ...

    @property
    def payload(self) -> bytes: ...


def matches(pattern: dict, segment: Seen, *, sources: Collection[str] | None = None, targets: Collection[str] | None = None,
            relative: Callable[[], tuple[int | None, int | None]] | None = None) -> bool:
    """Whether a segment fits a rule's or an expectation's pattern.

    ``sources``/``targets``: the addresses ``from``/``to`` stand for (None: any).
    ``relative``: the segment's (seq, ack) relative to its incarnation's ISNs, asked only when
    the pattern names ``seq`` or ``ack`` (None in either place: not known, which never matches).
    """
    if sources is not None and segment.src not in sources:
        return False
    if targets is not None and segment.dst not in targets:
        return False
    if not flags_match(pattern.get("flags"), segment.flags):
        return False
    if pattern.get("sport") is not None and segment.sport != pattern["sport"]:
        return False
    if pattern.get("dport") is not None and segment.dport != pattern["dport"]:
        return False
    payload = pattern.get("payload")
    if payload is True and segment.length == 0 or payload is False and segment.length > 0:
        return False
    if isinstance(payload, str) and payload.encode() not in segment.payload:
        return False
    if pattern.get("seq") is not None or pattern.get("ack") is not None:
        rel_seq, rel_ack = relative() if relative else (None, None)
        if pattern.get("seq") is not None and rel_seq != pattern["seq"]:
            return False
        if pattern.get("ack") is not None and ("A" not in segment.flags or rel_ack != pattern["ack"]):
            return False
    return True


# --- incarnations of a 4-tuple -------------------------------------------------------------

Endpoint = tuple[str, int]


def ends(src: str, sport: int, dst: str, dport: int) -> frozenset:
    return frozenset({(src, sport), (dst, dport)})


@dataclass
class Incarnation:
    """One connection on a 4-tuple, from its SYN (or first sight) to the next SYN with a new ISN."""

    index: int
    client: Endpoint  # who sent the SYN (or was seen first)
    server: Endpoint
    isn: dict[Endpoint, int] = field(default_factory=dict)
    first: float = 0.0
    last: float = 0.0

    def relative(self, src: str, sport: int, dst: str, dport: int, flags: str, seq: int, ack: int) -> tuple[int | None, int | None]:
        """(seq, ack) relative to this incarnation's ISNs, modulo 2**32; None where an ISN is not known."""
        mine, theirs = self.isn.get((src, sport)), self.isn.get((dst, dport))
        return (None if mine is None else (seq - mine) % 2**32,
                None if theirs is None or "A" not in flags else (ack - theirs) % 2**32)


class Incarnations:
    """ISNs per incarnation of each 4-tuple, learnt from the segments seen, in time order.

    A SYN without ACK whose ISN differs from the current incarnation's starts a new one
    (RFC 9293 3.4: a new connection picks a new ISN); a SYN-ACK gives the responder's ISN.
    ``first_sight``: a 4-tuple first seen mid-connection starts an incarnation there, its
    sides' first sequence numbers taken as ISNs (as Wireshark does); without it, only SYNs
    teach anything (the agent: a relative number must be a real one).
    """

    def __init__(self, *, first_sight: bool = False) -> None:
        self.first_sight = first_sight
        self.history: dict[frozenset, list[Incarnation]] = {}

    def see(self, src: str, sport: int, dst: str, dport: int, flags: str, seq: int, t: float = 0.0) -> Incarnation | None:
        """Learn from one segment; the incarnation it is part of now (None: nothing known yet)."""
        history = self.history.setdefault(ends(src, sport, dst, dport), [])
        here = (src, sport)
        current = history[-1] if history else None
        syn_only = "S" in flags and "A" not in flags
        if (current is None and (syn_only or self.first_sight or "S" in flags)
                or current is not None and syn_only and current.isn.get(here) not in (None, seq)):
            current = Incarnation(len(history), here, (dst, dport), first=t)
            if "S" in flags and not syn_only:  # a SYN-ACK first: the other side opened
                current.client, current.server = (dst, dport), here
            history.append(current)
        if current is None:
            return None
        if self.first_sight or "S" in flags:
            current.isn.setdefault(here, seq)
        current.last = t
        return current

    def of(self, src: str, sport: int, dst: str, dport: int) -> list[Incarnation]:
        return self.history.get(ends(src, sport, dst, dport), [])

    def newest(self, src: str, sport: int, dst: str, dport: int) -> Incarnation | None:
        history = self.of(src, sport, dst, dport)
        return history[-1] if history else None

    def by_sequence(self, src: str, sport: int, dst: str, dport: int, seq: int) -> Incarnation | None:
        """The incarnation whose sequence space ``seq`` lies in: the closest sender ISN at or below it
        (an old duplicate belongs to the incarnation that sent it, not the newest)."""
        history = self.of(src, sport, dst, dport)
        best, distance = None, None
        for incarnation in history:
            isn = incarnation.isn.get((src, sport))
            if isn is not None and (seq - isn) % 2**32 < 2**31 and (distance is None or (seq - isn) % 2**32 < distance):
                best, distance = incarnation, (seq - isn) % 2**32
        return best if best is not None else (history[-1] if history else None)

    def all(self) -> list[Incarnation]:
        return [incarnation for history in self.history.values() for incarnation in history]
