"""Issue 11 on the real engine: one writer per lab, health not presence, containment, rollback drills.

Every drill starts `python3 -m labctl` as a user would, hurts it (SIGINT, SIGKILL, a second
command at once) and then asks the engine and each node's agent what is left: a lab is
either whole (status healthy, every node configured: link-named interfaces, no default
route) or gone (no object of it at all), never half.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labctl import api, locking
from labctl.engine.docker.labels import bridge_name, network_name

from .conftest import THREE_NODES, lab_objects

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parent.parent
# An edit that replaces nodes (their sysctls change) and adds one: a reconcile that removes before it creates.
EDITED = THREE_NODES.replace("  client: {}", "  client: {sysctls: {net.ipv4.tcp_timestamps: 0}}").replace(
    "  server: {}", "  server: {sysctls: {net.ipv4.tcp_timestamps: 0}}\n  backup: {}").replace(
    "endpoints: [router, server]", "endpoints: [router, server, backup]")


def labctl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labctl", *argv], capture_output=True, text=True, timeout=300, cwd=ROOT)


def start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labctl", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def everything_of(engine, lab: str) -> list[str]:
    return lab_objects(engine, lab) + [v.name for v in engine.client.volumes.list(filters={"label": f"org.labctl.lab={lab}"})]


def outcome(engine, lab: str, nodes: int | None = None) -> str:
    """'gone' (nothing of the lab), 'whole' (healthy, every node configured), else what status says."""
    if not everything_of(engine, lab):
        return "gone"
    [state] = api.status(lab, engine=engine)
    if state.health != "healthy":
        return f"{state.health}: {'; '.join(state.problems)}"
    for node in state.nodes:
        names = [i["name"] for i in node.interfaces]
        if not node.configured or any(n.startswith("eth") for n in names) or any(r["to"] == "default" for r in node.routes):
            return f"unconfigured node {node.name}: {names} {node.routes}"
    if nodes is not None and len(state.nodes) != nodes:
        return f"{len(state.nodes)} nodes, not {nodes}"
    return "whole"


def test_another_lab_file_with_a_running_labs_name_is_refused_naming_both(engine, node_image, make_lab, tmp_path):
    first = make_lab(THREE_NODES)
    api.up(first, engine=engine)
    before = sorted(everything_of(engine, first.name))
    ids = sorted(c.id for c in engine.client.containers.list(all=True, filters={"label": f"org.labctl.lab={first.name}"}))
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "lab.yaml").write_text((first / "lab.yaml").read_text().replace("  server: {}", "  server: {}\n  extra: {}")
                                    .replace("endpoints: [router, server]", "endpoints: [router, server, extra]"))
    refused = labctl("up", str(other))
    assert refused.returncode == 2, refused.stderr
    assert "Traceback" not in refused.stderr
    assert str((first / "lab.yaml").resolve()) in refused.stderr and str((other / "lab.yaml").resolve()) in refused.stderr
    assert sorted(everything_of(engine, first.name)) == before
    assert sorted(c.id for c in engine.client.containers.list(all=True, filters={"label": f"org.labctl.lab={first.name}"})) == ids
    assert outcome(engine, first.name, 3) == "whole"


def test_a_second_up_waits_for_the_lab_lock_or_refuses_with_no_wait(engine, node_image, make_lab):
    path = make_lab(THREE_NODES)
    with locking.lab_lock(engine.ident, path.name):
        refused = labctl("up", str(path), "--no-wait")
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert f"held by pid {os.getpid()}" in refused.stderr
        waiting = start("up", str(path))
        time.sleep(3)
        assert waiting.poll() is None and lab_objects(engine, path.name) == []
    out, err = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, err
    assert f"waiting for the lab lock held by pid {os.getpid()}" in err
    assert outcome(engine, path.name, 3) == "whole"


def test_two_ups_from_nothing_one_waits_and_finds_it_up(engine, node_image, make_lab):
    path = make_lab(THREE_NODES)
    procs = [start("up", str(path)) for _ in range(2)]
    results = [(p.communicate(timeout=180), p.returncode) for p in procs]
    for (out, err), code in results:
        assert code == 0 and "Traceback" not in err and "409" not in err and "Conflict" not in err, err
    assert sorted("already up, nothing changed" in out for (out, _), _ in results) == [False, True]
    assert outcome(engine, path.name, 3) == "whole"


def test_two_runs_on_one_lab_are_serialized_and_both_pass(engine, node_image, tmp_path):
    name = f"g{os.getpid() % 100000}run"
    lab_dir = tmp_path / name
    shutil.copytree(ROOT / "tests" / "labs" / "runlab", lab_dir)
    (lab_dir / "lab.yaml").write_text((lab_dir / "lab.yaml").read_text().replace("name: runlab", f"name: {name}"))
    try:
        api.up(lab_dir, engine=engine)
        procs = [start("run", str(lab_dir), "-s", "drop-one", "--results", str(tmp_path / f"r{k}")) for k in range(2)]
        results = [(p.communicate(timeout=300), p.returncode) for p in procs]
        for (out, err), code in results:
            assert code == 0, out + err  # neither run's connection was cut by the other
            assert "1 of 1 run(s) passed" in out
        assert sum("waiting for the lab lock held by pid" in err for (_, err), _ in results) == 1
    finally:
        engine.destroy(name)


def test_a_restarted_node_is_stale_in_status_and_repaired_by_up(engine, node_image, make_lab):
    path = make_lab(THREE_NODES)
    api.up(path, engine=engine)
    # A restarted container has the engine's interfaces back and none of its setup: what a killed up leaves.
    engine.client.containers.get(f"labctl-{path.name}-client").restart(timeout=0)
    [state] = api.status(path.name, engine=engine)
    assert state.health == "stale"
    assert any(p.startswith("node client: it was restarted since its setup") for p in state.problems), state.problems
    shown = labctl("status", path.name)
    assert shown.returncode == 0 and "is stale" in shown.stdout and f"labctl down {path.name}" in shown.stdout
    repaired = api.up(path, engine=engine)
    assert f"labctl-{path.name}-client" in repaired.report.created and f"labctl-{path.name}-server" in repaired.report.kept
    assert outcome(engine, path.name, 3) == "whole"


def test_sigkill_during_up_is_stale_then_repaired_by_up_or_removed_by_down(engine, node_image, make_lab):
    """Drill: SIGKILL `labctl up` at each stage it reports; then status, then up (even) or down (odd)."""
    path = make_lab(THREE_NODES)
    stages = [r"link right \S+ made", r"node \w+ up"]
    seen = []
    for k, stage in enumerate(stages * 2):
        proc = start("up", str(path))
        for line in proc.stderr:
            if re.search(stage, line):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
        left = outcome(engine, path.name)
        seen.append(left)
        assert left.startswith("stale"), left  # something was made; no complete up recorded it
        if k % 2 == 0:
            assert labctl("up", str(path)).returncode == 0
            assert outcome(engine, path.name, 3) == "whole"
            api.down(path, engine=engine)
        else:
            down = labctl("down", str(path))
            assert down.returncode == 0, down.stderr
        assert everything_of(engine, path.name) == []
    print(f"\nSIGKILL drill: {len(seen)} kills, left: {seen}")


def test_nodes_have_no_route_to_the_host_and_the_host_drops_what_reaches_it(engine, node_image, make_lab):
    path = make_lab(THREE_NODES)
    plan = api.up(path, engine=engine).plan
    for node in plan.nodes:
        for bridge in node.blocked:
            asked = engine.exec(plan.lab, node.name, ["ip", "route", "get", str(bridge)])
            assert asked.exit_code != 0 and "Permission denied" in asked.stderr, (node.name, asked)  # prohibit
        shown = engine.exec(plan.lab, node.name, ["ip", "-j", "route", "show"]).stdout
        assert all(f'"type":"prohibit","dst":"{b}"' in shown for b in node.blocked), shown
        forward = engine.exec(plan.lab, node.name, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
        assert forward == ("1" if node.role == "router" else "0"), node.name

    def host_drops() -> int:
        """Packets the host dropped from lab bridges: sent to it (INPUT) or to be routed on (FORWARD, DOCKER-USER)."""
        total = 0
        for chain, comment in (("INPUT", "labctl: nothing from a lab to the host"), ("FORWARD", "labctl: nothing routed out of a lab"),
                               ("DOCKER-USER", "labctl: nothing routed out of a lab")):
            listed = subprocess.run(["iptables-nft", "-w", "-L", chain, "-v", "-x", "-n"], capture_output=True, text=True).stdout
            [line] = [l for l in listed.splitlines() if comment in l]
            total += int(line.split()[0])
        return total

    routed = subprocess.run(["iptables-nft", "-w", "-C", "DOCKER-USER", "-i", "lcbr-+", "-m", "comment", "--comment",
                             "labctl: nothing routed out of a lab", "-j", "DROP"], capture_output=True)
    assert routed.returncode == 0
    # Even a node that undoes its own prohibit route, and sends to the bridge's own MAC address so
    # that no ARP answer is needed (a bridge wired from the host holds no address to answer for),
    # reaches nothing on the host: the packets stop at the host's rules (counted: INPUT where the
    # bridge holds the address, as a Docker network's does; FORWARD where nobody does) and no reply
    # comes. Lab-internal: the bridge is the lab's.
    bridge = str(plan.node("client").blocked[0])
    device = bridge_name(network_name(plan.key, "left"))
    [shown] = json.loads(subprocess.run(["ip", "-j", "link", "show", "dev", device], capture_output=True, text=True, check=True).stdout)
    before = host_drops()
    assert engine.exec(plan.lab, "client", ["ip", "route", "del", "prohibit", f"{bridge}/32"]).exit_code == 0
    assert engine.exec(plan.lab, "client", ["ip", "neigh", "replace", bridge, "lladdr", shown["address"], "dev", "left",
                                            "nud", "permanent"]).exit_code == 0
    ping = engine.exec(plan.lab, "client", ["ping", "-c", "3", "-i", "0.2", "-W", "1", bridge])
    assert ping.exit_code != 0 and " 0 received" in ping.stdout, ping.stdout
    assert host_drops() >= before + 3


def drill_sigint(engine, path: Path, delays: list[float], prepare=None) -> list[tuple[float, str]]:
    results = []
    for delay in delays:
        if prepare:
            prepare()
        proc = start("up", str(path))
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        # 0: it finished first; 130: labctl's Ctrl-C; -2: Python's own, when SIGINT lands as it exits.
        assert proc.returncode in (0, 130, -signal.SIGINT), err
        results.append((delay, outcome(engine, path.name)))
    return results


def test_sigint_at_any_moment_of_up_leaves_the_lab_whole_or_gone(engine, node_image, make_lab):
    path = make_lab(THREE_NODES)
    delays = [0.2, 0.6, 1.0, 1.4, 1.8, 2.2, 2.6, 3.0]
    results = drill_sigint(engine, path, delays, prepare=lambda: engine.destroy(path.name))
    print(f"\nSIGINT during up: {results}")
    assert all(left in ("whole", "gone") for _, left in results), results


def test_sigint_at_any_moment_of_a_reconcile_leaves_the_lab_as_it_was_or_gone(engine, node_image, make_lab):
    path = make_lab(THREE_NODES)
    original = (path / "lab.yaml").read_text()
    edited = original.replace(THREE_NODES.strip("\n"), EDITED.strip("\n"))
    assert edited != original

    def as_it_was_then_edited() -> None:
        (path / "lab.yaml").write_text(original)
        api.up(path, engine=engine)
        (path / "lab.yaml").write_text(edited)

    results = drill_sigint(engine, path, [0.8, 1.3, 1.8, 2.3, 2.8, 3.5], prepare=as_it_was_then_edited)
    print(f"\nSIGINT during a reconcile: {results}")
    assert all(left in ("whole", "gone") for _, left in results), results
