"""The userspace shaper on the real engine: client - router - server, impaired on the router.

Each test brings up its own three-node lab, feeds the router's egress toward the server
(and, where the reply must be shaped too, toward the client) to the shaper through NFQUEUE,
and measures with ping from the client what a student would measure.

Counts are checked against the shaper's own decisions (seeded, so reproducible) and
against binomial 99% intervals. End-to-end losses may exceed the shaper's drops by a
frame or two: the host can drop bridged lab frames while Docker rewrites its FORWARD
chain for another lab's network. Timings here are tolerances of the issue, not benchmarks
(benchmarks/bench_shaper.py prints those).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import threading
import time
from dataclasses import dataclass

import pytest

from labctl import api
from labctl.agent.shaper import queue_rules

from .conftest import THREE_NODES

pytestmark = pytest.mark.engine


def sh(engine, lab: str, node: str, script: str):
    return engine.exec(lab, node, ["sh", "-c", script])


@dataclass
class Shaper:
    engine: object
    lab: str
    queue: int
    pid: int

    @property
    def config_file(self) -> str:
        return f"/tmp/shaper-{self.queue}.config.json"

    @property
    def stats_file(self) -> str:
        return f"/tmp/shaper-{self.queue}.stats.json"

    def stats(self) -> dict:
        return json.loads(sh(self.engine, self.lab, "router", f"cat {self.stats_file}").stdout)

    def signal(self, name: str) -> None:
        assert sh(self.engine, self.lab, "router", f"kill -{name} {self.pid}").exit_code == 0

    def reconfigure(self, config: dict) -> None:
        sh(self.engine, self.lab, "router", f"echo '{json.dumps(config)}' > {self.config_file}")
        self.signal("HUP")

    def stop(self) -> dict:
        """SIGTERM, wait for the exit, and the stats it wrote on the way out."""
        self.signal("TERM")
        deadline = time.monotonic() + 10
        while sh(self.engine, self.lab, "router", f"test -d /proc/{self.pid}").exit_code == 0:
            assert time.monotonic() < deadline, "shaper did not exit on SIGTERM"
            time.sleep(0.05)
        return self.stats()


def start_shaper(engine, lab: str, interface: str, queue: int, config: dict, seed: int = 1) -> Shaper:
    for rule in queue_rules(interface, queue):
        result = engine.exec(lab, "router", rule)
        assert result.exit_code == 0, result.stderr
    shaper = Shaper(engine, lab, queue, 0)
    sh(engine, lab, "router", f"echo '{json.dumps(config)}' > {shaper.config_file}")
    sh(engine, lab, "router", f"nohup python3 -m labctl.agent shaper --queue {queue} --config-file {shaper.config_file} "
                              f"--stats-file {shaper.stats_file} --seed {seed} >/tmp/shaper-{queue}.log 2>&1 &")
    # The stats file appears once both queues are bound: the shaper is ready.
    deadline = time.monotonic() + 15
    while True:
        read = sh(engine, lab, "router", f"cat {shaper.stats_file} 2>/dev/null")
        if read.exit_code == 0 and read.stdout.strip():
            shaper.pid = json.loads(read.stdout)["pid"]
            return shaper
        log = sh(engine, lab, "router", f"cat /tmp/shaper-{queue}.log").stdout
        assert time.monotonic() < deadline, f"shaper not ready: {log}"
        time.sleep(0.1)


@dataclass
class Ping:
    transmitted: int
    received: int
    duplicates: int
    seqs: list[int]        # in the order the replies came
    rtts: list[float]      # ms, duplicates included
    ttls: list[int]

    @property
    def lost(self) -> int:
        return self.transmitted - self.received


def ping(engine, lab: str, count: int, interval: float, wait: float = 1) -> Ping:
    out = engine.exec(lab, "client", ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait), "server"]).stdout
    summary = re.search(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?", out)
    assert summary, out
    replies = re.findall(r"icmp_seq=(\d+) ttl=(\d+) time=([\d.]+) ms", out)
    return Ping(int(summary[1]), int(summary[2]), int(summary[3] or 0), [int(s) for s, _, _ in replies],
                [float(t) for _, _, t in replies], [int(t) for _, t, _ in replies])


def binomial_interval(n: int, p: float, level: float = 0.99) -> tuple[int, int]:
    """The central interval holding ``level`` of Binomial(n, p)."""
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    tail = (1 - level) / 2
    low, acc = 0, 0.0
    while acc + pmf[low] < tail:
        acc += pmf[low]
        low += 1
    high, acc = n, 0.0
    while acc + pmf[high] < tail:
        acc += pmf[high]
        high -= 1
    return low, high


def counter(engine, lab: str, node: str, table: str, name: str) -> int:
    """A counter from /proc/net/snmp (e.g. Icmp InCsumErrors) inside a node."""
    lines = sh(engine, lab, node, "cat /proc/net/snmp").stdout.splitlines()
    for header, values in zip(lines, lines[1:]):
        if header.startswith(f"{table}:") and values.startswith(f"{table}:"):
            return int(dict(zip(header.split()[1:], values.split()[1:]))[name])
    raise KeyError(f"{table} {name}")


def insert_failed(engine, lab: str) -> int:
    out = sh(engine, lab, "router", "conntrack -S").stdout
    return sum(int(n) for n in re.findall(r"insert_failed=(\d+)", out))


@pytest.fixture
def lab(engine, node_image, make_lab) -> str:
    return api.up(make_lab(THREE_NODES), engine=engine).plan.lab


def test_50ms_each_way_makes_a_100ms_round_trip_and_the_router_still_routes(engine, lab):
    toward_server = start_shaper(engine, lab, "right", 1, {"delay_ms": 50})
    toward_client = start_shaper(engine, lab, "left", 2, {"delay_ms": 50})

    result = ping(engine, lab, 50, 0.05)

    assert result.received >= 48, result
    assert statistics.median(result.rtts) == pytest.approx(100, abs=5)
    assert min(result.rtts) >= 100          # never early
    assert set(result.ttls) == {63}         # the kernel still forwarded (and decremented TTL) after the hold
    for shaper in (toward_server, toward_client):
        stats = shaper.stop()
        assert result.received <= stats["seen"] <= 50
        assert stats["delayed"] == stats["delivered"] == stats["seen"]
        assert stats["held"] == 0 and stats["overruns"] == 0 and stats["verdict_errors"] == 0


def test_a_new_flow_faster_than_the_delay_loses_nothing_to_conntrack(engine, lab):
    # While the first echo of a flow is held, its conntrack entry is unconfirmed; every later
    # echo gets an unconfirmed entry of its own, which the kernel would drop on release.
    before = insert_failed(engine, lab)
    shaper = start_shaper(engine, lab, "right", 1, {"delay_ms": 50})

    result = ping(engine, lab, 40, 0.005)
    stats = shaper.stop()

    assert insert_failed(engine, lab) == before
    assert stats["resent"] >= 2             # echoes held behind the first one left through the raw socket
    assert result.received >= 39, result    # without the second queue, most of the first 50 ms is lost
    assert set(result.ttls) == {63}


def test_20pct_loss_one_way(engine, lab):
    shaper = start_shaper(engine, lab, "right", 1, {"loss_pct": 20}, seed=7)

    result = ping(engine, lab, 1000, 0.005)
    stats = shaper.stop()

    low, high = binomial_interval(1000, 0.2)
    assert low <= result.lost <= high, (result.lost, (low, high))
    assert 990 <= stats["seen"] <= 1000 and low <= stats["dropped"] <= high
    assert 0 <= result.lost - stats["dropped"] <= 10      # what the shaper dropped is what went missing


def test_10pct_duplicates_come_back_as_dup_replies(engine, lab):
    shaper = start_shaper(engine, lab, "right", 1, {"duplicate_pct": 10}, seed=3)

    result = ping(engine, lab, 400, 0.005)
    stats = shaper.stop()

    low, high = binomial_interval(400, 0.1)
    assert low <= result.duplicates <= high, (result.duplicates, (low, high))
    assert 0 <= stats["duplicated"] - result.duplicates <= 4
    # The copies carry the bypass mark: none of them was queued again (that would make 440).
    assert 396 <= stats["seen"] <= 400
    assert set(result.ttls) == {63}


def test_reordered_echoes_overtake_the_delayed_ones(engine, lab):
    shaper = start_shaper(engine, lab, "right", 1, {"delay_ms": 20, "reorder_pct": 50}, seed=5)

    result = ping(engine, lab, 100, 0.002)
    stats = shaper.stop()

    overtaking = sum(1 for a, b in zip(result.seqs, result.seqs[1:]) if b < a)
    assert overtaking >= 5, result.seqs
    low, high = binomial_interval(100, 0.5)
    assert low <= stats["reordered"] <= high
    # The reordered ones went without the delay, the rest with it.
    assert sum(rtt < 10 for rtt in result.rtts) >= stats["reordered"] - 3
    assert sum(rtt >= 20 for rtt in result.rtts) >= stats["delayed"] - 3


def test_corrupted_echoes_fail_the_servers_checksum_and_count_as_loss(engine, lab):
    errors_before = counter(engine, lab, "server", "Icmp", "InCsumErrors")
    shaper = start_shaper(engine, lab, "right", 1, {"corrupt_pct": 30}, seed=11)

    result = ping(engine, lab, 300, 0.005)
    stats = shaper.stop()

    low, high = binomial_interval(300, 0.3)
    assert low <= stats["corrupted"] <= high
    # Each flipped bit was caught by the server's ICMP checksum, as on a real wire.
    caught = counter(engine, lab, "server", "Icmp", "InCsumErrors") - errors_before
    assert stats["corrupted"] - 3 <= caught <= stats["corrupted"]
    assert 0 <= result.lost - stats["corrupted"] <= 4


def test_sighup_rereads_the_config_and_sigterm_lets_held_packets_go(engine, lab):
    shaper = start_shaper(engine, lab, "right", 1, {})
    assert max(ping(engine, lab, 3, 0.05).rtts) < 20

    shaper.reconfigure({"delay_ms": 200})
    time.sleep(0.2)
    assert min(ping(engine, lab, 3, 0.05).rtts) >= 200

    shaper.signal("USR1")
    time.sleep(0.2)
    assert shaper.stats()["reloads"] == 1

    # A 5 s delay, then SIGTERM while the echo is held: it must leave at once, not be dropped.
    shaper.reconfigure({"delay_ms": 5000})
    time.sleep(0.2)
    held: list[Ping] = []
    pinger = threading.Thread(target=lambda: held.append(ping(engine, lab, 1, 1, wait=8)))
    pinger.start()
    time.sleep(1.0)
    final = shaper.stop()
    pinger.join(timeout=15)

    assert held and held[0].received == 1, held
    assert 900 <= held[0].rtts[0] < 4000
    assert final["reloads"] == 2 and final["held"] == 0 and final["delivered"] == final["seen"]
