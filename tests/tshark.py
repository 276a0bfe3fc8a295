"""An independent analyzer for the same captures: Wireshark's TCP analysis, through
tshark (Debian's package), set beside labctl's classification of each capture.

Both look at one capture file at a time here (tshark cannot do otherwise), so
labctl's analysis runs on that capture alone too. Each packet is named by what
it carries plus its occurrence in the file, so the two can be matched exactly.

Two known, intended differences are left out of the comparison:
- a segment Wireshark calls *out-of-order* (one behind the highest sequence
  number that comes within its reordering threshold, 3 ms): a capture alone cannot
  tell a fast retransmission from a reordered segment; labctl calls it a
  retransmission when it repeats sequence space its sender had used;
- a segment from before its incarnation's ISN (an old duplicate of an earlier
  connection on the same 4-tuple): Wireshark compares sequence numbers only and
  calls it a retransmission; labctl calls it out of window.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from labctl.analyze.segments import analyze, read_capture

FIELDS = ("ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags", "ip.id", "tcp.len",
          "tcp.analysis.retransmission", "tcp.analysis.fast_retransmission", "tcp.analysis.spurious_retransmission",
          "tcp.analysis.out_of_order", "tcp.analysis.duplicate_ack", "tcp.flags.reset")
LETTERS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}


def available() -> bool:
    return shutil.which("tshark") is not None


@dataclass
class Verdicts:
    """Per packet of one capture: which ones each analyzer calls a retransmission, a duplicate ACK, a reset."""

    packets: set
    retransmissions: set
    duplicate_acks: set
    resets: set
    excluded: set  # left out of the comparison (see the module's docstring)


def wireshark(path: Path) -> Verdicts:
    argv = ["tshark", "-n", "-r", str(path), "-Y", "tcp", "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"]
    for name in FIELDS:
        argv += ["-e", name]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    seen: Counter = Counter()
    result = Verdicts(set(), set(), set(), set(), set())
    for line in out.splitlines():
        v = line.split("|")
        key = (v[0], int(v[1]), v[2], int(v[3]), int(v[4]), int(v[5]), int(v[6], 16) & 0xFF, int(v[7], 16), int(v[8]))
        seen[key] += 1
        packet = key + (seen[key],)
        result.packets.add(packet)
        if v[9] or v[10] or v[11]:
            result.retransmissions.add(packet)
        if v[12]:
            result.excluded.add(packet)
        if v[13]:
            result.duplicate_acks.add(packet)
        if v[14] in ("1", "True"):
            result.resets.add(packet)
    return result


def labctl(path: Path) -> Verdicts:
    node, _, iface = path.stem.partition("-")
    segments, _ = analyze(read_capture(path, node, iface))
    seen: Counter = Counter()
    result = Verdicts(set(), set(), set(), set(), set())
    for s in sorted(segments, key=lambda s: s.t):
        bits = sum(bit for letter, bit in LETTERS.items() if letter in s.flags)
        key = (s.src, s.sport, s.dst, s.dport, s.seq, s.ack, bits, s.ip_id, s.length)
        seen[key] += 1
        packet = key + (seen[key],)
        result.packets.add(packet)
        if s.retransmission:
            result.retransmissions.add(packet)
        if s.dup_ack:
            result.duplicate_acks.add(packet)
        if "R" in s.flags:
            result.resets.add(packet)
        if s.out_of_window and s.rel_seq >= 2**31:
            result.excluded.add(packet)  # from before the ISN: an old duplicate
    return result


def compare(path: Path) -> dict[str, tuple[set, set]]:
    """What each analyzer says about one capture: {what: (wireshark's packets, labctl's packets)}, exclusions removed."""
    theirs, ours = wireshark(path), labctl(path)
    assert theirs.packets == ours.packets, f"{path}: the two read different packets: {theirs.packets ^ ours.packets}"
    excluded = theirs.excluded | ours.excluded
    return {what: (getattr(theirs, what) - excluded, getattr(ours, what) - excluded)
            for what in ("retransmissions", "duplicate_acks", "resets")}
