"""What link impairments cost and how exact they are, through labctl's own API, on the real engine.

    python3 benchmarks/bench_impair.py [--rates 20000,40000] [--seconds 5] [--probes 1000] [--json]

One lab, client - router - server; the router's egress toward the server is impaired with
``api.impair`` (as ``labctl impair`` does), one mechanism at a time:

- ``none``: no impairment (the kernel forwarding alone: the baseline);
- ``netem``: ``delay 50ms`` on netem, where the kernel has it;
- ``fallback 0ms``: the userspace engine in the path with a 1 µs delay (through the API a
  delay of 0 is "off"; 1 µs keeps every packet going through the engine);
- ``fallback 50ms``: the userspace engine with a 50 ms delay.

Forwarding: iperf3 UDP, 64-byte payloads, client to server at each offered rate. Reported:
packets per second that arrived, loss, the CPU time of the lab's containers during the run
(their cgroups: the forwarding, the engine and both iperf3 ends, and not the host's other work)
and what it adds over ``none`` at the same rate, and the engine's own CPU
time per packet (from /proc inside the router), i.e. how many packets one core could shape.

Delay error: ``delay 50ms``, the client pings every 10 ms, the router captures each echo
request coming in on ``left`` and leaving on ``right`` (``tcpdump -i any``, host clock);
error = (out - in) - 50 ms per packet, as p50/p99 (the issue's target for the fallback:
p99 under 2 ms). Also under UDP load through the same link.

Figures only: nothing is asserted; timings depend on the machine and its other load.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labctl import api  # noqa: E402
from labctl.engine.docker_engine import DockerEngine  # noqa: E402

LAB_YAML = """
nodes:
  client: {}
  router: {role: router}
  server: {}
links:
  - {name: left, endpoints: [client, router]}
  - {name: right, endpoints: [router, server]}
"""
TARGET_P99_MS = 2.0
TARGET_PPS = 20000
MODES = {"none": None, "netem 50ms": ("netem", "50ms"), "fallback 0ms": ("fallback", "0.001ms"), "fallback 50ms": ("fallback", "50ms")}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def netem_in_kernel() -> bool:
    if Path("/sys/module/sch_netem").exists():
        return True
    try:
        return "CONFIG_NET_SCH_NETEM=" in gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        return False


def host_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def container_cpu_seconds(ident: str) -> float | None:
    """CPU time charged to one container's cgroup (v1 cpuacct or v2 cpu.stat), or None when not found."""
    for path in (Path("/sys/fs/cgroup/cpuacct/docker", ident, "cpuacct.usage"),
                 Path("/sys/fs/cgroup/system.slice", f"docker-{ident}.scope", "cpu.stat"),
                 Path("/sys/fs/cgroup/docker", ident, "cpu.stat")):
        if path.exists():
            text = path.read_text()
            if path.name == "cpuacct.usage":
                return int(text) / 1e9
            return int(re.search(r"usage_usec (\d+)", text)[1]) / 1e6
    return None


def quantiles(values: list[float]) -> dict:
    if not values:
        return {}
    values = sorted(values)

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3)

    return {"n": len(values), "min": round(values[0], 3), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99),
            "max": round(values[-1], 3), "mean": round(statistics.fmean(values), 3)}


class Bench:
    def __init__(self, engine: DockerEngine, path: Path, lab: str):
        self.engine, self.path, self.lab = engine, path, lab

    def lab_cpu_seconds(self) -> float:
        """CPU time of every container of the lab: the forwarding path (softirq work is charged to the
        task it interrupts, here the senders), the engine and the iperf3 ends; not other work on the host."""
        total = 0.0
        for container in self.engine.client.containers.list(filters={"label": f"org.labctl.lab={self.lab}"}):
            used = container_cpu_seconds(container.id)
            if used is None:
                return host_busy_seconds()
            total += used
        return total

    def sh(self, node: str, script: str):
        return self.engine.exec(self.lab, node, ["sh", "-c", script])

    def set_mode(self, mode: str) -> dict | None:
        spec = MODES[mode]
        api.impair(self.path, "right", "router", clear=True, engine=self.engine)
        if spec is None:
            return None
        os.environ["LABCTL_IMPAIR_MECHANISM"] = spec[0]
        try:
            [direction] = api.impair(self.path, "right", "router", {"delay": spec[1]}, engine=self.engine)
        finally:
            os.environ.pop("LABCTL_IMPAIR_MECHANISM", None)
        return direction.to_json()

    def shaper_cpu(self) -> float | None:
        state = self.sh("router", "cat /run/labctl/impair/right.json 2>/dev/null").stdout
        pid = json.loads(state).get("shaper_pid") if state.strip() else None
        if not pid:
            return None
        fields = self.sh("router", f"cat /proc/{pid}/stat").stdout.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def shaper_seen(self) -> int | None:
        state = self.sh("router", "cat /run/labctl/impair/right.json 2>/dev/null").stdout
        data = json.loads(state) if state.strip() else {}
        if not data.get("shaper_pid"):
            return None
        pid, queue = data["shaper_pid"], data["queue"]
        stats_file = f"/run/labctl/impair/shaper-{queue}.stats.json"
        before = self.sh("router", f"cat {stats_file}").stdout
        self.sh("router", f"kill -USR1 {pid}")
        for _ in range(100):
            now = self.sh("router", f"cat {stats_file}").stdout
            if now != before:
                return json.loads(now)["seen"]
            time.sleep(0.02)
        return json.loads(before)["seen"]

    def forwarding(self, mode: str, pps: int, seconds: int) -> dict:
        applied = self.set_mode(mode)
        self.sh("server", "pkill -x iperf3; iperf3 -s -D -1")
        time.sleep(0.3)
        cpu_before, shaper_before, seen_before = self.lab_cpu_seconds(), self.shaper_cpu(), self.shaper_seen()
        result = json.loads(self.sh("client", f"iperf3 -c server -u -l 64 -b {pps * 64 * 8} -t {seconds} -J").stdout)
        cpu = self.lab_cpu_seconds() - cpu_before
        shaper_after, seen_after = self.shaper_cpu(), self.shaper_seen()
        end = result["end"]["sum"]
        received = end["packets"] - end["lost_packets"]
        figures = {"mode": mode, "mechanism": applied and applied["mechanism"], "offered_pps": pps,
                   "received_pps": round(received / seconds), "loss_pct": round(end["lost_percent"], 3),
                   "lab_cpu_s": round(cpu, 3)}
        if shaper_before is not None and shaper_after is not None and seen_after:
            shaped = seen_after - (seen_before or 0)
            spent = shaper_after - shaper_before
            figures.update(shaper_cpu_s=round(spent, 3), shaper_packets=shaped,
                           cpu_us_per_packet=round(spent / shaped * 1e6, 2) if shaped else None,
                           one_core_pps=round(shaped / spent) if spent else None)
        return figures

    def delay_error(self, mode: str, probes: int, load_pps: int) -> dict:
        applied = self.set_mode(mode)
        self.sh("router", "rm -f /tmp/bench.pcap /tmp/bench.log")
        pid = int(self.sh("router", "tcpdump -n -U --immediate-mode -i any -w /tmp/bench.pcap 'icmp[icmptype]==8' "
                                    ">/tmp/bench.log 2>&1 & echo $!").stdout.strip())
        while "listening" not in self.sh("router", "cat /tmp/bench.log").stdout:
            time.sleep(0.05)
        if load_pps:
            self.sh("server", "pkill -x iperf3; iperf3 -s -D")
            self.sh("client", f"nohup iperf3 -c server -u -l 64 -b {load_pps * 64 * 8} -t {probes * 0.01 + 4:.0f} >/dev/null 2>&1 &")
            time.sleep(1)
        self.sh("client", f"ping -n -q -c {probes} -i 0.01 server")
        time.sleep(0.2)
        self.sh("router", f"kill -INT {pid}; while [ -d /proc/{pid} ]; do sleep 0.02; done")
        if load_pps:
            self.sh("client", "pkill -x iperf3")
            self.sh("server", "pkill -x iperf3")
        text = self.sh("router", "tcpdump -tt -n -r /tmp/bench.pcap 2>/dev/null").stdout
        arrived, left = {}, {}
        for line in text.splitlines():
            m = re.match(r"(\d+\.\d+) (\w+)\s+(In|Out) .*? > [\d.]+: ICMP echo request, id (\d+), seq (\d+)", line)
            if m:
                (arrived if m[3] == "In" else left)[(m[4], m[5])] = float(m[1])
        errors = [(left[k] - arrived[k]) * 1000 - 50 for k in arrived if k in left]
        return {"mode": mode, "mechanism": applied and applied["mechanism"], "load_pps": load_pps, "probes": probes,
                "error_ms": quantiles(errors)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="20000,40000")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--load", type=int, default=20000, help="UDP packets/s through the link during the loaded delay run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    engine = DockerEngine.connect()
    lab = f"bench-impair-{secrets.token_hex(3)}"
    netem = netem_in_kernel()
    modes = [m for m in MODES if netem or not m.startswith("netem")]
    figures: dict = {"lab": lab, "netem_in_kernel": netem, "cores": os.cpu_count(), "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        (path / "lab.yaml").write_text(f"name: {lab}\n" + LAB_YAML)
        say(f"bringing up {lab}")
        api.up(path, engine=engine)
        try:
            bench = Bench(engine, path, lab)
            figures["forwarding"] = []
            for mode in modes:
                for pps in (int(r) for r in args.rates.split(",")):
                    say(f"forwarding: {mode}, {pps} pps offered")
                    figures["forwarding"].append(bench.forwarding(mode, pps, args.seconds))
            figures["delay"] = []
            for mode in [m for m in modes if m.endswith("50ms")]:
                for load in (0, args.load):
                    say(f"delay error: {mode}, {args.probes} probes, load {load} pps")
                    figures["delay"].append(bench.delay_error(mode, args.probes, load))
            figures["loadavg_after"] = os.getloadavg()
        finally:
            engine.destroy(lab)

    baseline = {f["offered_pps"]: f["lab_cpu_s"] for f in figures["forwarding"] if f["mode"] == "none"}
    for f in figures["forwarding"]:
        f["added_cpu_s"] = round(f["lab_cpu_s"] - baseline.get(f["offered_pps"], f["lab_cpu_s"]), 3)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"impairment benchmark ({lab}; {figures['cores']} cores; netem in kernel: {netem}; "
          f"load average before {figures['loadavg_before'][0]:.2f})")
    print(f"\nforwarding through one router, 64-byte UDP for {args.seconds} s (target: fallback {TARGET_PPS} pps on one core)")
    print(f"  {'mode':<14} {'mechanism':<9} {'offered':>8} {'arrived/s':>9} {'loss %':>7} {'lab cpu s':>9} {'added':>6} "
          f"{'engine us/pkt':>13} {'one core pps':>12}")
    for f in figures["forwarding"]:
        print(f"  {f['mode']:<14} {str(f['mechanism'] or '-'):<9} {f['offered_pps']:>8} {f['received_pps']:>9} {f['loss_pct']:>7} "
              f"{f['lab_cpu_s']:>9} {f['added_cpu_s']:>6} {str(f.get('cpu_us_per_packet', '-')):>13} {str(f.get('one_core_pps', '-')):>12}")
    print(f"\ndelay error at 50 ms configured, per packet at the router (target: fallback p99 < {TARGET_P99_MS} ms)")
    print(f"  {'mode':<14} {'load pps':>8} {'n':>5} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for d in figures["delay"]:
        e = d["error_ms"]
        print(f"  {d['mode']:<14} {d['load_pps']:>8} {e.get('n', 0):>5} {e.get('p50', 0):>7.3f} {e.get('p90', 0):>7.3f} "
              f"{e.get('p99', 0):>7.3f} {e.get('max', 0):>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
