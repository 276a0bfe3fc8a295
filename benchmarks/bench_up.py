"""How long `labctl up` and `down` take, next to the floor Docker itself sets, and labctl's memory.

    python3 benchmarks/bench_up.py [--sizes 3,30,100] [--repeat N] [--json] [--no-cli]

Labs: a three-node lab of the teardown lab's shape (client - router - server, pool
subnets, so it can run beside a running teardown lab) and, for every other size N, a
generated chain of routers with hosts on a LAN behind each (N/3 routers). For each,
``labctl.api.up``/``down`` is timed in this process, and so is the *floor*: a bare
docker-py run doing only the work no lab tool on Docker networks can skip (the same
internal bridge networks, the same containers from the same image with NET_ADMIN/NET_RAW,
attached at the same addresses, started eight at a time, then removed), with no sysctls,
no routes, no agent and no reconciling. labctl/floor is then what labctl costs against
that reference. A second reference, *containers*, is the same containers with no network
at all (``network_mode: none``): what Docker alone takes to start and remove them, below
which no wiring can go.

Then, once per lab (unless --no-cli), ``labctl up`` and ``labctl down`` as a user runs them,
each in its own process: wall time (with the interpreter's start-up) and that process's
peak RSS (``os.wait4``'s ru_maxrss). After that up, one idle node's memory is read from its
container's cgroup (memory.current on cgroup v2, memory.usage_in_bytes and rss on v1).

It prints figures and never asserts on time: timings depend on the machine and its load
(the count of other containers running during the runs is printed). Hold the engine lock
on a shared machine; --repeat 1 keeps a 100-node run within a few minutes.

The floor runs on networks of its own, named ``bench-floor-*`` and moved to other subnets
of labctl's pool (same prefix lengths, same host numbers), never at the same time as
labctl. Its objects carry labctl's owner label, so they are found and removed should this
script be killed outright (it removes what an earlier run left before it starts).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable, Iterable

import docker
import docker.errors
import docker.types
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from labctl import api  # noqa: E402
from labctl.engine.docker import DockerEngine  # noqa: E402
from labctl.engine.docker.client import PARALLEL  # noqa: E402
from labctl.engine.docker.deploy import CAPABILITIES  # noqa: E402
from labctl.engine.docker.image import expected_tag  # noqa: E402
from labctl.engine.docker.labels import LABEL_LAB, LABEL_OWNER, OWNER  # noqa: E402
from labctl.errors import UserError  # noqa: E402
from labctl.loader import load_lab  # noqa: E402
from labctl.plan import LabPlan, plan_lab, subnet_pool  # noqa: E402

FLOOR_LAB = "bench-floor"
FLOOR_PREFIX = "bench-floor-"
FLOOR_LABELS = {LABEL_OWNER: OWNER, LABEL_LAB: FLOOR_LAB}
LAB_PREFIX = "bench-up-"
# From the issue: what "fast enough" means. Reported, never asserted.
TARGETS = {"3 nodes up": 1.0, "100 nodes up": 30.0, "100 nodes down": 10.0}

err = Console(stderr=True, highlight=False)


# --- the labs ------------------------------------------------------------------

THREE_NODES = """name: {name}
description: the teardown lab's shape on pool subnets (benchmark)
nodes:
  client: {{}}
  router: {{role: router}}
  server: {{}}
links:
  - {{name: left, endpoints: [client, router]}}
  - {{name: right, endpoints: [router, server]}}
"""


def chain_lab_yaml(name: str, nodes: int) -> str:
    """Routers r1..rK in a chain, each with a LAN of hosts: K = nodes/3, so two hosts per router."""
    routers = max(1, round(nodes / 3))
    lans: dict[int, list[str]] = {r: [] for r in range(1, routers + 1)}
    for i in range(nodes - routers):
        r = i % routers + 1
        lans[r].append(f"h{r}-{len(lans[r]) + 1}")
    lines = [f"name: {name}", f"description: {routers} routers in a chain, {nodes - routers} hosts behind them (benchmark)", "nodes:"]
    lines += [f"  r{r}: {{role: router}}" for r in lans]
    lines += [f"  {host}: {{}}" for hosts in lans.values() for host in hosts]
    # No subnet anywhere: every link's subnet comes from the pool, as most labs will do.
    lines.append("links:")
    lines += [f"  - {{name: lan{r}, endpoints: [r{r}, {', '.join(hosts)}]}}" for r, hosts in lans.items() if hosts]
    lines += [f"  - {{name: core{r}, endpoints: [r{r}, r{r + 1}]}}" for r in range(1, routers)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Case:
    key: str  # how the figures name it
    path: Path  # the lab's directory
    lab: str
    plan: LabPlan


def write_case(root: Path, size: int, engine: DockerEngine) -> Case:
    name = f"{LAB_PREFIX}{size}"
    directory = root / name
    directory.mkdir()
    body = THREE_NODES.format(name=name) if size == 3 else chain_lab_yaml(name, size)
    (directory / "lab.yaml").write_text(body)
    loaded = load_lab(directory)
    return Case(f"{size} nodes", directory, name, plan_lab(loaded, engine.subnets_in_use(exclude_lab=name)))


# --- the floors ------------------------------------------------------------------

@dataclass(frozen=True)
class FloorNetwork:
    name: str
    subnet: IPv4Network
    gateway: IPv4Address


@dataclass(frozen=True)
class FloorContainer:
    name: str
    attachments: tuple[tuple[str, IPv4Address], ...]  # (network, address); the first is given at creation


@dataclass(frozen=True)
class Floor:
    networks: tuple[FloorNetwork, ...]
    containers: tuple[FloorContainer, ...]


def floor_of(plan: LabPlan, key: str, avoid: Iterable[IPv4Network], pool: IPv4Network) -> Floor:
    """The plan's topology on subnets of its own: each link moved to a free subnet of the same size, hosts keep their numbers."""
    taken = [*avoid, *(link.subnet for link in plan.links)]
    moved: dict[str, tuple[IPv4Network, IPv4Network]] = {}
    for link in plan.links:
        if link.subnet.prefixlen < pool.prefixlen:
            raise SystemExit(f"link {link.name} ({link.subnet}) is larger than the pool {pool}: no room for its floor copy")
        free = next((s for s in pool.subnets(new_prefix=link.subnet.prefixlen) if not any(s.overlaps(t) for t in taken)), None)
        if free is None:
            raise SystemExit(f"no free /{link.subnet.prefixlen} in {pool} for the floor copy of link {link.name}")
        taken.append(free)
        moved[link.name] = (link.subnet, free)

    def shift(link: str, address: IPv4Address) -> IPv4Address:
        old, new = moved[link]
        return IPv4Address(int(new.network_address) + int(address) - int(old.network_address))

    tag = key.replace(" nodes", "")
    names = {link.name: f"{FLOOR_PREFIX}{tag}-{link.name}" for link in plan.links}
    return Floor(
        tuple(FloorNetwork(names[link.name], moved[link.name][1], shift(link.name, link.reserved)) for link in plan.links),
        tuple(FloorContainer(f"{FLOOR_PREFIX}{tag}-{node.name}",
                             tuple((names[i.link], shift(i.link, i.address.ip)) for i in node.interfaces))
              for node in plan.nodes),
    )


def floor_up(client: docker.DockerClient, floor: Floor, image: str, networks: bool = True) -> None:
    """networks=False: the containers only, with no network at all (the `containers` reference)."""
    low = client.api
    if networks:
        for net in floor.networks:
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(net.subnet), gateway=str(net.gateway))])
            low.create_network(net.name, driver="bridge", internal=True, ipam=ipam, labels=FLOOR_LABELS)

    def start(ctr: FloorContainer) -> None:
        (first, address), *rest = ctr.attachments
        host_config = low.create_host_config(cap_add=CAPABILITIES, network_mode=first if networks else "none")
        networking = low.create_networking_config({first: low.create_endpoint_config(ipv4_address=str(address))}) if networks else None
        ident = low.create_container(image, name=ctr.name, labels=FLOOR_LABELS, host_config=host_config,
                                     networking_config=networking, detach=True)["Id"]
        for network, address in rest if networks else ():
            low.connect_container_to_network(ident, network, ipv4_address=str(address))
        low.start(ident)

    in_parallel(start, floor.containers)


def floor_down(client: docker.DockerClient, floor: Floor, networks: bool = True) -> None:
    low = client.api
    in_parallel(lambda ctr: low.remove_container(ctr.name, force=True, v=True), floor.containers)
    for net in floor.networks if networks else ():
        low.remove_network(net.name)


def in_parallel(work: Callable, items: Iterable) -> None:
    """Eight at a time, as labctl does; on any error or Ctrl-C, let calls in flight finish so cleanup sees their objects."""
    items = list(items)
    pool = ThreadPoolExecutor(max_workers=min(PARALLEL, len(items)), thread_name_prefix="bench-floor")
    futures = [pool.submit(work, item) for item in items]
    try:
        for future in futures:
            future.result()
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise
    finally:
        pool.shutdown(wait=True)


def remove_floor_objects(client: docker.DockerClient) -> list[str]:
    """Everything labelled as the floor's, whoever left it (this run, or one that died)."""
    label = f"{LABEL_LAB}={FLOOR_LAB}"
    removed = []
    for ctr in client.containers.list(all=True, filters={"label": label}, ignore_removed=True):
        try:
            ctr.remove(force=True, v=True)
            removed.append(ctr.name)
        except docker.errors.NotFound:
            pass
    for net in client.networks.list(filters={"label": label}):
        try:
            net.remove()
            removed.append(net.name)
        except docker.errors.NotFound:
            pass
    return removed


# --- measuring -------------------------------------------------------------------

def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def cli(*argv: str) -> dict:
    """One labctl command in its own process: wall seconds, peak RSS (MB), exit status."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "labctl", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"labctl {' '.join(argv)} exited {code}: {stderr.strip()[-400:]}")
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": usage.ru_maxrss / 1024}


def node_memory(container_id: str) -> dict:
    """An idle node's memory as its cgroup counts it (bytes): v2 memory.current, or v1's usage and rss."""
    for path in (f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope", f"/sys/fs/cgroup/docker/{container_id}"):
        if os.path.exists(f"{path}/memory.current"):
            return {"cgroup": "v2", "memory.current": int(Path(f"{path}/memory.current").read_text())}
    v1 = f"/sys/fs/cgroup/memory/docker/{container_id}"
    if os.path.exists(f"{v1}/memory.usage_in_bytes"):
        stat = dict(line.split() for line in Path(f"{v1}/memory.stat").read_text().splitlines())
        return {"cgroup": "v1", "memory.usage_in_bytes": int(Path(f"{v1}/memory.usage_in_bytes").read_text()),
                "rss": int(stat["total_rss"]), "cache": int(stat["total_cache"])}
    return {"cgroup": "not found"}


def other_containers(client: docker.DockerClient) -> int:
    """Running containers that are not this benchmark's: they compete for the CPUs and the engine."""
    return sum(1 for c in client.api.containers(filters={"status": "running"})
               if not str((c.get("Labels") or {}).get(LABEL_LAB, "")).startswith((LAB_PREFIX, FLOOR_LAB)))


def measure(cases: list[Case], client: docker.DockerClient, engine: DockerEngine, image: str, repeat: int,
            with_cli: bool, others: list[int]) -> dict:
    results = {}
    for case in cases:
        samples = {who: {"up": [], "down": []} for who in ("labctl", "floor", "containers")}
        pool = subnet_pool(load_lab(case.path).lab)

        def note(who: str, step: str, i: int, seconds: float) -> None:
            samples[who][step].append(seconds)
            others.append(other_containers(client))
            err.print(f"  {case.key:<10} {who:<10} {step:<4} {i + 1}/{repeat}  {seconds:6.2f} s")

        # Interleaved (labctl, floor, containers, labctl, ...) so a drift of the machine hits all alike.
        for i in range(repeat):
            result: list[api.UpResult] = []
            note("labctl", "up", i, timed(lambda: result.append(api.up(case.path, engine=engine))))
            check_fresh(case, result[0], image)
            note("labctl", "down", i, timed(lambda: api.down(case.path, engine=engine)))
            # Placed just before its run (untimed), around whatever other labs hold by then.
            floor = floor_of(case.plan, case.key, engine.subnets_in_use(), pool)
            note("floor", "up", i, timed(lambda: floor_up(client, floor, image)))
            note("floor", "down", i, timed(lambda: floor_down(client, floor)))
            note("containers", "up", i, timed(lambda: floor_up(client, floor, image, networks=False)))
            note("containers", "down", i, timed(lambda: floor_down(client, floor, networks=False)))
        entry = {"nodes": len(case.plan.nodes), "links": len(case.plan.links), "samples": samples, "summary": summarize(samples)}
        if with_cli:
            up = cli("up", str(case.path))
            err.print(f"  {case.key:<10} labctl up (CLI): {up['seconds']:.2f} s, peak RSS {up['peak_rss_mb']:.0f} MB")
            idle = engine.client.containers.get(f"labctl-{case.lab}-{case.plan.nodes[-1].name}")
            time.sleep(2)  # let the node settle after its setup
            memory = node_memory(idle.id)
            down = cli("down", str(case.path))
            err.print(f"  {case.key:<10} labctl down (CLI): {down['seconds']:.2f} s, peak RSS {down['peak_rss_mb']:.0f} MB")
            entry["cli"] = {"up": up, "down": down, "idle_node": {"node": case.plan.nodes[-1].name, **memory}}
        results[case.key] = entry
    return results


def check_fresh(case: Case, result: api.UpResult, image: str) -> None:
    """Each `up` must build the whole lab, or the figure measures a reconcile."""
    if result.image.tag != image:
        raise SystemExit(f"the node image changed during the run ({image} -> {result.image.tag}: agent code edited?)")
    if result.report.kept:
        raise SystemExit(f"{case.lab}: `up` kept {len(result.report.kept)} objects from before; the lab was not down")


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict:
    summary = {}
    for step in ("up", "down"):
        med = {who: statistics.median(samples[who][step]) for who in samples}
        summary[step] = {**{who: {"median": med[who], "min": min(samples[who][step])} for who in samples},
                         "ratio": med["labctl"] / med["floor"], "ratio_containers": med["labctl"] / med["containers"]}
    return summary


def targets(results: dict) -> list[dict]:
    goals = []
    for name, limit in TARGETS.items():
        size, _, step = name.rpartition(" ")
        if size in results:
            value = results[size]["summary"][step]["labctl"]["median"]
            goals.append({"target": f"{name} < {limit:g} s (median, API)", "value": value, "met": value < limit})
    return goals


# --- output ------------------------------------------------------------------------

def print_figures(out: Console, meta: dict, results: dict, goals: list[dict]) -> None:
    out.print(f"[bold]labctl up/down vs the Docker floor[/bold]: {meta['repeat']} run(s) each, median (min)")
    out.print(f"{meta['docker']}, {meta['cpus']} CPUs, links wired by: {meta['wiring']}, node image {meta['image']}")
    table = Table(show_edge=False, pad_edge=False)
    for column in ("lab", "step", "labctl", "floor", "labctl/floor", "containers", "labctl/containers"):
        table.add_column(column, justify="left" if column in ("lab", "step") else "right")
    for key, result in results.items():
        for step in ("up", "down"):
            s = result["summary"][step]
            table.add_row(f"{key}, {result['links']} links" if step == "up" else "", step,
                          f"{s['labctl']['median']:.2f} s ({s['labctl']['min']:.2f})",
                          f"{s['floor']['median']:.2f} s ({s['floor']['min']:.2f})", f"{s['ratio']:.2f}x",
                          f"{s['containers']['median']:.2f} s ({s['containers']['min']:.2f})", f"{s['ratio_containers']:.2f}x")
    out.print(table)
    if any("cli" in r for r in results.values()):
        out.print("[bold]labctl as a user runs it[/bold] (one process per command, with the interpreter's start-up)")
        table = Table(show_edge=False, pad_edge=False)
        for column in ("lab", "up", "peak RSS", "down", "peak RSS", "idle node memory"):
            table.add_column(column, justify="left" if column == "lab" else "right")
        for key, result in results.items():
            c = result.get("cli")
            if c:
                idle = c["idle_node"]
                shown = (f"{idle['memory.current'] / 2**20:.1f} MiB (memory.current)" if "memory.current" in idle
                         else f"{idle['memory.usage_in_bytes'] / 2**20:.1f} MiB usage, {idle['rss'] / 2**20:.1f} MiB rss (cgroup v1)"
                         if "rss" in idle else idle["cgroup"])
                table.add_row(key, f"{c['up']['seconds']:.2f} s", f"{c['up']['peak_rss_mb']:.0f} MB", f"{c['down']['seconds']:.2f} s",
                              f"{c['down']['peak_rss_mb']:.0f} MB", shown)
        out.print(table)
    out.print("[bold]targets[/bold] (from the issue; reported, not asserted)")
    for goal in goals:
        mark = "[green]met[/green]" if goal["met"] else "[red]not met[/red]"
        out.print(f"  {goal['target']}: {goal['value']:.2f} s  {mark}")
    if meta["others_max"]:
        out.print(f"[yellow]note: {meta['others_min']}..{meta['others_max']} other containers were running during the runs, "
                  f"load average {meta['load']}; they share the CPUs and the engine, so these figures may read high[/yellow]")


# --- main --------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,30,100", help="lab sizes in nodes, comma-separated (3: the teardown shape; default 3,30,100)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement (default 1)")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI runs (peak RSS, idle node memory)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (progress stays on stderr)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes numbers, e.g. 3,30,100")
    if not args.sizes or min(args.sizes) < 3:
        parser.error("every size must be at least 3 (a router and two hosts)")
    return args


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # so `kill` cleans up like Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    client: docker.DockerClient | None = None
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        try:
            err.print("building the node image if needed (not timed)")
            image = api.build_image().tag
            if image != expected_tag():
                raise SystemExit(f"labctl uses {image}, but this checkout expects {expected_tag()}")
            client = docker.from_env(timeout=120, max_pool_size=PARALLEL + 4)
            engine = DockerEngine.connect()
            for size in args.sizes:
                cases.append(write_case(Path(tmp), size, engine))
                if engine.nodes(cases[-1].lab) or engine.links(cases[-1].lab):
                    err.print(f"removing {cases[-1].lab}, left over from an earlier benchmark run")
                    api.down(cases[-1].path, engine=engine)
            if leftovers := remove_floor_objects(client):
                err.print(f"removed {len(leftovers)} floor objects left over from an earlier run")
            others: list[int] = []
            results = measure(cases, client, engine, image, args.repeat, not args.no_cli, others)
            meta = {"docker": engine.version(), "cpus": len(os.sched_getaffinity(0)), "image": image, "repeat": args.repeat,
                    "wiring": wiring_of(engine),
                    "others_min": min(others, default=0), "others_max": max(others, default=0),
                    "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": _commit()}
            goals = targets(results)
            if args.json:
                print(json.dumps({**meta, "cases": results, "targets": goals}, indent=2))
            else:
                print_figures(Console(highlight=False, width=None if sys.stdout.isatty() else 140), meta, results, goals)
            return 0
        except KeyboardInterrupt:
            err.print("interrupted")
            return 130
        except UserError as exc:
            err.print(f"[red]error:[/red] {exc}")
            return exc.exit_code
        finally:
            # Cleanup must finish even if Ctrl-C is pressed again.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            clean_up(cases, client)


def clean_up(cases: list[Case], client: docker.DockerClient | None) -> None:
    for case in cases:
        try:
            if removed := api.down(case.path):
                err.print(f"cleanup: took lab {case.lab} down ({len(removed)} objects)")
        except Exception as exc:  # keep cleaning; say what is left
            err.print(f"[red]cleanup: could not take {case.lab} down: {exc}; run `labctl down {case.lab}`[/red]")
    try:
        if removed := remove_floor_objects(client or docker.from_env()):
            err.print(f"cleanup: removed {len(removed)} floor objects")
    except Exception as exc:
        err.print(f"[red]cleanup: could not remove the floor's objects: {exc}[/red]")


def wiring_of(engine: DockerEngine) -> str:
    wiring = getattr(engine, "wiring", "docker")  # a labctl from before links were wired from the host has no say
    return "the host (bridges and veths)" if wiring == "host" else f"Docker networks ({getattr(engine, 'wiring_unavailable', 'always')})"


def _commit() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
