"""netem-like link impairments in userspace, for kernels without sch_netem.

    python3 -m labctl.agent shaper --queue N (--config JSON | --config-file PATH)
                                   [--stats-file PATH] [--seed S] [--fail-open] [--bypass-mark M]

Two iptables rules (``queue_rules``) hand every packet leaving one interface
to NFQUEUE N, or to N + 32768 while its conntrack entry is still unconfirmed;
this daemon binds both, decides each packet's fate and gives the kernel its
verdict:

- delay (+ jitter, uniform or normal): the verdict is held and issued at the
  due time (one heap, one timer loop on the monotonic clock), so the kernel
  itself still routes the packet and decrements its TTL. With jitter,
  packets may overtake each other, as in netem's time-sorted queue.
- loss: an NF_DROP verdict at once.
- duplicate: NFQUEUE has no clone verdict, so a copy is sent through a raw
  IPv4 socket (IP_HDRINCL) right after the original is released. The copy
  carries SO_MARK = the bypass mark, which the queue rules skip, so it is
  not queued again. As in netem, a packet both duplicated and lost goes out
  once.
- reorder (netem semantics, gap 1): with a delay set, reorder_pct of the
  packets are released at once and overtake the delayed rest.
- corrupt: one random bit after the IP header is flipped and the modified
  packet is handed back with the verdict; the IP header stays valid, so the
  packet is routed and the receiver's transport checksum rejects it, as on
  a real wire.

Conntrack: the kernel confirms a new flow's entry only after POSTROUTING, so
while a flow's first packet is held every later packet of it carries an
unconfirmed entry of its own, and would be dropped on release (insert_failed)
once the first one confirmed the flow: a ping faster than the delay lost its
first few echoes that way. Such packets come on the second queue; when one of
their flow has been let go first, their bytes leave through the raw socket
(which finds the confirmed entry) instead of by verdict. Counted as ``resent``.

Correlation (``*_correlation_pct``) makes consecutive decisions alike while
keeping the configured rate: a two-state chain where P(hit | last hit) =
p + c(1-p) and P(hit | last miss) = p(1-c). (netem's own correlation blends
uniform draws, which also changes the rate it gives; see tc-netem(8).)

Signals: SIGHUP re-reads --config-file (held packets keep their due time);
SIGUSR1 writes the stats file; SIGTERM or SIGINT release every held packet,
write the stats file and exit 0 (printing the stats as the command's JSON
result). The stats file is first written once both queues are bound, so its
appearance means "ready". It holds the counters of ``Stats``, ``held``,
``release_late_ms`` (how late the last 4096 delayed packets left, past their
due time: the daemon's own timing error) and the kernel's counters for both
queues. ``--seed`` makes every decision reproducible for the same packets.
"""

from __future__ import annotations

import argparse
import errno
import gc
import heapq
import json
import math
import os
import random
import select
import signal
import socket
import sys
import time
from array import array
from collections import deque
from dataclasses import asdict, dataclass, fields

from . import nfqueue as nfq
from .system import write_json

# The mark the daemon puts on the copies it sends, and that the queue rule skips ("LC").
BYPASS_MARK = 0x4C43
NEW_QUEUE_OFFSET = 0x8000  # queue N's unconfirmed-conntrack packets come on queue N + this
DEFAULT_LIMIT = 10000
BURST = 64   # datagrams read before the timer and the verdicts get a turn
DISTRIBUTIONS = ("uniform", "normal")


def new_queue_of(queue: int) -> int:
    """The second queue a shaper on ``queue`` binds: packets whose conntrack entry is unconfirmed."""
    if not 0 <= queue < NEW_QUEUE_OFFSET:
        raise ValueError(f"shaper queue numbers are 0..{NEW_QUEUE_OFFSET - 1}, not {queue}")
    return queue + NEW_QUEUE_OFFSET


def queue_rules(interface: str, queue: int, bypass_mark: int = BYPASS_MARK, *, action: str = "-A") -> list[list[str]]:
    """The iptables argvs, in order, that feed packets leaving ``interface`` to the shaper on ``queue``.

    In mangle/POSTROUTING the kernel has routed the packet and decremented its TTL, and the
    verdict only decides when (and whether) it leaves. ``--queue-bypass`` lets packets through
    unshaped while no shaper is bound; the mark match lets the shaper's own copies out.

    Two rules, because conntrack confirms a new flow's entry only after POSTROUTING: while a
    flow's first packet is held, each later packet of the flow gets an unconfirmed entry of
    its own, and the kernel drops it on release (insert_failed) once the first one confirmed
    the flow. Such packets go to the second queue (``new_queue_of(queue)``), where the shaper
    can tell them apart and, when needed, send them through its raw socket instead.

    ``action="-D"`` gives the argvs that remove them; ``"-I"`` is handled so the order still holds.
    """
    if action not in ("-A", "-I", "-D", "-C"):
        raise ValueError(f"action {action!r} is not one of -A, -I, -D, -C")
    head = ["iptables", "-w", "-t", "mangle", action, "POSTROUTING", "-o", interface,
            "-m", "mark", "!", "--mark", hex(bypass_mark)]
    rules = [head + ["-m", "conntrack", "!", "--ctstatus", "CONFIRMED",
                     "-j", "NFQUEUE", "--queue-num", str(new_queue_of(queue)), "--queue-bypass"],
             head + ["-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]]
    return rules[::-1] if action == "-I" else rules


# --- configuration ---------------------------------------------------------------

@dataclass(frozen=True)
class Impairment:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str = "uniform"
    loss_pct: float = 0.0
    loss_correlation_pct: float = 0.0
    duplicate_pct: float = 0.0
    duplicate_correlation_pct: float = 0.0
    reorder_pct: float = 0.0
    reorder_correlation_pct: float = 0.0
    corrupt_pct: float = 0.0
    corrupt_correlation_pct: float = 0.0
    limit: int = DEFAULT_LIMIT   # packets held at once (the kernel queue length), as netem's limit


class ConfigError(ValueError):
    pass


def parse_config(data: object) -> Impairment:
    """Validate a config mapping (JSON object); every key is optional, unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a JSON object, not {type(data).__name__}")
    known = {f.name: f for f in fields(Impairment)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    values: dict[str, object] = {}
    for key, value in data.items():
        if key == "distribution":
            if value not in DISTRIBUTIONS:
                raise ConfigError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, not {value!r}")
            values[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a number, not {value!r}")
        if key == "limit":
            if value != int(value) or not 1 <= value <= 1_000_000:
                raise ConfigError(f"limit must be a whole number of packets in 1..1000000, not {value!r}")
            values[key] = int(value)
        elif key.endswith("_pct"):
            if not 0 <= value <= 100:
                raise ConfigError(f"{key} must be in 0..100, not {value!r}")
            values[key] = float(value)
        else:
            if not 0 <= value <= 3_600_000:
                raise ConfigError(f"{key} must be in 0..3600000 ms, not {value!r}")
            values[key] = float(value)
    imp = Impairment(**values)
    if imp.reorder_pct and not imp.delay_ms:
        raise ConfigError("reorder_pct needs delay_ms: reordered packets are the ones sent without the delay")
    return imp


def read_config(text: str, origin: str) -> Impairment:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{origin}: not JSON: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


# --- per-packet decisions -----------------------------------------------------------

class Chance:
    """Bernoulli(p) with lag-1 correlation c; the long-run rate stays p."""

    __slots__ = ("rng", "after_hit", "after_miss", "last")

    def __init__(self, p: float, correlation: float, rng: random.Random):
        self.rng = rng
        self.after_hit = p + correlation * (1 - p)
        self.after_miss = p * (1 - correlation)
        self.last = False

    def __call__(self) -> bool:
        self.last = self.rng.random() < (self.after_hit if self.last else self.after_miss)
        return self.last


class Fates:
    """Draws each packet's fate, in netem's order: duplicate, loss, corrupt, then delay or reorder."""

    def __init__(self, imp: Impairment, rng: random.Random):
        self.imp = imp
        self.rng = rng

        def chance(pct: float, corr: float) -> Chance | None:
            return Chance(pct / 100, corr / 100, rng) if pct else None

        self.loss = chance(imp.loss_pct, imp.loss_correlation_pct)
        self.duplicate = chance(imp.duplicate_pct, imp.duplicate_correlation_pct)
        self.corrupt = chance(imp.corrupt_pct, imp.corrupt_correlation_pct)
        self.reorder = chance(imp.reorder_pct, imp.reorder_correlation_pct)
        self.delay = imp.delay_ms / 1000
        self.jitter = imp.jitter_ms / 1000
        self.normal = imp.distribution == "normal"
        # Nothing to draw: every packet gets the same delay (the fast path of the daemon).
        self.constant = not (self.loss or self.duplicate or self.corrupt or self.reorder or self.jitter)

    def next(self) -> tuple[bool, float, bool, bool, bool]:
        """(drop, delay in seconds, duplicate, corrupt, reordered) for the next packet."""
        duplicate = self.duplicate() if self.duplicate else False
        if self.loss and self.loss():
            if not duplicate:
                return (True, 0.0, False, False, False)
            duplicate = False  # netem: the loss takes one of the two copies
        corrupt = self.corrupt() if self.corrupt else False
        if self.reorder and self.reorder():
            return (False, 0.0, duplicate, corrupt, True)
        delay = self.delay
        if self.jitter:
            if self.normal:
                delay = self.rng.gauss(delay, self.jitter)
            else:
                delay += (2 * self.rng.random() - 1) * self.jitter
            if delay < 0:
                delay = 0.0
        return (False, delay, duplicate, corrupt, False)


def flip_bit(packet: bytes, rng: random.Random) -> bytes | None:
    """The packet with one random bit after its IP header flipped; None when there is nothing after it."""
    if not packet:
        return None
    version = packet[0] >> 4
    header = (packet[0] & 0x0F) * 4 if version == 4 else 40 if version == 6 else 0
    if header < 20 or len(packet) <= header:
        return None
    data = bytearray(packet)
    data[rng.randrange(header, len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


# --- the daemon ----------------------------------------------------------------------

LATE_MASK = 4095   # the last 4096 releases make the lateness figures
NEW = 1 << 32   # tag bit: the packet came from the unconfirmed-conntrack queue
PID = 0xFFFFFFFF


def flow_key(packet: bytes) -> bytes | None:
    """Enough of a conntrack tuple to tell flows apart: addresses, protocol, ports or ICMP type and id."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    proto = packet[9]
    l4 = packet[ihl:ihl + 8]
    if proto in (6, 17, 33, 132, 136):   # TCP, UDP, DCCP, SCTP, UDP-Lite: ports
        ident = l4[0:4]
    elif proto == 1:                     # ICMP: type and echo id
        ident = l4[0:1] + l4[4:6]
    else:
        ident = b""
    return packet[12:20] + bytes((proto,)) + ident


@dataclass
class Stats:
    seen: int = 0
    delivered: int = 0     # let go after their delay (accepted, or resent), copies not counted
    dropped: int = 0
    duplicated: int = 0    # copies sent
    corrupted: int = 0
    reordered: int = 0     # sent at once past delayed packets
    delayed: int = 0       # held for a delay > 0
    resent: int = 0        # sent through the raw socket to dodge a conntrack clash (see queue_rules)
    overruns: int = 0      # ENOBUFS: packets the kernel could not hand us
    verdict_errors: int = 0
    send_errors: int = 0
    reloads: int = 0
    reload_errors: int = 0


class Shaper:
    """The per-packet engine. Packets are named by a tag: the packet id, with NEW set for the second queue."""

    def __init__(self, queue: nfq.NfQueue, imp: Impairment, rng: random.Random, *, new_queue: int | None = None,
                 config_file: str | None = None, stats_file: str | None = None, bypass_mark: int = BYPASS_MARK,
                 seed: int | None = None, log=None):
        self.queue = queue
        self.new_queue = new_queue
        self.imp = imp
        self.rng = rng
        self.fates = Fates(imp, rng)
        self.config_file = config_file
        self.stats_file = stats_file
        self.bypass_mark = bypass_mark
        self.seed = seed
        self.stats = Stats()
        self.started = time.monotonic()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.heap: list[tuple[float, int]] = []
        self.held_order: deque[int] = deque()   # held main-queue ids in arrival (= id) order, for batch verdicts
        self.gone: set[int] = set()             # held ids released out of that order
        self.mangled: dict[int, bytes] = {}     # tag -> corrupted packet to hand back
        self.copies: dict[int, bytes] = {}      # tag -> packet to duplicate on release
        self.fresh: dict[int, tuple[bytes, bytes]] = {}   # tag -> (flow, packet) of unconfirmed-conntrack packets
        self.fresh_pending: dict[bytes, int] = {}         # flow -> such packets not yet released
        self.fresh_confirmed: set[bytes] = set()          # flows one of them has confirmed since
        self.resend: dict[int, bytes] = {}      # tag -> packet to send through the raw socket instead
        self.sends: list[int] = []              # tags to let go at the next flush, in order
        self.special = False                    # sends hold a tag that needs more than a plain accept
        self.drops: list[int] = []
        self.out_copies: list[bytes] = []
        self.raw: socket.socket | None = None
        self.buf = bytearray(nfq.NfQueue.RECV_SIZE)          # every datagram is read into it
        self.late = array("d", bytes(8 * (LATE_MASK + 1)))   # how late recent releases were, a ring
        self.late_n = 0
        self.stopping = False
        self.want_stats = False
        self.want_reload = False

    # --- signals --------------------------------------------------------------------

    def install_signals(self) -> socket.socket:
        """Handlers only set flags; a wakeup socket breaks the wait so the loop sees them at once."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        self._wake_w = wake_w

        def stop(_signo, _frame):
            self.stopping = True

        def stats(_signo, _frame):
            self.want_stats = True

        def reload(_signo, _frame):
            self.want_reload = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGUSR1, stats)
        signal.signal(signal.SIGHUP, reload)
        return wake_r

    def reload(self) -> None:
        self.want_reload = False
        if not self.config_file:
            self.log("shaper: SIGHUP without --config-file: nothing to re-read")
            return
        try:
            with open(self.config_file) as fh:
                imp = read_config(fh.read(), self.config_file)
            if imp.limit != self.imp.limit:
                for number in self.queue.numbers:
                    self.queue.set_maxlen(imp.limit, number)
            if imp.duplicate_pct:
                self._raw_socket()
        except (OSError, ConfigError) as exc:
            self.stats.reload_errors += 1
            self.log(f"shaper: keeping the current config: {exc}")
            return
        self.imp = imp
        self.fates = Fates(imp, self.rng)
        self.stats.reloads += 1
        self.log(f"shaper: queue {self.queue.number}: config {json.dumps(asdict(imp))}")
        self._take_backlog()   # packets read while the queue length was being set

    # --- stats ----------------------------------------------------------------------

    def snapshot(self) -> dict:
        self.stats.overruns = self.queue.overruns
        self.stats.verdict_errors = self.queue.verdict_errors
        kernel = {str(n): nfq.kernel_counters(n) for n in self.queue.numbers}
        return {"ok": True, "queue": self.queue.number, "new_queue": self.new_queue, "pid": os.getpid(),
                "seed": self.seed, "uptime_s": round(time.monotonic() - self.started, 3), "held": len(self.heap),
                **asdict(self.stats), "release_late_ms": self.lateness(), "config": asdict(self.imp), "kernel": kernel}

    def lateness(self) -> dict:
        """How late the last (up to 4096) delayed packets were released, past their due time."""
        n = min(self.late_n, LATE_MASK + 1)
        if not n:
            return {"n": 0}
        values = sorted(self.late[:n])

        def at(q: float) -> float:
            return round(values[min(n - 1, int(q * n))] * 1000, 3)

        return {"n": n, "p50": at(0.5), "p99": at(0.99), "max": round(values[-1] * 1000, 3)}

    def write_stats(self) -> dict:
        self.want_stats = False
        snap = self.snapshot()
        if self.stats_file:
            write_json(self.stats_file, snap)
        return snap

    # --- the raw socket -----------------------------------------------------------------

    def _raw_socket(self) -> socket.socket:
        if self.raw is None:
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IPPROTO_RAW implies IP_HDRINCL
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.bypass_mark)
            self.raw = raw
        return self.raw

    def _send_raw(self, packet: bytes) -> bool:
        try:
            self._raw_socket().sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
            return True
        except OSError:
            self.stats.send_errors += 1
            return False

    # --- per packet -------------------------------------------------------------------------

    def _arrive(self, buf, start: int, end: int, tag: int, now: float, fates: Fates) -> None:
        """A packet's fate, the general way (the run loop inlines the constant-delay case)."""
        stats = self.stats
        stats.seen += 1
        if fates.constant:
            drop, delay, duplicate, corrupt, reordered = False, fates.delay, False, False, False
        else:
            drop, delay, duplicate, corrupt, reordered = fates.next()
        if drop:
            stats.dropped += 1
            self.drops.append(tag)
            return
        if duplicate or corrupt or tag & NEW:
            lo, hi, truncated = nfq.payload_bounds(buf, start, end)
            # A truncated copy can be neither handed back nor sent again whole.
            if hi > lo and not truncated:
                packet = bytes(buf[lo:hi])
                if duplicate and packet[0] >> 4 == 4:
                    self.copies[tag] = packet
                if corrupt:
                    changed = flip_bit(packet, self.rng)
                    if changed is not None:
                        self.mangled[tag] = changed
                        stats.corrupted += 1
                if tag & NEW and (flow := flow_key(packet)) is not None:
                    self.fresh[tag] = (flow, packet)
                    self.fresh_pending[flow] = self.fresh_pending.get(flow, 0) + 1
        if reordered:
            stats.reordered += 1
        if delay > 0:
            stats.delayed += 1
            heapq.heappush(self.heap, (now + delay, tag))
            if not tag & NEW:
                self.held_order.append(tag)
        else:
            self._let_go(tag, held=False)

    def _let_go(self, tag: int, held: bool = True) -> None:
        """Queue a packet's release for the next flush."""
        if held and not tag & NEW:
            order = self.held_order
            if order and order[0] == tag:
                order.popleft()
                gone = self.gone
                while order and order[0] in gone:
                    gone.remove(order.popleft())
            else:
                self.gone.add(tag)
        if tag & NEW:
            self.special = True
            fresh = self.fresh.pop(tag, None)
            if fresh is not None:
                # Its conntrack entry was unconfirmed when it was queued. If another packet of the
                # flow has confirmed one since, the kernel would drop this one at confirmation
                # (insert_failed): send its bytes through the raw socket instead, which finds
                # the confirmed entry.
                flow, packet = fresh
                if flow in self.fresh_confirmed:
                    self.resend[tag] = self.mangled.pop(tag, packet)
                else:
                    self.fresh_confirmed.add(flow)
                left = self.fresh_pending[flow] - 1
                if left:
                    self.fresh_pending[flow] = left
                else:
                    del self.fresh_pending[flow]
                    self.fresh_confirmed.discard(flow)
        elif self.mangled and tag in self.mangled:
            self.special = True
        self.sends.append(tag)
        if self.copies:
            copy = self.copies.pop(tag, None)
            if copy is not None:
                self.out_copies.append(copy)

    def _flush(self) -> None:
        q = self.queue
        main, new = q.number, self.new_queue
        for tag in self.drops:
            q.verdict(tag & PID, nfq.NF_DROP, queue=new if tag & NEW else main)
        self.drops.clear()
        sends = self.sends
        if sends:
            self.stats.delivered += len(sends)
            if not self.special:
                self._accept_plain(sends)
            else:
                # In release order: a resent packet must leave after the accepts before it.
                mangled, resend = self.mangled, self.resend
                for tag in sends:
                    number = new if tag & NEW else main
                    packet = resend.pop(tag, None) if resend else None
                    if packet is None:
                        q.verdict(tag & PID, nfq.NF_ACCEPT, payload=mangled.pop(tag, None) if mangled else None,
                                  queue=number)
                    else:
                        q.verdict(tag & PID, nfq.NF_DROP, queue=number)
                        q.flush()
                        if self._send_raw(packet):
                            self.stats.resent += 1
                self.special = False
            sends.clear()
        q.flush()
        if self.out_copies:
            for packet in self.out_copies:
                if self._send_raw(packet):
                    self.stats.duplicated += 1
            self.out_copies.clear()

    def _accept_plain(self, sends: list[int]) -> None:
        q = self.queue
        top = sends[-1]
        held = self.held_order
        # One batch verdict accepts every queued id up to top: only right when all we still
        # hold came later, and when these go in id order anyway.
        batch = not held or nfq.id_after(held[0], top)
        if batch:
            after = nfq.id_after
            prev = sends[0]
            for pid in sends[1:]:
                if not after(pid, prev):
                    batch = False
                    break
                prev = pid
        if batch:
            q.verdict_batch(top)
        else:
            for pid in sends:
                q.verdict(pid)

    # --- the loop --------------------------------------------------------------------------

    def run(self, wake: socket.socket) -> None:
        q = self.queue
        sock = q.sock
        buf = self.buf
        recv_into = sock.recv_into
        heap = self.heap
        heappush = heapq.heappush
        monotonic = time.monotonic
        unpack_head = nfq.NLMSGHDR.unpack_from
        packet_id = nfq.packet_id
        packet_type = nfq.msg_type(nfq.NFQNL_MSG_PACKET)
        main_hi, main_lo = q.number >> 8, q.number & 0xFF
        stats = self.stats
        sends, drops, held_order = self.sends, self.drops, self.held_order
        wake_fd = wake.fileno()
        waiting = [sock.fileno(), wake_fd]
        # The loop makes no reference cycles; a full collection over thousands of held
        # packets would stall releases for milliseconds.
        gc.freeze()
        gc.disable()
        drained = True

        self._take_backlog()   # packets that came while we were binding
        while not self.stopping:
            if self.want_reload:
                self.reload()
            if self.want_stats:
                self.write_stats()
            if drained:
                timeout = heap[0][0] - monotonic() if heap else None
                if timeout is None or timeout > 0:
                    ready, _, _ = select.select(waiting, [], [], timeout)
                    if wake_fd in ready:
                        try:
                            wake.recv(512)
                        except BlockingIOError:
                            pass
                        continue
            drained = False
            fates = self.fates
            for _ in range(BURST):
                try:
                    n = recv_into(buf)
                except BlockingIOError:
                    drained = True
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        q.overruns += 1
                        continue
                    raise
                now = monotonic()
                length, kind = unpack_head(buf, 0)[:2]
                if not fates.constant or kind != packet_type or length != n or buf[18] != main_hi or buf[19] != main_lo:
                    self._take(buf, n, now)
                    continue
                # The common case, inline: one main-queue packet, every packet delayed alike.
                stats.seen += 1
                pid = packet_id(buf, 0)
                delay = fates.delay
                if delay:
                    stats.delayed += 1
                    heappush(heap, (now + delay, pid))
                    held_order.append(pid)
                else:
                    sends.append(pid)
            now = monotonic()
            if heap and heap[0][0] <= now:
                self.release_due(now)
            if sends or drops:
                self._flush()
        self.release_all()

    def release_due(self, now: float) -> None:
        """Let go every packet due by ``now`` (the next flush gives the verdicts)."""
        heap, late, n = self.heap, self.late, self.late_n
        heappop = heapq.heappop
        while heap and heap[0][0] <= now:
            due, tag = heappop(heap)
            late[n & LATE_MASK] = now - due
            n += 1
            self._let_go(tag)
        self.late_n = n

    def release_all(self) -> None:
        """Stopping: every held packet leaves now, in due order."""
        while self.heap:
            self._let_go(heapq.heappop(self.heap)[1])
        self._flush()

    def _take_backlog(self) -> None:
        """Packets NfQueue read while it waited for a request's answer."""
        backlog = self.queue._backlog
        while backlog:
            data = backlog.pop(0)
            self.buf[:len(data)] = data
            self._take(self.buf, len(data), time.monotonic())

    def _take(self, buf, n: int, now: float) -> None:
        """Every message of a datagram, the general way."""
        packet_type = nfq.msg_type(nfq.NFQNL_MSG_PACKET)
        for kind, _flags, start, end in nfq.messages(buf, n):
            if kind == packet_type:
                number = nfq.packet_queue(buf, start)
                tag = nfq.packet_id(buf, start)
                if number == self.new_queue:
                    tag |= NEW
                elif number != self.queue.number:
                    self.queue.verdict(tag, nfq.NF_ACCEPT, queue=number)  # not ours to shape
                    continue
                self._arrive(buf, start, end, tag, now, self.fates)
            elif kind == nfq.NLMSG_ERROR:
                self.queue.note_error(buf, start)

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
        self.queue.close()


# --- command line ---------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m labctl.agent shaper",
                                     description="netem-like impairments on one NFQUEUE (userspace fallback).")
    parser.add_argument("--queue", type=int, required=True,
                        help=f"NFQUEUE number (0..{NEW_QUEUE_OFFSET - 1}); queue+{NEW_QUEUE_OFFSET} is bound too")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="impairment config as a JSON object")
    source.add_argument("--config-file", help="file holding the JSON config; re-read on SIGHUP")
    parser.add_argument("--stats-file", help="where to write stats JSON (when ready, on SIGUSR1 and on exit)")
    parser.add_argument("--seed", type=int, help="seed for every random decision (reproducible runs)")
    parser.add_argument("--fail-open", action="store_true",
                        help="when the queue is full, pass packets unshaped instead of dropping them (netem drops)")
    parser.add_argument("--bypass-mark", type=lambda s: int(s, 0), default=BYPASS_MARK,
                        help=f"SO_MARK of the packets the shaper sends itself; the queue rules skip it (default {BYPASS_MARK:#x})")
    return parser.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    try:
        if args.config_file:
            with open(args.config_file) as fh:
                imp = read_config(fh.read(), args.config_file)
        else:
            imp = read_config(args.config, "--config")
        new_queue = new_queue_of(args.queue)
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}
    try:
        queue = nfq.NfQueue(args.queue, maxlen=imp.limit, fail_open=args.fail_open)
    except OSError as exc:
        return {"ok": False, "error": str(exc)}
    shaper = Shaper(queue, imp, random.Random(args.seed), new_queue=new_queue, config_file=args.config_file,
                    stats_file=args.stats_file, bypass_mark=args.bypass_mark, seed=args.seed)
    try:
        queue.bind(new_queue, maxlen=imp.limit, fail_open=args.fail_open)
        # Copies and resent packets go out through it: fail now, not at the first one, without NET_RAW/NET_ADMIN.
        shaper._raw_socket()
    except OSError as exc:
        shaper.close()
        return {"ok": False, "error": str(exc)}
    wake = shaper.install_signals()
    try:
        shaper.log(f"shaper: queues {args.queue}+{new_queue} bound (portid {queue.portid}): "
                   f"config {json.dumps(asdict(imp))}")
        shaper.write_stats()
        shaper.run(wake)
        return shaper.write_stats()
    finally:
        shaper.close()
