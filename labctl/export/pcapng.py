"""A run's captures as one pcapng file that Wireshark opens with interface names.

The run directory keeps one classic pcap per node interface, ``pcaps/NODE-IFACE.pcap``
(what tcpdump writes, what analysis reads). Classic pcap has no room for an interface's
name, so Wireshark shows each file as one anonymous interface. Here every capture becomes
an Interface Description Block named ``NODE:IFACE``, described by its address and link
(from ``run.json``), with the capture's own link type and timestamp resolution; the packets
of all of them are merged in time order (every node shares the host clock) as Enhanced
Packet Blocks. Reads the run directory only; writes nothing into it.

pcapng: draft-ietf-opsawg-pcapng (SHB 0x0A0D0D0A, IDB 1, EPB 6; if_name 2,
if_description 3, if_tsresol 9, shb_userappl 4).
"""

from __future__ import annotations

import heapq
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from ..analyze.segments import pcap_records


@dataclass(frozen=True)
class Capture:
    path: Path
    node: str
    interface: str
    description: str


def captures(run_dir: Path) -> list[Capture]:
    """The run's captures with the node and interface each belongs to.

    A file is named NODE-IFACE.pcap, and both names may hold '-': run.json's nodes and
    their interfaces say which split is meant."""
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        run = {}
    links = run.get("links") or {}
    known: dict[str, Capture] = {}
    for node, info in (run.get("nodes") or {}).items():
        for iface, address in ((info or {}).get("interfaces") or {}).items():
            path = run_dir / "pcaps" / f"{node}-{iface}.pcap"
            on = f" on link {iface}" if iface in links else ""  # a node's interface is named after its link
            known[path.name] = Capture(path, node, iface, f"{node} {iface} {address}{on}")
    result = []
    for path in sorted((run_dir / "pcaps").glob("*.pcap")):
        if path.name in known:
            result.append(known[path.name])
        else:
            node, _, iface = path.stem.partition("-")
            result.append(Capture(path, node, iface or "?", f"{path.stem} (not in run.json)"))
    return result


def _records(capture: Capture, index: int, damage: list) -> tuple[int, int, Iterator[tuple[int, int, int, bytes]]]:
    """(link type, units per second, records as (timestamp in units, interface, original length, data)).

    A damaged capture gives what is whole of it (analysis reads it the same way), and says what is not in ``damage``."""
    found = pcap_records(capture.path, damage)
    units = found.per_second
    return found.datalink, units, ((seconds * units + fraction, index, original, data)
                                   for seconds, fraction, original, data in found.records)


def _block(kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


END_OF_OPTIONS = b"\0\0\0\0"


def write(run_dir: Path, target: BinaryIO, *, application: str = "labctl") -> dict:
    """Write the merged pcapng to ``target``; returns what it holds (interfaces, packets)."""
    found = captures(run_dir)
    target.write(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
                        + _option(4, application.encode()) + END_OF_OPTIONS))
    streams, units, damage = [], [], []
    for index, capture in enumerate(found):
        linktype, per_second, records = _records(capture, index, damage)
        # if_tsresol: 6 for microseconds (the default), 9 for tcpdump's nanoseconds.
        resolution = 9 if per_second == 10**9 else 6
        target.write(_block(1, struct.pack("<HHI", linktype, 0, 0)
                            + _option(2, f"{capture.node}:{capture.interface}".encode())
                            + _option(3, capture.description.encode())
                            + _option(9, bytes([resolution])) + END_OF_OPTIONS))
        units.append(per_second)
        streams.append(records)
    packets = 0
    # Merge in time order: compare in nanoseconds, whatever each file's resolution.
    keyed = [((t * (10**9 // units[i]), i, length, data) for t, i, length, data in stream) for stream in streams]
    for stamp_ns, index, original, data in heapq.merge(*keyed, key=lambda r: r[0]):
        stamp = stamp_ns // (10**9 // units[index])
        target.write(_block(6, struct.pack("<IIIII", index, stamp >> 32, stamp & 0xFFFFFFFF, len(data), original) + data))
        packets += 1
    return {"interfaces": [f"{c.node}:{c.interface}" for c in found], "packets": packets,
            "damage": [d.text for d in damage]}
