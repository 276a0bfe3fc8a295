"""Captures -> TCP segments, connections and their incarnations.

Each capture record is one packet seen at one node's interface. The same
packet seen at several captures (it left the client, crossed the router,
reached the server) is one *transmission*: grouped by what a hop does not
change (addresses, ports, seq, ack, flags, length, IP id). A drop at a
router shows as a transmission seen on one side and not the other.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from ..agent import tcp
from ..agent.tcp import flag_string
from ..rundir import Damage


@dataclass
class Segment:
    t: float
    node: str  # whose capture
    iface: str
    src: str
    sport: int
    dst: str
    dport: int
    flags: str
    seq: int
    ack: int
    length: int
    ip_id: int
    ttl: int
    window: int
    payload: bytes = b""
    timestamps: tuple[int, int] | None = None
    # Filled in by analysis:
    transmission: int = -1
    connection: str = ""
    incarnation: int = 0
    rel_seq: int = 0
    rel_ack: int = 0
    retransmission: bool = False
    # Filled in by classify() (the defaults keep older callers working):
    wscale: int | None = None  # the window scale option, on SYN segments
    duplicate_of: int | None = None  # a copy the network made of that transmission
    dup_ack: bool = False
    keepalive: bool = False
    out_of_window: bool = False
    rst: str = ""  # why an RST was sent: refused | reply | abort (see RST_KINDS)

    @property
    def duplicate(self) -> bool:
        return self.duplicate_of is not None

    @property
    def key(self) -> tuple:
        return (self.src, self.sport, self.dst, self.dport, self.seq, self.ack, self.flags, self.length, self.ip_id)

    @property
    def tuple4(self) -> tuple[str, int, str, int]:
        return (self.src, self.sport, self.dst, self.dport)

    def summary(self) -> str:
        text = f"{self.src}:{self.sport} > {self.dst}:{self.dport} [{self.flags or '.'}] seq {self.rel_seq} ack {self.rel_ack} len {self.length}"
        return text + (" (retransmission)" if self.retransmission else "")

    def to_json(self) -> dict:
        return {"t": self.t, "at": f"{self.node}/{self.iface}", "src": f"{self.src}:{self.sport}", "dst": f"{self.dst}:{self.dport}",
                "flags": self.flags, "seq": self.seq, "ack": self.ack, "rel_seq": self.rel_seq, "rel_ack": self.rel_ack,
                "len": self.length, "ttl": self.ttl, "ip_id": self.ip_id, "transmission": self.transmission,
                "connection": self.connection, "incarnation": self.incarnation, "retransmission": self.retransmission,
                "window": self.window, "duplicate_of": self.duplicate_of, "dup_ack": self.dup_ack, "keepalive": self.keepalive,
                "out_of_window": self.out_of_window, "rst": self.rst or None}


def read_capture(path: Path, node: str, iface: str, damage: list[Damage] | None = None) -> list[Segment]:
    """The TCP segments of one capture; what is damaged in it becomes a ``Damage``, what is whole is kept."""
    segments = []
    frames, datalink = read_pcap(path, damage)
    for ts, frame in frames:
        segment = _decode(ts, frame, datalink, node, iface)
        if segment is not None:
            segments.append(segment)
    return segments


_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 10**6), b"\xa1\xb2\xc3\xd4": (">", 10**6),
           b"\x4d\x3c\xb2\xa1": ("<", 10**9), b"\xa1\xb2\x3c\x4d": (">", 10**9)}
_MAX_RECORD = 262144  # tcpdump's largest snapshot length


def _whole(n: int) -> str:
    return {0: "no whole packet is before it", 1: "the one whole packet before it is read"}.get(n, f"the {n} whole packets before it are read")


def read_pcap(path: Path, damage: list[Damage] | None = None) -> tuple[list[tuple[float, bytes]], int]:
    """(time, frame) of every whole record of a pcap file, and its link type (see ``pcap_records``)."""
    capture = pcap_records(path, damage)
    unit = 1.0 / capture.per_second
    return [(seconds + fraction * unit, data) for seconds, fraction, _, data in capture.records], capture.datalink


@dataclass(frozen=True)
class PcapRecords:
    datalink: int
    per_second: int  # timestamp fraction units: 10**6 (microseconds) or 10**9 (tcpdump's nanoseconds)
    records: list[tuple[int, int, int, bytes]]  # (seconds, fraction, length on the wire, captured bytes)


def pcap_records(path: Path, damage: list[Damage] | None = None) -> PcapRecords:
    """Every whole record of a pcap file.

    Read by hand rather than by dpkt so that every way a capture can be damaged (cut in its
    header or mid-record by a killed node or a full disk, garbage, a record claiming more bytes
    than any capture holds) is told apart, named in ``damage``, and stops the reading only from
    there on: what came before is kept."""
    where = f"{path.parent.name}/{path.name}"
    nothing = PcapRecords(1, 10**6, [])

    def note(problem: str, partial: bool = False) -> None:
        if damage is not None:
            damage.append(Damage(where, problem, partial))

    if path.is_dir():
        note("it is a directory, not a capture")
        return nothing
    try:
        data = path.read_bytes()
    except OSError as exc:
        note(f"it cannot be read ({exc.strerror or exc})")
        return nothing
    if not data:
        note("it is empty (0 bytes): the capture never wrote its header")
        return nothing
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        note("it is a pcapng file, not the pcap labctl's captures write: not read")
        return nothing
    if data[:4] not in _MAGICS:
        note("it is not a pcap file (its first bytes are not a pcap magic number): garbage or another format")
        return nothing
    if len(data) < 24:
        note(f"it is cut short in its file header ({len(data)} of 24 bytes): no packet is in it")
        return nothing
    order, per_second = _MAGICS[data[:4]]
    snaplen, datalink = struct.unpack_from(order + "II", data, 16)
    limit = max(snaplen, _MAX_RECORD)
    records: list[tuple[int, int, int, bytes]] = []
    offset = 24
    while offset < len(data):
        number = len(records) + 1
        if len(data) - offset < 16:
            note(f"it is cut short in the header of packet {number} (at byte {offset}): {_whole(len(records))}", True)
            break
        seconds, fraction, caplen, wirelen = struct.unpack_from(order + "IIII", data, offset)
        if caplen > limit or fraction >= per_second:
            note(f"packet {number} (at byte {offset}) is damaged (its record header is garbage): "
                 f"{_whole(len(records))}, the last {len(data) - offset} bytes are not", True)
            break
        if len(data) - offset - 16 < caplen:
            note(f"it is cut short in packet {number} (at byte {offset}): {_whole(len(records))}", True)
            break
        records.append((seconds, fraction, wirelen, data[offset + 16:offset + 16 + caplen]))
        offset += 16 + caplen
    return PcapRecords(datalink & 0x0FFFFFFF, per_second, records)


_ETHERNET, _SLL = dpkt.pcap.DLT_EN10MB, dpkt.pcap.DLT_LINUX_SLL
_IPV4 = b"\x08\x00"


def _decode(ts: float, frame: bytes, datalink: int, node: str, iface: str) -> Segment | None:
    """The common case (Ethernet or cooked capture, IPv4, TCP, no fragments) read by hand: dpkt's
    objects cost most of a report's time on a large run. Anything else goes to dpkt."""
    if datalink == _ETHERNET:
        ip, kind = 14, frame[12:14]
    elif datalink == _SLL:
        ip, kind = 16, frame[14:16]
    else:
        return _decode_dpkt(ts, frame, datalink, node, iface)
    if kind != _IPV4:
        return None if kind in (b"\x08\x06", b"\x86\xdd") else _decode_dpkt(ts, frame, datalink, node, iface)  # ARP, IPv6
    if len(frame) >= ip + 20 and frame[ip] >> 4 == 4 and frame[ip + 9] != 6:
        return None  # IPv4, not TCP
    h = tcp.parse(frame, ip)
    if h is None:
        return _decode_dpkt(ts, frame, datalink, node, iface)  # a fragment, a cut or odd header: dpkt decides
    return Segment(ts, node, iface, h.src, h.sport, h.dst, h.dport, h.flags, h.seq, h.ack, h.length, h.ip_id, h.ttl, h.window,
                   bytes(frame[h.payload_start:min(h.payload_end, h.payload_start + 256)]), h.timestamps, wscale=h.wscale)


def _decode_dpkt(ts: float, frame: bytes, datalink: int, node: str, iface: str) -> Segment | None:
    try:
        if datalink == dpkt.pcap.DLT_EN10MB:
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
        elif datalink == dpkt.pcap.DLT_LINUX_SLL:
            ip = dpkt.sll.SLL(frame).data
        else:
            ip = dpkt.ip.IP(frame)
    except (dpkt.UnpackError, IndexError, struct.error, ValueError):
        return None  # garbage in a frame: not a segment
    if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
        return None
    th = ip.data
    timestamps, wscale, _ = tcp.option_values(th.opts, 0, len(th.opts))
    return Segment(ts, node, iface, socket.inet_ntoa(ip.src), th.sport, socket.inet_ntoa(ip.dst), th.dport,
                   flag_string(th.flags), th.seq, th.ack, len(th.data), ip.id, ip.ttl, th.win, bytes(th.data[:256]),
                   timestamps, wscale=wscale)


@dataclass
class Connection:
    """One incarnation of a 4-tuple: from its SYN (or first sight) to the next SYN on the same tuple."""

    name: str
    client: tuple[str, int]
    server: tuple[str, int]
    incarnation: int
    isn: dict[tuple[str, int], int] = field(default_factory=dict)
    first: float = 0.0
    last: float = 0.0

    @classmethod
    def of(cls, incarnation: tcp.Incarnation) -> "Connection":
        client, server = incarnation.client, incarnation.server
        return cls(f"{client[0]}:{client[1]}-{server[0]}:{server[1]}", client, server, incarnation.index, dict(incarnation.isn),
                   incarnation.first, incarnation.last)


def analyze(segments: list[Segment]) -> tuple[list[Segment], list[Connection]]:
    """Number transmissions, split 4-tuples into incarnations, relative seq/ack, retransmissions."""
    segments.sort(key=lambda s: (s.t, s.node))
    # The same bytes seen at another capture point are the same transmission (a hop changes
    # only TTL and checksum). Seen again at a capture point that already saw them, they are a
    # new transmission: a duplicate, or an old segment replayed.
    groups: dict[tuple, list[tuple[int, set]]] = {}
    count = 0
    for segment in segments:
        point = (segment.node, segment.iface)
        candidates = groups.setdefault(segment.key, [])
        group = next((g for g in candidates if point not in g[1]), None)
        if group is None:
            group = (count, set())
            count += 1
            candidates.append(group)
        group[1].add(point)
        segment.transmission = group[0]
    first_at: dict[int, Segment] = {}
    for segment in segments:
        first_at.setdefault(segment.transmission, segment)
    tracker = tcp.Incarnations(first_sight=True)
    for segment in sorted(first_at.values(), key=lambda s: s.t):
        tracker.see(segment.src, segment.sport, segment.dst, segment.dport, segment.flags, segment.seq, segment.t)
    connections = {ends: [Connection.of(i) for i in history] for ends, history in tracker.history.items()}
    result = sorted((c for history in connections.values() for c in history), key=lambda c: c.first)
    # Give every capture record its incarnation and relative numbers, via its transmission.
    by_transmission: dict[int, Connection] = {}
    for segment in sorted(first_at.values(), key=lambda s: s.t):
        ends = tcp.ends(segment.src, segment.sport, segment.dst, segment.dport)
        candidates = [c for c in connections[ends] if c.first <= segment.t]
        by_transmission[segment.transmission] = candidates[-1] if candidates else connections[ends][0]
    # A retransmission repeats sequence space its sender had already used in this incarnation:
    # it starts between the ISN and the highest sequence number sent so far (SYN and FIN count
    # one each), as in Wireshark's analysis. A segment from before the ISN (an old duplicate
    # of an earlier incarnation) is not one, and must not move the high mark.
    highest: dict[tuple, int] = {}
    retransmitted: set[int] = set()
    for segment in sorted(first_at.values(), key=lambda s: s.t):
        connection = by_transmission[segment.transmission]
        direction = (connection.name, connection.incarnation, segment.src, segment.sport)
        base = connection.isn.get((segment.src, segment.sport), segment.seq)
        start = (segment.seq - base) % 2**32
        space = segment.length + ("S" in segment.flags) + ("F" in segment.flags)
        mark = highest.get(direction)
        if space and mark is not None and start < mark and not (segment.length <= 1 and start == mark - 1 and not set(segment.flags) & set("SFR")):
            retransmitted.add(segment.transmission)  # (one byte just below the mark is a keep-alive probe)
        if "R" not in segment.flags and (mark is None or 0 <= start + space - mark < 2**30):
            # Any segment's sequence number shows what its sender had sent, even one this capture missed.
            highest[direction] = max(mark or 0, start + space)
    for segment in segments:
        connection = by_transmission[segment.transmission]
        segment.connection = connection.name
        segment.incarnation = connection.incarnation
        segment.rel_seq = (segment.seq - connection.isn.get((segment.src, segment.sport), segment.seq)) % 2**32
        peer_isn = connection.isn.get((segment.dst, segment.dport))
        segment.rel_ack = (segment.ack - peer_isn) % 2**32 if peer_isn is not None and "A" in segment.flags else 0
        segment.retransmission = segment.transmission in retransmitted
    classify(segments)
    return segments, result


def capture_path(run_dir: Path, node: str, iface: str) -> Path:
    return run_dir / "pcaps" / f"{node}-{iface}.pcap"


def load_segments(run_dir: Path, nodes: dict, damage: list[Damage] | None = None) -> tuple[list[Segment], list[Connection]]:
    """``nodes`` is run.json's: node -> {"interfaces": {iface: address}}."""
    segments: list[Segment] = []
    for node, info in nodes.items():
        for iface in info["interfaces"]:
            path = capture_path(run_dir, node, iface)
            if path.exists():
                segments.extend(read_capture(path, node, iface, damage))
    return analyze(segments)


RST_KINDS = {
    "refused": "answers a SYN: nothing listens on that port (RFC 9293 3.10.7.1)",
    "reply": "answers a segment for a connection the sender no longer has, or data after close (RFC 9293 3.5.2)",
    "abort": "the sender aborted its connection: SO_LINGER 0, unread data at close(), or a killed socket (RFC 9293 3.10.5)",
}


@dataclass
class _Direction:
    """What one side has sent so far in one incarnation (the receiver's view of it comes from the other side)."""

    next_rel: int | None = None  # the highest relative seq + length sent (tshark's "nextseq")
    last_ack: int | None = None  # absolute ack of the previous segment with ACK
    window: int | None = None  # the previous segment's raw window field
    window_bytes: int | None = None  # the same, scaled
    wscale: int | None = None
    sent_syn: bool = False


def classify(segments: list[Segment]) -> None:
    """Duplicates, duplicate ACKs, keep-alives, out-of-window segments and the kind of each RST.

    Runs after ``analyze`` numbered transmissions and incarnations. Each transmission is judged
    once, at its first sighting, in time order, and every sighting of it gets the result.

    - A *duplicate* is a later transmission with the same bytes as an earlier one, never seen
      at the capture where the earlier one started: the network made it (a duplicating rule, a
      held packet released), the sender did not send it again.
    - *Duplicate ACK* and *keep-alive* follow Wireshark's TCP analysis, so the two agree.
    - *Out of window*: the receiver's acceptability test (RFC 9293 3.10.7.4) against the last
      ACK and window the receiver sent; judged only when the handshake was seen (window scaling
      is known), and not for retransmissions, which are old by definition.
    """
    firsts: dict[int, Segment] = {}
    points: dict[int, set] = {}
    for segment in segments:
        firsts.setdefault(segment.transmission, segment)
        points.setdefault(segment.transmission, set()).add((segment.node, segment.iface))
    ordered = sorted(firsts.values(), key=lambda s: (s.t, s.transmission))
    originals: dict[tuple, Segment] = {}
    directions: dict[tuple, _Direction] = {}
    handshakes: dict[tuple, set] = {}
    results: dict[int, dict] = {}
    for segment in ordered:
        result: dict = {}
        original = originals.setdefault(segment.key, segment)
        if original is not segment and (original.node, original.iface) not in points[segment.transmission]:
            result["duplicate_of"] = original.transmission
        incarnation = (segment.connection, segment.incarnation)
        fwd = directions.setdefault((incarnation, segment.src, segment.sport), _Direction())
        rev = directions.setdefault((incarnation, segment.dst, segment.dport), _Direction())
        syn, fin, rst = "S" in segment.flags, "F" in segment.flags, "R" in segment.flags
        space = segment.length + syn + fin
        if "duplicate_of" not in result:
            if (segment.length <= 1 and not (syn or fin or rst) and fwd.next_rel is not None
                    and (segment.rel_seq + 1) % 2**32 == fwd.next_rel):
                result["keepalive"] = True
            elif (segment.length == 0 and not (syn or fin or rst) and "A" in segment.flags and segment.window
                  and segment.window == fwd.window and segment.rel_seq == fwd.next_rel and segment.ack == fwd.last_ack):
                result["dup_ack"] = True
            if rst:
                result["rst"] = ("refused" if "A" in segment.flags and not fwd.sent_syn and rev.sent_syn
                                 else "reply" if "A" not in segment.flags else "abort")
        # Whoever made it (its sender, or the network), the receiver judges what arrives.
        if not (syn or (segment.retransmission and "duplicate_of" not in result) or result.get("keepalive")):
            scaled = handshakes.get(incarnation)
            if scaled is not None and len(scaled) == 2 and rev.last_ack is not None and rev.window_bytes is not None:
                result["out_of_window"] = not _acceptable(segment, rev.last_ack, rev.window_bytes)
        if syn:
            fwd.sent_syn = True
            fwd.wscale = segment.wscale
            handshakes.setdefault(incarnation, set()).add((segment.src, segment.sport))
        if "duplicate_of" not in result:
            if space:
                end = (segment.rel_seq + space) % 2**32
                if fwd.next_rel is None or 0 < (end - fwd.next_rel) % 2**32 < 2**31:
                    fwd.next_rel = end
            elif fwd.next_rel is None:
                fwd.next_rel = segment.rel_seq
            if "A" in segment.flags:
                fwd.last_ack = segment.ack
            fwd.window = segment.window
            # RFC 7323 2.2: the window field of a SYN is never scaled; the others are, when both sides offered it.
            both = fwd.wscale is not None and rev.wscale is not None
            fwd.window_bytes = segment.window if syn or not both else segment.window << fwd.wscale
        if result:
            results[segment.transmission] = result
    for segment in segments:
        result = results.get(segment.transmission)
        if result:
            segment.duplicate_of = result.get("duplicate_of")
            if segment.duplicate_of is not None:
                segment.retransmission = False  # the network copied it; its sender did not send it again
            segment.dup_ack = result.get("dup_ack", False)
            segment.keepalive = result.get("keepalive", False)
            segment.out_of_window = result.get("out_of_window", False)
            segment.rst = result.get("rst", "")


def _acceptable(segment: Segment, rcv_nxt: int, rcv_wnd: int) -> bool:
    """RFC 9293 3.10.7.4's four cases, in modular sequence space."""
    start = (segment.seq - rcv_nxt) % 2**32
    length = segment.length + ("F" in segment.flags)
    if length == 0:
        return start == 0 if rcv_wnd == 0 else start < rcv_wnd
    if rcv_wnd == 0:
        return False
    end = (segment.seq + length - 1 - rcv_nxt) % 2**32
    return start < rcv_wnd or end < rcv_wnd
