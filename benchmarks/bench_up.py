"""How long `labctl up` and `down` take, next to the floor Docker itself sets.

    python3 benchmarks/bench_up.py [--repeat N] [--nodes 30] [--json] [--breakdown]

Two labs: the built-in ``teardown`` lab (3 nodes) and a generated chain of
routers with hosts on a LAN behind each (about ``--nodes`` nodes). For each,
``labctl.api.up``/``down`` is timed, and so is the *floor*: a bare docker-py
run doing only the work no lab tool can skip (the same internal bridge
networks, the same containers from the same image with NET_ADMIN/NET_RAW,
attached at the same addresses, started eight at a time, then removed), with
no sysctls, no routes, no agent and no reconciling. labctl/floor is then what
labctl's own work costs.

It prints figures and never asserts on time: timings depend on the machine.

The floor runs on networks of its own, named ``bench-floor-*`` and moved to
other subnets of labctl's pool (same prefix lengths, same host numbers), and
never at the same time as labctl. Its objects carry labctl's owner label, so
``labctl down --all`` removes them should this script be killed outright.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable, Iterable

import docker
import docker.errors
import docker.types
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labctl import api  # noqa: E402
from labctl.engine import default_engine  # noqa: E402
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
CHAIN_LAB = "bench-chain"
# From the issue: what "fast enough" means. Reported, never asserted.
TARGET_TEARDOWN_UP_S = 3.0
TARGET_CHAIN_RATIO = 1.5

err = Console(stderr=True, highlight=False)


# --- the labs ------------------------------------------------------------------

def chain_lab_yaml(nodes: int) -> str:
    """Routers r1..rK in a chain, each with a LAN of hosts: K = nodes/3, so two hosts per router at 30."""
    routers = max(1, round(nodes / 3))
    lans: dict[int, list[str]] = {r: [] for r in range(1, routers + 1)}
    for i in range(nodes - routers):
        r = i % routers + 1
        lans[r].append(f"h{r}-{len(lans[r]) + 1}")
    lines = [f"name: {CHAIN_LAB}", f"description: {routers} routers in a chain, {nodes - routers} hosts behind them (benchmark)", "nodes:"]
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
    ref: str  # what labctl.api.up takes: a lab name or a lab directory
    lab: str
    plan: LabPlan


# --- the floor -------------------------------------------------------------------

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

    names = {link.name: f"{FLOOR_PREFIX}{key}-{link.name}" for link in plan.links}
    return Floor(
        tuple(FloorNetwork(names[link.name], moved[link.name][1], shift(link.name, link.reserved)) for link in plan.links),
        tuple(FloorContainer(f"{FLOOR_PREFIX}{key}-{node.name}",
                             tuple((names[i.link], shift(i.link, i.address.ip)) for i in node.interfaces))
              for node in plan.nodes),
    )


def floor_up(client: docker.DockerClient, floor: Floor, image: str) -> None:
    low = client.api
    for net in floor.networks:
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(net.subnet), gateway=str(net.gateway))])
        low.create_network(net.name, driver="bridge", internal=True, ipam=ipam, labels=FLOOR_LABELS)

    def start(ctr: FloorContainer) -> None:
        (first, address), *rest = ctr.attachments
        host_config = low.create_host_config(cap_add=CAPABILITIES, network_mode=first)
        networking = low.create_networking_config({first: low.create_endpoint_config(ipv4_address=str(address))})
        ident = low.create_container(image, name=ctr.name, labels=FLOOR_LABELS, host_config=host_config,
                                     networking_config=networking, detach=True)["Id"]
        for network, address in rest:
            low.connect_container_to_network(ident, network, ipv4_address=str(address))
        low.start(ident)

    in_parallel(start, floor.containers)


def floor_down(client: docker.DockerClient, floor: Floor) -> None:
    low = client.api
    in_parallel(lambda ctr: low.remove_container(ctr.name, force=True, v=True), floor.containers)
    for net in floor.networks:
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


def measure(cases: list[Case], client: docker.DockerClient, image: str, repeat: int, labs_touched: set[str],
            others: list[int]) -> dict:
    engine = default_engine()
    pools = {case.key: subnet_pool(load_lab(case.ref).lab) for case in cases}
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        case.key: {"labctl": {"up": [], "down": []}, "floor": {"up": [], "down": []}} for case in cases}

    ours = {case.lab for case in cases} | {FLOOR_LAB}

    def note(case: Case, who: str, step: str, i: int, seconds: float) -> None:
        samples[case.key][who][step].append(seconds)
        others.append(len(other_containers(client, ours)))
        err.print(f"  {case.key:<10} {who:<6} {step:<4} {i + 1}/{repeat}  {seconds:6.2f} s")

    # Interleaved (labctl, floor, labctl, floor, ...) so a drift of the machine hits both alike.
    for i in range(repeat):
        for case in cases:
            labs_touched.add(case.lab)
            result: list[api.UpResult] = []
            note(case, "labctl", "up", i, timed(lambda: result.append(api.up(case.ref))))
            check_fresh(case, result[0], image)
            note(case, "labctl", "down", i, timed(lambda: api.down(case.lab)))
            # Placed just before its run (untimed), around whatever other labs hold by then.
            floor = floor_of(case.plan, case.key, engine.subnets_in_use(), pools[case.key])
            note(case, "floor", "up", i, timed(lambda: floor_up(client, floor, image)))
            note(case, "floor", "down", i, timed(lambda: floor_down(client, floor)))
    return {case.key: {"lab": case.lab, "nodes": len(case.plan.nodes), "links": len(case.plan.links),
                       "samples": samples[case.key], "summary": summarize(samples[case.key])} for case in cases}


def other_containers(client: docker.DockerClient, ours: set[str]) -> list[str]:
    """Running containers that are not this benchmark's: they compete for the CPUs and the engine."""
    return [c["Names"][0] for c in client.api.containers(filters={"status": "running"})
            if (c.get("Labels") or {}).get(LABEL_LAB) not in ours]


def check_fresh(case: Case, result: api.UpResult, image: str) -> None:
    """Each `up` must build the whole lab, or the figure measures a reconcile; the topology must be the floor's."""
    if result.image.tag != image:
        raise SystemExit(f"the node image changed during the run ({image} -> {result.image.tag}: agent code edited?); "
                         "figures would mix images and image builds")
    if result.report.kept:
        raise SystemExit(f"{case.lab}: `up` kept {len(result.report.kept)} objects from before; the lab was not down")
    planned = [(l.name, l.subnet) for l in case.plan.links]
    if [(l.name, l.subnet) for l in result.plan.links] != planned:
        err.print(f"[yellow]note: {case.lab} got other subnets than planned (another lab came up meanwhile?); "
                  "the floor keeps the planned topology, which has the same shape[/yellow]")


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict:
    summary = {}
    for step in ("up", "down"):
        labctl, floor = samples["labctl"][step], samples["floor"][step]
        summary[step] = {
            "labctl": {"median": statistics.median(labctl), "min": min(labctl)},
            "floor": {"median": statistics.median(floor), "min": min(floor)},
            "ratio": statistics.median(labctl) / statistics.median(floor),
        }
    return summary


def targets(results: dict, chain_key: str) -> list[dict]:
    teardown_up = results["teardown"]["summary"]["up"]["labctl"]["median"]
    chain_ratio = results[chain_key]["summary"]["up"]["ratio"]
    nodes = results[chain_key]["nodes"]
    return [
        {"target": f"teardown up < {TARGET_TEARDOWN_UP_S:g} s (median)", "value": teardown_up,
         "shown": f"{teardown_up:.2f} s", "met": teardown_up < TARGET_TEARDOWN_UP_S},
        {"target": f"labctl/floor up < {TARGET_CHAIN_RATIO:g} on {nodes} nodes (medians)", "value": chain_ratio,
         "shown": f"{chain_ratio:.2f}x", "met": chain_ratio < TARGET_CHAIN_RATIO},
    ]


# --- where labctl's time goes (--breakdown) -------------------------------------

class Stopwatch:
    """Per-call durations of wrapped methods, from any thread."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()

    def wrap(self, owner: object, attr: str, label: str | None = None) -> None:
        inner = getattr(owner, attr, None)
        if inner is None:
            err.print(f"[yellow]breakdown: the engine has no {attr} any more; not timed[/yellow]")
            return

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                with self.lock:
                    self.calls[label or attr].append(time.perf_counter() - started)

        setattr(owner, attr, wrapper)


def breakdown(case: Case, labs_touched: set[str]) -> dict:
    """One more `up` and `down` of a case, with the engine's steps timed (wrapped on one engine instance, not patched in labctl)."""
    engine = DockerEngine.connect()
    watch = Stopwatch()
    for attr in ("ensure_image", "subnets_in_use", "deploy", "destroy", "_allow_bridged_frames", "_create_network", "_create_nodes", "_create_node"):
        watch.wrap(engine, attr)
    watch.wrap(engine, "_exec_id", "_exec_id (agent setup)")
    for attr in ("create_container", "connect_container_to_network", "start", "exec_create", "exec_start", "exec_inspect",
                 "remove_container", "remove_network"):
        watch.wrap(engine.api, attr, f"api.{attr}")
    labs_touched.add(case.lab)
    up_s = timed(lambda: api.up(case.ref, engine=engine))
    down_s = timed(lambda: api.down(case.lab, engine=engine))
    return {"lab": case.lab, "up": up_s, "down": down_s,
            "calls": {name: {"count": len(d), "total": sum(d), "mean": sum(d) / len(d), "max": max(d)} for name, d in watch.calls.items()}}


# --- output ------------------------------------------------------------------------

def print_figures(out: Console, meta: dict, results: dict, goals: list[dict], split: dict | None) -> None:
    out.print(f"[bold]labctl up/down vs the Docker floor[/bold]: {meta['repeat']} runs each, median and min")
    out.print(f"{meta['docker']}, {meta['cpus']} CPUs, node image {meta['image']}")
    table = Table(show_edge=False, pad_edge=False)
    for column in ("lab", "size", "step", "labctl median", "labctl min", "floor median", "floor min", "labctl/floor"):
        table.add_column(column, justify="left" if column in ("lab", "size", "step") else "right")
    for key, result in results.items():
        for step in ("up", "down"):
            s = result["summary"][step]
            first = step == "up"
            table.add_row(key if first else "", f"{result['nodes']} nodes, {result['links']} links" if first else "", step,
                          f"{s['labctl']['median']:.2f} s", f"{s['labctl']['min']:.2f} s",
                          f"{s['floor']['median']:.2f} s", f"{s['floor']['min']:.2f} s", f"{s['ratio']:.2f}x")
    out.print(table)
    out.print("[bold]targets[/bold] (from the issue; reported, not asserted)")
    for goal in goals:
        mark = "[green]met[/green]" if goal["met"] else "[red]not met[/red]"
        out.print(f"  {goal['target']}: {goal['shown']}  {mark}")
    if meta["others_max"]:
        out.print(f"[yellow]note: up to {meta['others_max']} other containers were running during the runs;[/yellow]\n"
                  "[yellow]they share the CPUs and the engine, so these figures may read high[/yellow]")
    if split:
        out.print(f"[bold]breakdown[/bold] of one more labctl run of {split['lab']}: up {split['up']:.2f} s, down {split['down']:.2f} s")
        calls = Table(show_edge=False, pad_edge=False)
        for column in ("call", "count", "total", "mean", "max"):
            calls.add_column(column, justify="left" if column == "call" else "right")
        for name, c in sorted(split["calls"].items(), key=lambda kv: -kv[1]["total"]):
            calls.add_row(name, str(c["count"]), f"{c['total']:.2f} s", f"{c['mean'] * 1000:.0f} ms", f"{c['max'] * 1000:.0f} ms")
        out.print(calls)
        out.print("  (calls inside _create_node run eight at a time: their totals add up thread time, not wall time)")


# --- main --------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--nodes", type=int, default=30, help="nodes in the generated chain lab (default 30)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout (progress stays on stderr)")
    parser.add_argument("--breakdown", action="store_true", help="after the runs, time the engine's steps in one more labctl up/down of the chain")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.nodes < 3:
        parser.error("--nodes must be at least 3 (a router and two hosts)")
    return args


def refuse_running(engine, cases: list[Case]) -> None:
    """The benchmark takes its labs down; it must not take down someone's running lab."""
    for case in cases:
        if engine.nodes(case.lab) or engine.links(case.lab):
            if case.lab == CHAIN_LAB:
                err.print(f"removing {CHAIN_LAB}, left over from an earlier benchmark run")
                engine.destroy(CHAIN_LAB)
            else:
                raise SystemExit(f"lab '{case.lab}' is already up, and this benchmark would take it down; "
                                 f"run `labctl down {case.lab}` first if it may go")


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # so `kill` cleans up like Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    labs_touched: set[str] = set()
    client: docker.DockerClient | None = None
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        try:
            err.print("building the node image if needed (not timed)")
            image = api.build_image().tag
            if image != expected_tag():
                raise SystemExit(f"labctl uses {image}, but this checkout expects {expected_tag()}")
            client = docker.from_env(timeout=120, max_pool_size=PARALLEL + 4)
            engine = default_engine()
            chain_dir = Path(tmp) / CHAIN_LAB
            chain_dir.mkdir()
            (chain_dir / "lab.yaml").write_text(chain_lab_yaml(args.nodes))
            refs = {"teardown": "teardown", f"chain-{args.nodes}": str(chain_dir)}
            cases = []
            for key, ref in refs.items():
                loaded = load_lab(ref)
                cases.append(Case(key, ref, loaded.lab.name, plan_lab(loaded, engine.subnets_in_use(exclude_lab=loaded.lab.name))))
            refuse_running(engine, cases)
            if leftovers := remove_floor_objects(client):
                err.print(f"removed {len(leftovers)} floor objects left over from an earlier run")
            others: list[int] = []
            results = measure(cases, client, image, args.repeat, labs_touched, others)
            split = breakdown(cases[-1], labs_touched) if args.breakdown else None
            goals = targets(results, cases[-1].key)
            meta = {"docker": engine.version(), "cpus": _cpus(), "image": image, "repeat": args.repeat, "nodes": args.nodes,
                    "others_max": max(others, default=0)}
            if args.json:
                print(json.dumps({**meta, "cases": results, "targets": goals, "breakdown": split}, indent=2))
            else:
                print_figures(Console(highlight=False, width=None if sys.stdout.isatty() else 120), meta, results, goals, split)
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
            clean_up(labs_touched, client)


def clean_up(labs_touched: set[str], client: docker.DockerClient | None) -> None:
    for lab in sorted(labs_touched):
        try:
            if removed := api.down(lab):
                err.print(f"cleanup: took lab {lab} down ({len(removed)} objects)")
        except Exception as exc:  # keep cleaning; say what is left
            err.print(f"[red]cleanup: could not take {lab} down: {exc}; run `labctl down {lab}`[/red]")
    try:
        if removed := remove_floor_objects(client or docker.from_env()):
            err.print(f"cleanup: removed {len(removed)} floor objects")
    except Exception as exc:
        err.print(f"[red]cleanup: could not remove the floor's objects: {exc}; run `labctl down --all`[/red]")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
