"""Link impairments and routing loops on the real engine, measured as a student would measure them.

One lab, client - r1 - r2 - server, for the measurements; impairments are set through
``api.impair`` (the same path as ``labctl impair``, lab files and scenario steps), on the
fallback path (forced with LABCTL_IMPAIR_MECHANISM, so a kernel with netem runs it too) and,
where the kernel has netem, again on netem. Bounds are the issue's accuracy bounds and
binomial 99% intervals; timings are benchmarks/bench_impair.py's business.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl import api
from labctl.rundir import read_json, read_jsonl

from .test_shaper_engine import binomial_interval

pytestmark = pytest.mark.engine

CHAIN = """
nodes:
  client: {}
  r1: {role: router}
  r2: {role: router}
  server: {}
links:
  - {name: left, endpoints: [client, r1]}
  - {name: mid, endpoints: [r1, r2]}
  - {name: right, endpoints: [r2, server]}
"""


def netem_in_kernel() -> bool:
    """Containers share the host's kernel: does it have sch_netem (built in, loaded, or loadable)?"""
    if Path("/sys/module/sch_netem").exists():
        return True
    try:
        config = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
        return re.search(r"^CONFIG_NET_SCH_NETEM=[ym]$", config, re.MULTILINE) is not None
    except OSError:
        return any(Path("/lib/modules", os.uname().release).rglob("sch_netem.ko*"))


MECHANISMS = ["fallback", "netem"] if netem_in_kernel() else ["fallback"]


@pytest.fixture(scope="module", params=MECHANISMS)
def mechanism(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def lab(engine, node_image, tmp_path_factory, mechanism):
    import secrets

    name = f"imp{secrets.token_hex(3)}"
    directory = tmp_path_factory.mktemp(name)
    (directory / "lab.yaml").write_text(f"name: {name}\n" + CHAIN)
    api.up(directory, engine=engine)
    yield directory
    engine.destroy(name)


@pytest.fixture(autouse=True)
def forced(monkeypatch, mechanism):
    monkeypatch.setenv("LABCTL_IMPAIR_MECHANISM", mechanism)


@pytest.fixture
def clean(engine, lab):
    """Every test starts and ends with no impairment and no loop in force."""
    yield lab
    for link in ("left", "mid", "right"):
        api.impair(lab, link, clear=True, engine=engine)
    api.loop(lab, "r1", "r2", heal=True, engine=engine)


def name_of(lab: Path) -> str:
    return (lab / "lab.yaml").read_text().split()[1]  # "name: NAME" is the file's first line


def sh(engine, lab: Path, node: str, script: str):
    return engine.exec(name_of(lab), node, ["sh", "-c", script])


@dataclass
class Ping:
    transmitted: int
    received: int
    duplicates: int
    rtts: list[float]
    text: str

    @property
    def lost(self) -> int:
        return self.transmitted - self.received


def ping(engine, lab: Path, count: int, interval: float, wait: float = 1, target: str = "server") -> Ping:
    out = sh(engine, lab, "client", f"ping -n -c {count} -i {interval} -W {wait} {target}").stdout
    summary = re.search(r"(\d+) packets transmitted, (\d+) received(?:, \+(\d+) duplicates)?", out)
    assert summary, out
    return Ping(int(summary[1]), int(summary[2]), int(summary[3] or 0), [float(t) for t in re.findall(r"time=([\d.]+) ms", out)], out)


class Capture:
    """tcpdump in a node, started before the traffic and read back as text (-tt -v: times and TTLs)."""

    def __init__(self, engine, lab: Path, node: str, iface: str, expression: str):
        self.engine, self.lab, self.node = engine, lab, node
        self.file = f"/tmp/cap-{iface}-{time.monotonic_ns()}"
        started = sh(engine, lab, node, f"tcpdump -n -U --immediate-mode -i {iface} -w {self.file}.pcap '{expression}' >{self.file}.log 2>&1 & echo $!")
        self.pid = int(started.stdout.strip())
        deadline = time.monotonic() + 10
        while "listening on" not in sh(engine, lab, node, f"cat {self.file}.log").stdout:
            assert time.monotonic() < deadline, "tcpdump did not start"
            time.sleep(0.05)

    def lines(self) -> list[str]:
        time.sleep(0.3)
        sh(self.engine, self.lab, self.node, f"kill -INT {self.pid}; while [ -d /proc/{self.pid} ]; do sleep 0.02; done")
        return sh(self.engine, self.lab, self.node, f"tcpdump -tt -n -v -r {self.file}.pcap 2>/dev/null").stdout.splitlines()


def echo_requests(lines: list[str]) -> list[tuple[float, int, int]]:
    """(time, ttl, icmp seq) of each ICMP echo request in ``tcpdump -tt -v`` text."""
    found = []
    for header, body in zip(lines, lines[1:]):
        m, n = re.match(r"(\d+\.\d+) IP \(tos \S+, ttl (\d+)", header), re.search(r"ICMP echo request, id \d+, seq (\d+)", body)
        if m and n:
            found.append((float(m[1]), int(m[2]), int(n[1])))
    return found


def started_at(engine, lab: Path) -> dict[str, str]:
    return {c.name: c.attrs["State"]["StartedAt"] for c in engine.client.containers.list(filters={"label": f"org.labctl.lab={name_of(lab)}"})}


# --- delay and jitter ----------------------------------------------------------------------------

def test_50ms_each_way_makes_a_100ms_round_trip(engine, clean, mechanism):
    directions = api.impair(clean, "left", settings={"delay": "50ms"}, engine=engine)

    # Every endpoint's egress: the client's own (a host) and the router's.
    assert {d.node for d in directions} == {"client", "r1"}
    assert {d.mechanism for d in directions} == {mechanism}
    result = ping(engine, clean, 50, 0.05)
    assert result.received >= 48, result.text
    assert statistics.median(result.rtts) == pytest.approx(100, abs=5)


def test_jitter_widens_the_spread_of_round_trips(engine, clean):
    api.impair(clean, "left", settings={"delay": "50ms"}, engine=engine)
    steady = ping(engine, clean, 50, 0.05)
    api.impair(clean, "left", settings={"delay": "50ms", "jitter": "10ms"}, engine=engine)
    jittered = ping(engine, clean, 50, 0.05)

    # Two independent uniform draws of ±10 ms: the round trip spreads over 80..120 ms with a
    # standard deviation of 10·√(2/3) ≈ 8.2 ms; without jitter it is well under a millisecond.
    assert statistics.pstdev(steady.rtts) < 1.5
    assert 5 <= statistics.pstdev(jittered.rtts) <= 12
    assert statistics.median(jittered.rtts) == pytest.approx(100, abs=5)
    assert 79 <= min(jittered.rtts) and max(jittered.rtts) <= 125


def test_a_runtime_change_takes_effect_without_restarting_nodes_and_clear_restores(engine, clean):
    before = started_at(engine, clean)
    api.impair(clean, "left", settings={"delay": "50ms", "loss": "1%"}, engine=engine)
    api.impair(clean, "left", settings={"delay": "20ms"}, engine=engine)

    assert statistics.median(ping(engine, clean, 20, 0.05).rtts) == pytest.approx(40, abs=5)
    assert started_at(engine, clean) == before
    [state] = api.status(clean, engine=engine)
    shown = {(d["from"], d["description"]) for d in next(l for l in state.links if l["name"] == "left")["impairments"]}
    assert shown == {("client", "delay 20ms"), ("r1", "delay 20ms")}

    api.impair(clean, "left", clear=True, engine=engine)

    assert statistics.median(ping(engine, clean, 20, 0.02).rtts) < 5
    for node in ("client", "r1"):
        leftovers = sh(engine, clean, node, "iptables-save -t mangle | grep -c -e LCIMP -e NFQUEUE; "
                                            "tc qdisc show dev left | grep -c -e tbf -e netem; pgrep -fc '[l]abctl.agent shaper'").stdout.split()
        assert leftovers == ["0", "0", "0"], (node, leftovers)
    [state] = api.status(clean, engine=engine)
    assert all(not link["impairments"] for link in state.links)


# --- loss, duplication, reordering ----------------------------------------------------------------

def test_20pct_loss_one_way_over_1000_probes(engine, clean, mechanism):
    [direction] = api.impair(clean, "left", "client", {"loss": "20%"}, engine=engine)
    assert direction.parts == {"loss": "iptables statistic" if mechanism == "fallback" else "netem"}

    result = ping(engine, clean, 1000, 0.005)

    low, high = binomial_interval(1000, 0.2)
    assert low <= result.lost <= high, (result.lost, (low, high))


def test_10pct_duplicates_arrive_at_the_receiver(engine, clean, mechanism):
    [direction] = api.impair(clean, "left", "client", {"duplicate": "10%"}, engine=engine)
    # Two endpoints: every packet the client sends onto the link goes to r1, and TEE copies it there.
    assert direction.parts == {"duplicate": "iptables TEE" if mechanism == "fallback" else "netem"}
    capture = Capture(engine, clean, "server", "right", "icmp[icmptype] == 8")

    result = ping(engine, clean, 400, 0.005)
    seqs = [seq for _, _, seq in echo_requests(capture.lines())]

    duplicates = len(seqs) - len(set(seqs))
    low, high = binomial_interval(400, 0.1)
    assert low <= duplicates <= high, (duplicates, (low, high))
    assert abs(result.duplicates - duplicates) <= 4  # each copy got its own reply


def test_reordered_packets_overtake_the_delayed_ones(engine, clean):
    api.impair(clean, "right", "r2", {"delay": "20ms", "reorder": "50%"}, engine=engine)
    capture = Capture(engine, clean, "server", "right", "icmp[icmptype] == 8")

    ping(engine, clean, 100, 0.002)
    seqs = [seq for _, _, seq in echo_requests(capture.lines())]

    out_of_order = sum(1 for a, b in zip(seqs, seqs[1:]) if b < a)
    assert len(seqs) >= 95 and out_of_order >= 5, seqs


# --- rate -------------------------------------------------------------------------------------------

def test_1mbit_carries_a_bulk_transfer_at_1mbit(engine, clean):
    [direction] = api.impair(clean, "right", "r2", {"rate": "1mbit"}, engine=engine)
    assert direction.mechanism == "tbf"
    sh(engine, clean, "server", "iperf3 -s -D -1")
    time.sleep(0.3)

    result = json.loads(sh(engine, clean, "client", "iperf3 -c server -t 4 -J").stdout)

    received = result["end"]["sum_received"]["bits_per_second"]
    assert received == pytest.approx(1e6, rel=0.15), received


# --- routing loops ------------------------------------------------------------------------------------

def test_a_routing_loop_makes_a_probes_ttl_expire(engine, clean):
    capture = Capture(engine, clean, "client", "left", "icmp[icmptype] == 11")
    loop = api.loop(clean, "r1", "r2", "2s", engine=engine)

    result = ping(engine, clean, 1, 1, wait=1)
    expired = [line for line in capture.lines() if "ICMP time exceeded in-transit" in line]

    assert "Time to live exceeded" in result.text, result.text
    assert len(expired) == 1, expired
    time.sleep(max(0.0, loop.heal_at - time.time()) + 0.2)
    assert ping(engine, clean, 3, 0.05).received == 3  # healed by itself


def test_a_loop_that_heals_before_the_ttl_runs_out_delivers_the_packet_late(engine, clean):
    # 50 ms per crossing of r1-r2: a packet circulating there lives for about 64 × 50 ms = 3.2 s.
    api.impair(clean, "mid", settings={"delay": "50ms"}, engine=engine)
    sent = Capture(engine, clean, "client", "left", "icmp[icmptype] == 8")
    arrived = Capture(engine, clean, "server", "right", "icmp[icmptype] == 8")
    loop = api.loop(clean, "r1", "r2", "1.5s", {"from": "client", "proto": "icmp"}, engine=engine)

    result = ping(engine, clean, 1, 1, wait=5)
    [(t_sent, _, _)] = echo_requests(sent.lines())
    [(t_arrived, ttl, _)] = echo_requests(arrived.lines())

    assert result.received == 1, result.text
    # It left the loop when the loop healed, at most one round over the link later, and
    # lost one TTL at every hop of its circling (64 - 2 without the loop).
    assert loop.heal_at - 0.03 <= t_arrived <= loop.heal_at + 0.2, (t_arrived - loop.heal_at)
    assert t_arrived - t_sent == pytest.approx(loop.heal_at - t_sent, abs=0.2)
    assert ttl <= 62 - 10, ttl


def test_a_loop_filter_leaves_other_traffic_alone(engine, clean):
    loop = api.loop(clean, "r1", "r2", "2s", {"from": "client", "proto": "tcp", "dport": 9}, engine=engine)

    assert ping(engine, clean, 3, 0.05).received == 3
    [state] = api.status(clean, engine=engine)
    assert {entry["router"] for entry in state.loops} == {"r1", "r2"}
    healed = api.loop(clean, "r1", "r2", heal=True, engine=engine)
    assert loop.heal_at > time.time() and all(reply["healed"] for reply in healed.values())
    [state] = api.status(clean, engine=engine)
    assert state.loops == []


# --- the lab file, up, and scenario steps ------------------------------------------------------------

def test_a_two_host_link_impaired_in_the_lab_file(engine, node_image, make_lab, mechanism):
    path = make_lab("""
        nodes:
          a: {}
          b: {}
        links:
          - name: wire
            endpoints: [a, b]
            impair: {delay: 25ms}
        """)
    lab = path.name

    first = api.up(path, engine=engine)
    assert {(d.node, d.mechanism) for d in first.impairments} == {("a", mechanism), ("b", mechanism)}
    assert statistics.median(ping_between(engine, lab)) == pytest.approx(50, abs=5)

    # Up again: nothing to change, and a runtime change stays while the file says the same.
    api.impair(path, "wire", "a", {"delay": "5ms"}, engine=engine)
    again = api.up(path, engine=engine)
    assert again.report.created == [] and not any(d.changed for d in again.impairments)
    assert statistics.median(ping_between(engine, lab)) == pytest.approx(30, abs=5)

    # The file no longer impairs the link: up clears it.
    (path / "lab.yaml").write_text((path / "lab.yaml").read_text().replace("    impair: {delay: 25ms}\n", ""))
    api.up(path, engine=engine)
    assert statistics.median(ping_between(engine, lab)) < 5


def ping_between(engine, lab: str) -> list[float]:
    out = engine.exec(lab, "a", ["ping", "-n", "-c", "10", "-i", "0.05", "b"]).stdout
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]


def test_the_routing_loop_scenario_records_its_impairments_and_loop(engine, node_image, tmp_path, mechanism):
    api.down("teardown-loop", engine=engine)
    try:
        [result] = api.run("teardown-loop", ["routing-loop"], engine=engine, root=tmp_path)
        failed = [f"{v.description}: {v.observed}" for v in result.verdicts if not v.passed]
        assert result.passed, failed
        events = list(read_jsonl(result.path / "events.jsonl"))
        set_by_scenario = [e for e in events if e["event"] == "impair" and e["why"] == "set by the scenario"]
        assert {(e["node"], e["mechanism"]) for e in set_by_scenario} == {("r1", mechanism), ("r2", mechanism)}
        [loop] = [e for e in events if e["event"] == "loop"]
        healed = [e for e in events if e["event"] == "loop-healed"]
        assert {e["router"] for e in healed} == {"r1", "r2"}
        assert all(abs(e["t"] - loop["heal_at"]) < 0.2 for e in healed)
        recorded = read_json(result.path / "run.json")["impairments"]
        assert [r["event"] for r in recorded].count("impair") == 4  # set on both routers, restored on both
        # Restored after the run: nothing of the scenario's is left on the lab.
        [state] = api.status("teardown-loop", engine=engine)
        assert all(not link["impairments"] for link in state.links) and state.loops == []
    finally:
        api.down("teardown-loop", engine=engine)
