"""netem-like link impairments in userspace, for kernels without sch_netem.

    python3 -m labctl.agent shaper --queue N (--config JSON | --config-file PATH)
                                   [--stats-file PATH] [--seed S] [--fail-open] [--bypass-mark M]

An iptables rule (see ``queue_rule``) hands every packet leaving one
interface to NFQUEUE N; this daemon decides each packet's fate and gives
the kernel its verdict:

- delay: the verdict is held and issued at the due time (one heap, one
  timer loop on the monotonic clock), so the kernel itself still routes the
  packet and decrements its TTL. With jitter, packets may overtake each
  other, as in netem's time-sorted queue.
- loss: an NF_DROP verdict at once.
- duplicate: NFQUEUE has no clone verdict, so a copy is sent through a raw
  IPv4 socket (IP_HDRINCL) right after the original is released. The copy
  carries SO_MARK = the bypass mark, which the queue rule skips, so it is
  not queued again. As in netem, a packet both duplicated and lost goes out
  once.
- reorder (netem semantics, gap 1): with a delay set, reorder_pct of the
  packets are released at once and overtake the delayed rest.
- corrupt: one random bit after the IP header is flipped and the modified
  packet is handed back with the verdict; the IP header stays valid, so the
  packet is routed and the receiver's transport checksum rejects it, as on
  a real wire.

Correlation (``*_correlation_pct``) makes consecutive decisions alike while
keeping the configured rate: a two-state chain where P(hit | last hit) =
p + c(1-p) and P(hit | last miss) = p(1-c). (netem's own correlation blends
uniform draws, which also changes the rate it gives; see tc-netem(8).)

Signals: SIGHUP re-reads --config-file (held packets keep their due time);
SIGUSR1 writes the stats file; SIGTERM or SIGINT release every held packet,
write the stats file and exit 0. The stats file is first written once the
queue is bound, so its appearance means "ready". ``--seed`` makes every
decision reproducible for the same packet sequence.
"""

from __future__ import annotations

import argparse
import errno
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
from collections import deque
from dataclasses import asdict, dataclass, fields

from . import nfqueue as nfq

# The mark the daemon puts on the copies it sends, and that the queue rule skips ("LC").
BYPASS_MARK = 0x4C43
DEFAULT_LIMIT = 10000
BURST = 64   # datagrams read before the timer and the verdicts get a turn
DISTRIBUTIONS = ("uniform", "normal")


def queue_rule(interface: str, queue: int, bypass_mark: int = BYPASS_MARK, *, action: str = "-A") -> list[str]:
    """The iptables argv that feeds packets leaving ``interface`` to the shaper on ``queue``.

    In mangle/POSTROUTING the kernel has routed the packet and decremented its TTL, and the
    verdict only decides when (and whether) it leaves. ``--queue-bypass`` lets packets through
    unshaped while no shaper is bound; the mark match lets the shaper's own copies out.
    Use ``action="-D"`` for the argv that removes the rule.
    """
    if action not in ("-A", "-I", "-D", "-C"):
        raise ValueError(f"action {action!r} is not one of -A, -I, -D, -C")
    return ["iptables", "-w", "-t", "mangle", action, "POSTROUTING", "-o", interface,
            "-m", "mark", "!", "--mark", hex(bypass_mark),
            "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]


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


# A packet's fate: (drop, delay in seconds, duplicate, corrupt, reordered).
Fate = tuple


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

    def next(self) -> Fate:
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

@dataclass
class Stats:
    seen: int = 0
    delivered: int = 0     # accepted (after their delay), copies not counted
    dropped: int = 0
    duplicated: int = 0    # copies sent
    corrupted: int = 0
    reordered: int = 0     # sent at once past delayed packets
    delayed: int = 0       # held for a delay > 0
    overruns: int = 0      # ENOBUFS: packets the kernel could not hand us
    verdict_errors: int = 0
    duplicate_errors: int = 0
    reloads: int = 0
    reload_errors: int = 0


class Shaper:
    def __init__(self, queue: nfq.NfQueue, imp: Impairment, rng: random.Random, *, config_file: str | None = None,
                 stats_file: str | None = None, bypass_mark: int = BYPASS_MARK, seed: int | None = None,
                 log=None):
        self.queue = queue
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
        self.held_order: deque[int] = deque()   # held ids in arrival (= id) order, for batch verdicts
        self.gone: set[int] = set()             # held ids released out of that order
        self.mangled: dict[int, bytes] = {}     # id -> corrupted packet to hand back
        self.copies: dict[int, bytes] = {}      # id -> packet to duplicate on release
        self.sends: list[int] = []              # ids to accept at the next flush, in order
        self.drops: list[int] = []
        self.out_copies: list[bytes] = []
        self.raw: socket.socket | None = None
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
        except (OSError, ConfigError) as exc:
            self.stats.reload_errors += 1
            self.log(f"shaper: keeping the current config: {exc}")
            return
        if imp.limit != self.imp.limit:
            self.queue.set_maxlen(imp.limit)
        self.imp = imp
        self.fates = Fates(imp, self.rng)
        self.stats.reloads += 1
        self.log(f"shaper: queue {self.queue.number}: config {json.dumps(asdict(imp))}")

    # --- stats ----------------------------------------------------------------------

    def snapshot(self) -> dict:
        self.stats.overruns = self.queue.overruns
        self.stats.verdict_errors = self.queue.verdict_errors
        return {"ok": True, "queue": self.queue.number, "pid": os.getpid(), "seed": self.seed,
                "uptime_s": round(time.monotonic() - self.started, 3), "held": len(self.heap),
                **asdict(self.stats), "config": asdict(self.imp), "kernel": nfq.kernel_counters(self.queue.number)}

    def write_stats(self) -> dict:
        self.want_stats = False
        snap = self.snapshot()
        if self.stats_file:
            tmp = f"{self.stats_file}.tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump(snap, fh)
                fh.write("\n")
            os.replace(tmp, self.stats_file)
        return snap

    # --- copies -------------------------------------------------------------------------

    def _raw_socket(self) -> socket.socket:
        if self.raw is None:
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IPPROTO_RAW implies IP_HDRINCL
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.bypass_mark)
            raw.setblocking(False)
            self.raw = raw
        return self.raw

    def _send_copies(self) -> None:
        raw = self._raw_socket()
        for packet in self.out_copies:
            try:
                raw.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
                self.stats.duplicated += 1
            except OSError:
                self.stats.duplicate_errors += 1
        self.out_copies.clear()

    # --- the loop --------------------------------------------------------------------------

    def _packet_extras(self, buf, start: int, end: int, pid: int, duplicate: bool, corrupt: bool) -> None:
        lo, hi, truncated = nfq.payload_bounds(buf, start, end)
        if hi <= lo or truncated:
            return  # a truncated copy cannot be handed back whole, nor duplicated
        packet = bytes(buf[lo:hi])
        if duplicate and packet[0] >> 4 == 4:
            self.copies[pid] = packet
        if corrupt:
            changed = flip_bit(packet, self.rng)
            if changed is not None:
                self.mangled[pid] = changed
                self.stats.corrupted += 1

    def _release(self, pid: int) -> None:
        self.sends.append(pid)
        held = self.held_order
        if held and held[0] == pid:
            held.popleft()
            gone = self.gone
            while held and held[0] in gone:
                gone.remove(held.popleft())
        else:
            self.gone.add(pid)
        if self.copies:
            copy = self.copies.pop(pid, None)
            if copy is not None:
                self.out_copies.append(copy)

    def _flush(self) -> None:
        q = self.queue
        for pid in self.drops:
            q.verdict(pid, nfq.NF_DROP)
        self.drops.clear()
        sends = self.sends
        if sends:
            self.stats.delivered += len(sends)
            top = sends[-1]
            held = self.held_order
            batch = not self.mangled or not any(pid in self.mangled for pid in sends)
            if batch and held and not nfq.id_after(held[0], top):
                batch = False
            if batch:
                after = nfq.id_after
                prev = sends[0]
                for pid in sends[1:]:
                    if not after(pid, prev):
                        batch = False
                        break
                    prev = pid
            if batch:
                # Everything we hold has a later id: one message accepts them all.
                q.verdict_batch(top)
            else:
                mangled = self.mangled
                for pid in sends:
                    q.verdict(pid, nfq.NF_ACCEPT, payload=mangled.pop(pid, None) if mangled else None)
            sends.clear()
        q.flush()
        if self.out_copies:
            self._send_copies()

    def run(self, wake: socket.socket) -> None:
        q = self.queue
        sock = q.sock
        fd = sock.fileno()
        buf = bytearray(nfq.NfQueue.RECV_SIZE)
        recv_into = sock.recv_into
        heap = self.heap
        heappush, heappop = heapq.heappush, heapq.heappop
        monotonic = time.monotonic
        unpack_head = nfq.NLMSGHDR.unpack_from
        packet_id = nfq.packet_id
        packet_type = nfq.msg_type(nfq.NFQNL_MSG_PACKET)
        stats = self.stats
        sends, drops, held_order = self.sends, self.drops, self.held_order
        waiting = [fd, wake.fileno()]
        drained = True

        # Packets that came while we were binding.
        while q._backlog:
            data = q._backlog.pop(0)
            buf[:len(data)] = data
            self._take(buf, len(data), monotonic())

        while not self.stopping:
            if self.want_reload:
                self.reload()
            if self.want_stats:
                self.write_stats()
            if drained:
                timeout = None
                if heap:
                    timeout = heap[0][0] - monotonic()
                if timeout is None or timeout > 0:
                    ready, _, _ = select.select(waiting, [], [], timeout)
                    if wake.fileno() in ready:
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
                if kind != packet_type or length != n:
                    self._take(buf, n, now)
                    continue
                # The common case, inline: one packet message.
                pid = packet_id(buf, 0)
                stats.seen += 1
                if fates.constant:
                    delay = fates.delay
                    if delay:
                        stats.delayed += 1
                        heappush(heap, (now + delay, pid))
                        held_order.append(pid)
                    else:
                        sends.append(pid)
                    continue
                self._decide(buf, 0, n, pid, now, fates)
            now = monotonic()
            while heap and heap[0][0] <= now:
                self._release(heappop(heap)[1])
            if sends or drops:
                self._flush()

        # Stopping: every held packet leaves now, in due order.
        while heap:
            self._release(heappop(heap)[1])
        self._flush()

    def _take(self, buf, n: int, now: float) -> None:
        """Every message of a datagram, the general way."""
        for kind, _flags, start, end in nfq.messages(buf, n):
            if kind == nfq.msg_type(nfq.NFQNL_MSG_PACKET):
                self.stats.seen += 1
                pid = nfq.packet_id(buf, start)
                self._decide(buf, start, end, pid, now, self.fates)
            elif kind == nfq.NLMSG_ERROR:
                self.queue.note_error(buf, start)

    def _decide(self, buf, start: int, end: int, pid: int, now: float, fates: Fates) -> None:
        stats = self.stats
        if fates.constant:
            drop, delay, duplicate, corrupt, reordered = False, fates.delay, False, False, False
        else:
            drop, delay, duplicate, corrupt, reordered = fates.next()
        if drop:
            stats.dropped += 1
            self.drops.append(pid)
            return
        if duplicate or corrupt:
            self._packet_extras(buf, start, end, pid, duplicate, corrupt)
        if reordered:
            stats.reordered += 1
        if delay > 0:
            stats.delayed += 1
            heapq.heappush(self.heap, (now + delay, pid))
            self.held_order.append(pid)
        else:
            # Immediate: it does not enter held_order, so _release must not look for it there.
            self.sends.append(pid)
            copy = self.copies.pop(pid, None) if self.copies else None
            if copy is not None:
                self.out_copies.append(copy)

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
        self.queue.close()


# --- command line ---------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m labctl.agent shaper",
                                     description="netem-like impairments on one NFQUEUE (userspace fallback).")
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE number (0..65535)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="impairment config as a JSON object")
    source.add_argument("--config-file", help="file holding the JSON config; re-read on SIGHUP")
    parser.add_argument("--stats-file", help="where to write stats JSON (when ready, on SIGUSR1 and on exit)")
    parser.add_argument("--seed", type=int, help="seed for every random decision (reproducible runs)")
    parser.add_argument("--fail-open", action="store_true",
                        help="when the queue is full, pass packets unshaped instead of dropping them")
    parser.add_argument("--bypass-mark", type=lambda s: int(s, 0), default=BYPASS_MARK,
                        help=f"SO_MARK of duplicated copies; the queue rule must skip it (default {BYPASS_MARK:#x})")
    return parser.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    try:
        if args.config_file:
            with open(args.config_file) as fh:
                imp = read_config(fh.read(), args.config_file)
        else:
            imp = read_config(args.config, "--config")
    except (OSError, ConfigError) as exc:
        return {"ok": False, "error": str(exc)}
    try:
        queue = nfq.NfQueue(args.queue, maxlen=imp.limit, fail_open=args.fail_open)
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}
    rng = random.Random(args.seed)
    shaper = Shaper(queue, imp, rng, config_file=args.config_file, stats_file=args.stats_file,
                    bypass_mark=args.bypass_mark, seed=args.seed)
    wake = shaper.install_signals()
    try:
        if imp.duplicate_pct:
            shaper._raw_socket()  # fail now, not at the first duplicate, if NET_RAW/NET_ADMIN are missing
        shaper.log(f"shaper: queue {args.queue} bound (portid {queue.portid}): config {json.dumps(asdict(imp))}")
        shaper.write_stats()
        shaper.run(wake)
        return shaper.write_stats()
    finally:
        shaper.close()
