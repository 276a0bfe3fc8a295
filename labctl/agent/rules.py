"""Deterministic packet rules in a node: drop, delay, duplicate, hold, release.

A scenario step like "drop the client's final ACK" must hit exactly that
packet, every run: rules match by direction, TCP flags, ports, relative
sequence number, payload and context (``after`` another packet was seen),
and act on the n-th match for ``count`` packets. No probabilities.

Only the flows the scenario's rules name go through userspace: each rule
(and its ``after`` context) names a flow by addresses and ports, resolved on
the host before the run (:func:`flows`), and the node jumps to the one
NFQUEUE only for TCP packets of those flows, in both directions (the engine
must see both SYNs of a connection to number its sequence space), entering
the node (mangle PREROUTING: forwarded or delivered) or leaving it from a
local socket (mangle OUTPUT). A rule that names no address and no port
names every TCP packet. Every other packet stays in the kernel, untouched
and undelayed, however busy the node's CPUs are. A held packet is either dropped and kept
(``keep: packet``) or let through and copied (``keep: copy``); releasing
sends the bytes again from a raw socket, optionally rewritten into the
newest connection on the same 4-tuple (seq/ack shifted by the difference
of the ISNs, timestamps option replaced by NOPs) with the TCP checksum
recomputed. Everything done is written to rules.jsonl with the packet; what was queued
(each jump's packet counter, the 4-tuples the engine saw) to queue.json.
"""

from __future__ import annotations

import heapq
import json
import select
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from . import nfqueue as nfq
from . import tcp
from .system import write_json

QUEUE_CHAIN = "LABCTL_RULES"
# Copies and releases we send ourselves carry this mark, so they are not queued again.
BYPASS_MARK = 0x4C52


def flows(spec: dict) -> list[dict]:
    """The flows a rule spec names (its own match and its ``after`` context's).

    A flow is ``{"src": [addresses] | None, "dst": [...] | None, "sport": port | None,
    "dport": port | None}``, None meaning any; ``from``/``to`` are the addresses they
    stand for (resolved on the host), port 0 is any port.
    """
    named = []
    for match in (spec, spec.get("after")):
        if not match:
            continue
        flow = {"src": match.get("from") or None, "dst": match.get("to") or None,
                "sport": match.get("sport") or None, "dport": match.get("dport") or None}
        if flow not in named:
            named.append(flow)
    return named


def jump_matches(flow: dict) -> list[tuple[str, ...]]:
    """iptables match arguments for both directions of a flow: one tuple per address pair."""
    def one_way(sources, targets, sport, dport) -> list[tuple[str, ...]]:
        result = []
        for src in sources or [None]:
            for dst in targets or [None]:
                args = ["-p", "tcp"]
                args += ["-s", f"{src}/32"] if src else []
                args += ["-d", f"{dst}/32"] if dst else []
                args += ["--sport", str(sport)] if sport else []
                args += ["--dport", str(dport)] if dport else []
                result.append(tuple(args))
        return result

    both = one_way(flow.get("src"), flow.get("dst"), flow.get("sport"), flow.get("dport"))
    both += one_way(flow.get("dst"), flow.get("src"), flow.get("dport"), flow.get("sport"))
    return list(dict.fromkeys(both))


def summary(p: tcp.Header, tracker: "Connections | None" = None) -> dict:
    record = {"src": f"{p.src}:{p.sport}", "dst": f"{p.dst}:{p.dport}", "flags": p.flags, "seq": p.seq, "ack": p.ack, "len": p.length}
    if tracker is not None:
        record.update(tracker.relative(p))
    return record


def tcp_checksum(packet: bytearray, ihl: int) -> int:
    total_len = struct.unpack_from("!H", packet, 2)[0]
    segment = bytes(packet[ihl:total_len])
    pseudo = packet[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment))
    data = pseudo + segment + (b"\0" if len(segment) % 2 else b"")
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def rewrite(data: bytes, *, seq_delta: int = 0, ack_delta: int = 0, strip_timestamps: bool = False) -> bytes:
    """A copy of a packet with seq/ack moved and/or timestamps removed, TCP checksum fixed."""
    packet = bytearray(data)
    ihl = (packet[0] & 0x0F) * 4
    seq, ack = struct.unpack_from("!II", packet, ihl + 4)
    struct.pack_into("!II", packet, ihl + 4, (seq + seq_delta) % 2**32, (ack + ack_delta) % 2**32)
    if strip_timestamps:
        doff = (packet[ihl + 12] >> 4) * 4
        for kind, at, size in list(tcp.options(packet, ihl + 20, ihl + doff)):
            if kind == tcp.OPT_TIMESTAMPS:  # NOPs keep the header length and every other option in place
                packet[at:at + size] = b"\x01" * size
    struct.pack_into("!H", packet, ihl + 16, 0)
    struct.pack_into("!H", packet, ihl + 16, tcp_checksum(packet, ihl))
    return bytes(packet)


class Connections:
    """ISNs per 4-tuple incarnation, learnt from the SYNs that pass (see tcp.Incarnations)."""

    def __init__(self) -> None:
        self.incarnations = tcp.Incarnations()

    def see(self, p: tcp.Header) -> None:
        self.incarnations.see(p.src, p.sport, p.dst, p.dport, p.flags, p.seq)

    def incarnation_of(self, p: tcp.Header) -> tcp.Incarnation | None:
        return self.incarnations.by_sequence(p.src, p.sport, p.dst, p.dport, p.seq)

    def relative(self, p: tcp.Header) -> dict:
        found = self.incarnation_of(p)
        if found is None:
            return {}
        rel_seq, rel_ack = found.relative(p.src, p.sport, p.dst, p.dport, p.flags, p.seq, p.ack)
        result = {"incarnation": found.index}
        if rel_seq is not None:
            result["rel_seq"] = rel_seq
        if rel_ack is not None:
            result["rel_ack"] = rel_ack
        return result

    def newest(self, p: tcp.Header) -> tcp.Incarnation | None:
        return self.incarnations.newest(p.src, p.sport, p.dst, p.dport)


def matches(spec: dict, p: tcp.Header, tracker: Connections) -> bool:
    def relative() -> tuple[int | None, int | None]:
        numbers = tracker.relative(p)
        return numbers.get("rel_seq"), numbers.get("rel_ack")

    return tcp.matches(spec, p, sources=spec.get("from") or None, targets=spec.get("to") or None, relative=relative)


class Rule:
    def __init__(self, name: str, spec: dict):
        self.name = name
        self.spec = spec
        self.action = spec["action"]
        self.armed = spec.get("after") is None  # an `after` context arms the rule when it passes
        self.matched = 0
        self.acted = 0
        self.held: list[bytes] = []

    def wants(self, p: tcp.Header, tracker: Connections) -> bool:
        if not self.armed or not matches(self.spec, p, tracker):
            return False
        self.matched += 1
        count = self.spec.get("count", 1)
        if self.matched < self.spec.get("nth", 1) or (count and self.acted >= count):
            return False
        self.acted += 1
        return True


class RuleEngine(threading.Thread):
    def __init__(self, log_path: Path, node: str, queue: int, named_flows: list[dict] | None = None,
                 queue_path: Path | None = None):
        super().__init__(daemon=True, name="rules")
        self.log = open(log_path, "a", buffering=1)
        self.queue_path = queue_path
        self.node = node
        self.queue_number = queue
        self.rules: dict[str, Rule] = {}
        self.tracker = Connections()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.stopping = threading.Event()
        self.delayed: list[tuple[float, int, int]] = []  # (due, seq, packet id)
        self.jumps: list[tuple[str, ...]] = []  # the match of each jump installed, in both chains
        self.queued = 0  # packets this engine was given
        self.seen: set[tuple[str, int, str, int]] = set()
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, BYPASS_MARK)
        self.queue = nfq.NfQueue(queue, fail_open=True)
        self._iptables("-N", QUEUE_CHAIN, check=False)
        self._iptables("-F", QUEUE_CHAIN)
        self._iptables("-A", QUEUE_CHAIN, "-m", "mark", "--mark", hex(BYPASS_MARK), "-j", "RETURN")
        self._iptables("-A", QUEUE_CHAIN, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass")
        for flow in named_flows or []:
            self.divert(flow)

    def divert(self, flow: dict) -> None:
        """Send a flow's packets (both directions) to this engine, if they are not sent already."""
        for match in jump_matches(flow):
            if match in self.jumps or ("-p", "tcp") in self.jumps:
                continue
            for chain in ("PREROUTING", "OUTPUT"):
                self._iptables("-I", chain, "1", *match, "-j", QUEUE_CHAIN)
            self.jumps.append(match)

    def jump_counters(self) -> list[dict]:
        """Each installed jump with the packets it sent to the queue, per chain (iptables -S -v)."""
        counted = []
        for chain in ("PREROUTING", "OUTPUT"):
            proc = subprocess.run(["iptables", "-w", "-t", "mangle", "-S", chain, "-v"], capture_output=True, text=True)
            for line in proc.stdout.splitlines():
                words = line.split()
                if QUEUE_CHAIN not in words or "-c" not in words:
                    continue
                at = words.index("-c")
                packets = int(words[at + 1])
                del words[at:at + 3]
                match = [w for w in words[2:] if w not in ("-j", QUEUE_CHAIN)]
                counted.append({"chain": chain, "match": " ".join(match), "packets": packets})
        return counted

    def _write_queue_record(self, counted: list[dict]) -> None:
        if self.queue_path is None:
            return
        record = {"node": self.node, "jumps": counted, "queued": self.queued,
                  "seen": [f"{src}:{sport}>{dst}:{dport}" for src, sport, dst, dport in sorted(self.seen)]}
        write_json(self.queue_path, record)

    @staticmethod
    def _iptables(*args: str, check: bool = True) -> None:
        proc = subprocess.run(["iptables", "-w", "-t", "mangle", *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(args)}: {proc.stderr.strip()}")

    def record(self, rule: str, action: str, packet: dict, **extra) -> None:
        self.log.write(json.dumps({"t": time.time(), "node": self.node, "rule": rule, "action": action, "packet": packet, **extra}) + "\n")

    # --- the packet loop ------------------------------------------------------------

    def run(self) -> None:
        buffer = bytearray(nfq.NfQueue.RECV_SIZE)
        sequence = 0
        while True:
            with self.lock:
                wait = max(0.0, self.delayed[0][0] - time.monotonic()) if self.delayed else 0.05
            stopping = self.stopping.is_set()  # the jumps are gone: what is queued now is the last
            ready, _, _ = select.select([self.queue.fileno()], [], [], 0 if stopping else min(wait, 0.05))
            if stopping and not ready:
                return
            with self.lock:
                now = time.monotonic()
                while self.delayed and self.delayed[0][0] <= now:
                    _, _, packet_id = heapq.heappop(self.delayed)
                    self.queue.verdict(packet_id, nfq.NF_ACCEPT)
                if ready:
                    for packet in self.queue.packets(buffer):
                        sequence += 1
                        self._decide(packet, sequence)
                self.queue.flush()
                self.changed.notify_all()

    def _decide(self, packet, sequence: int) -> None:
        self.queued += 1
        p = tcp.parse(packet.payload)
        if p is None:  # not a whole IPv4/TCP packet: nothing a rule could name
            self.queue.verdict(packet.id, nfq.NF_ACCEPT)
            return
        self.seen.add((p.src, p.sport, p.dst, p.dport))
        self.tracker.see(p)
        verdict, acted = nfq.NF_ACCEPT, False
        for rule in list(self.rules.values()):
            if acted and rule.action != "watch":
                continue
            if not rule.wants(p, self.tracker):
                continue
            described = summary(p, self.tracker)
            if rule.action == "watch":
                self.record(rule.name, "watch", described)
                continue
            acted = True
            if rule.action == "drop":
                verdict = nfq.NF_DROP
            elif rule.action == "delay":
                verdict = None
                heapq.heappush(self.delayed, (time.monotonic() + rule.spec["delay"], sequence, packet.id))
            elif rule.action == "duplicate":
                self._send(p.buf)
            elif rule.action == "hold":
                rule.held.append(p.buf)
                if rule.spec.get("keep", "packet") == "packet":
                    verdict = nfq.NF_DROP
            self.record(rule.name, rule.action, described, **({"delay": rule.spec["delay"]} if rule.action == "delay" else {}))
        # Arm context rules after deciding, so the packet that arms a rule is not its own target.
        for rule in self.rules.values():
            after = rule.spec.get("after")
            if not rule.armed and after and matches(after, p, self.tracker):
                rule.armed = True
                self.record(rule.name, "armed", summary(p, self.tracker))
        if verdict is not None:
            self.queue.verdict(packet.id, verdict)

    def _send(self, data: bytes) -> None:
        self.raw.sendto(data, (socket.inet_ntoa(data[16:20]), 0))

    # --- commands from the actor ------------------------------------------------------

    def add(self, name: str, spec: dict) -> dict:
        if spec.get("action") == "delay" and not spec.get("delay"):
            raise ValueError("a delay rule needs a delay")
        # Normally diverted since the actor started (the run passes every rule's flows then);
        # a flow added only now is numbered from the packets seen from now on.
        for flow in flows(spec):
            self.divert(flow)
        with self.lock:
            self.rules[name] = Rule(name, spec)
        return {"rule": name, "active": len(self.rules)}

    def remove(self, name: str) -> dict:
        with self.lock:
            rule = self.rules.pop(name, None)
        return {"removed": rule is not None, "acted": rule.acted if rule else 0}

    def release(self, name: str, how: dict, copy: bool) -> dict:
        with self.lock:
            rule = self.rules.get(name)
            if rule is None or not rule.held:
                raise ValueError(f"rule {name} holds no packet")
            packets = list(rule.held)
            if not copy:
                rule.held.clear()
            sent = []
            for data in packets:
                original = tcp.parse(data)
                seq_delta = ack_delta = 0
                shift = how.get("seq")
                if shift == "shift":
                    old = self.tracker.incarnation_of(original)
                    new = self.tracker.newest(original)
                    if old is None or new is None:
                        raise ValueError("no connection on this 4-tuple was seen, so there is nothing to shift into")
                    mine, theirs = (original.src, original.sport), (original.dst, original.dport)
                    seq_delta = new.isn.get(mine, 0) - old.isn.get(mine, 0)
                    ack_delta = new.isn.get(theirs, 0) - old.isn.get(theirs, 0)
                elif isinstance(shift, int):
                    seq_delta = shift
                out = rewrite(data, seq_delta=seq_delta, ack_delta=ack_delta, strip_timestamps=bool(how.get("strip_timestamps")))
                self._send(out)
                packet = tcp.parse(out)
                described = summary(packet, self.tracker)
                self.record(name, "release", described, original=summary(original), rewritten=out != data)
                sent.append(described)
            self.changed.notify_all()
        return {"released": len(sent), "packets": sent}

    def wait(self, name: str, count: int, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                rule = self.rules.get(name)
                if rule is None:
                    raise ValueError(f"no rule named {name}")
                if rule.acted >= count:
                    return {"acted": rule.acted}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"rule {name} acted {rule.acted} time(s), not {count}, within {timeout} s")
                self.changed.wait(left)

    def stop(self) -> None:
        if self.stopping.is_set():  # the actor stops it on `stop` and again as it exits
            return
        # No packet is queued once the jumps are gone; the loop then decides what is still in
        # the queue (closing it would make the kernel drop those) before it ends.
        counted = self.jump_counters()
        for match in self.jumps:
            for chain in ("PREROUTING", "OUTPUT"):
                self._iptables("-D", chain, *match, "-j", QUEUE_CHAIN, check=False)
        self.stopping.set()
        self.join(timeout=2)
        with self.lock:
            for _, _, packet_id in self.delayed:
                self.queue.verdict(packet_id, nfq.NF_ACCEPT)
            self.delayed.clear()
        self._write_queue_record(counted)
        self._iptables("-F", QUEUE_CHAIN, check=False)
        self._iptables("-X", QUEUE_CHAIN, check=False)
        self.queue.close()
        self.raw.close()
        self.log.close()
