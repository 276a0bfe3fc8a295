"""Scenarios on the real engine: steps, rules, observers, run directories, verdicts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labctl import api
from labctl.analyze.segments import load_segments
from labctl.engine.tracefs import TRACEFS
from labctl.rundir import read_json, read_jsonl

pytestmark = pytest.mark.engine

LABS = Path(__file__).parent / "labs"
RUNLAB = LABS / "runlab"


@pytest.fixture(scope="module")
def runlab(engine, node_image):
    engine.destroy("runlab")
    api.up(RUNLAB, engine=engine)
    yield RUNLAB
    engine.destroy("runlab")


def labctl(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABCTL_LABS_PATH": str(LABS)}
    return subprocess.run([sys.executable, "-m", "labctl", *argv], capture_output=True, text=True, env=env, timeout=300, **kwargs)


def test_every_step_kind_does_what_it_says(engine, runlab, tmp_path):
    [result] = api.run(runlab, ["every-step"], engine=engine, root=tmp_path)
    failed = [v for v in result.verdicts if not v.passed]
    assert result.passed, json.dumps([v.to_json() for v in failed], indent=1, default=str)
    kinds = {record["kind"] for record in read_jsonl(result.path / "steps.jsonl") if "kind" in record}
    assert kinds >= {"sysctl", "exec", "listen", "connect", "accept", "setsockopt", "rule", "send", "recv", "wait",
                     "unrule", "shutdown", "close", "kill_socket", "sleep"}
    actions = [r["action"] for r in read_jsonl(result.path / "rules.jsonl")]
    assert actions.count("delay") == 1 and actions.count("duplicate") == 1 and actions.count("drop") == 1
    # The sysctl step is undone when the run ends.
    assert engine.exec("runlab", "server", ["sysctl", "-n", "net.ipv4.tcp_fin_timeout"]).stdout.strip() == "60"


def test_run_directory_holds_everything_analysis_needs(engine, runlab, tmp_path):
    [result] = api.run(runlab, ["drop-one"], engine=engine, root=tmp_path)
    run = read_json(result.path / "run.json")
    assert run["schema_version"] == 1 and run["status"] == "complete"
    assert run["scenario"] == "drop-one" and run["lab"] == "runlab" and run["image"].startswith("labctl-node:")
    assert set(run["nodes"]) == {"client", "router", "server"}
    captures = sorted(p.name for p in (result.path / "pcaps").iterdir())
    assert captures == ["client-left.pcap", "router-left.pcap", "router-right.pcap", "server-right.pcap"]
    sampled = [r for r in read_jsonl(result.path / "states.jsonl") if r.get("source") == "sample"]
    assert {r["node"] for r in sampled} >= {"client", "server"}
    assert read_json(result.path / "verdicts.json")["verdicts"]


def test_a_rule_drops_exactly_one_packet_in_ten_runs_of_ten(engine, runlab, tmp_path):
    dropped = []
    for _ in range(10):
        [result] = api.run(runlab, ["drop-one"], engine=engine, root=tmp_path)
        assert result.passed, [v for v in result.verdicts if not v.passed]
        actions = [r for r in read_jsonl(result.path / "rules.jsonl") if r["action"] == "drop"]
        segments, _ = load_segments(result.path, read_json(result.path / "run.json")["nodes"])
        sent = {s.transmission for s in segments if s.node == "client" and s.length > 0}
        arrived = {s.transmission for s in segments if s.node == "server" and s.length > 0}
        dropped.append((len(actions), len(sent - arrived)))
    # Exactly one drop logged, and exactly one data transmission that left the client never arrived.
    assert dropped == [(1, 1)] * 10


def test_a_rule_diverts_only_the_flow_it_names_to_userspace(engine, runlab, tmp_path):
    [result] = api.run(runlab, ["named-flow"], engine=engine, root=tmp_path)
    assert result.passed, [v for v in result.verdicts if not v.passed]
    queue = json.loads((result.path / "logs" / "router-queue.json").read_text())
    # The engine saw the named connection, both ways, and no packet of the other one.
    ports = {tuple(int(end.rsplit(":", 1)[1]) for end in seen.split(">")) for seen in queue["seen"]}
    assert ports and all(6002 in pair for pair in ports) and not any(6003 in pair for pair in ports), queue["seen"]
    # Every packet of the named connection that entered the router was queued, once; nothing else was.
    nodes = read_json(result.path / "run.json")["nodes"]
    client, server = ([a.split("/")[0] for a in nodes[n]["interfaces"].values()] for n in ("client", "server"))
    segments, _ = load_segments(result.path, nodes)
    entering = [s for s in segments if s.node == "router" and 6002 in (s.sport, s.dport)
                and (s.iface == "left") == (s.src in client)]
    assert entering and queue["queued"] == len(entering)
    counted = {chain: sum(j["packets"] for j in queue["jumps"] if j["chain"] == chain) for chain in ("PREROUTING", "OUTPUT")}
    assert counted == {"PREROUTING": len(entering), "OUTPUT": 0}
    assert {j["match"] for j in queue["jumps"]} == (
        {f"-s {c}/32 -d {s}/32 -p tcp -m tcp --dport 6002" for c in client for s in server}
        | {f"-s {s}/32 -d {c}/32 -p tcp -m tcp --sport 6002" for c in client for s in server})


def test_a_held_segment_released_after_a_reconnect_arrives_after_the_new_handshake(engine, node_image, tmp_path):
    engine.destroy("teardown")
    try:
        results = api.run("teardown", ["old-duplicate"], {"timestamps": "0"}, engine=engine, root=tmp_path)
    finally:
        engine.destroy("teardown")
    [result] = results  # -p fixes the matrix axis: one run
    assert result.passed, [v for v in result.verdicts if not v.passed]
    segments, connections = load_segments(result.path, read_json(result.path / "run.json")["nodes"])
    at_server = [s for s in segments if s.node == "server"]
    syns = [s for s in at_server if s.flags == "S"]
    assert len(syns) == 2, "two incarnations of the same 4-tuple"
    old = [s for s in at_server if s.payload.startswith(b"OLD-DATA")]
    assert len(old) == 3
    second_handshake = syns[1].t
    assert old[0].t < second_handshake < old[1].t < old[2].t
    assert old[0].incarnation == 0 and old[2].incarnation == 1


def test_a_run_mounts_tracefs_itself_so_kernel_events_and_states_decide(engine, runlab, tmp_path):
    # On a fresh machine tracefs is not mounted; no test may count on another (doctor) having mounted it.
    subprocess.run(["umount", str(TRACEFS)], capture_output=True)  # fails when it is not mounted: nothing to undo
    assert not (TRACEFS / "events").is_dir(), f"{TRACEFS} is still mounted (busy?): this test cannot start from a fresh machine"
    [result] = api.run(runlab, ["kernel-events"], engine=engine, root=tmp_path)
    assert result.passed, [v for v in result.verdicts if not v.passed]
    observers = read_json(result.path / "run.json")["observers"]
    assert observers["tracepoints"] and observers["made_available"] == [f"tracefs mounted at {TRACEFS}"]
    assert "unavailable" not in observers
    assert [r for r in read_jsonl(result.path / "events.jsonl") if r.get("event") == "tcp_receive_reset" and r.get("node") == "client"]


def test_failed_expectations_exit_1_with_the_evidence(runlab):
    result = labctl("run", "runlab", "-s", "fails", "--json")
    assert result.returncode == 1, result.stderr
    [outcome] = json.loads(result.stdout)
    verdicts = {v["description"]: v for v in outcome["verdicts"]}
    fin = verdicts["exactly 3 [F] segments from client to server"]
    assert (fin["passed"], fin["outcome"], fin["details"]["count"]) == (False, "fail", 1)
    assert fin["observed"] == f"1 seen: #{fin['evidence'][0]['transmission']}"
    assert "[FA] seq 1 ack 1 len 0" in fin["evidence"][0]["summary"]
    syn = verdicts["no [S] segments from client"]
    assert not syn["passed"] and syn["evidence"][0]["summary"].endswith("[S] seq 0 ack 0 len 0")


def test_bad_scenario_exits_2_before_anything_runs(runlab, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  - {node: client, send: {sock: nope, data: x}}\n")
    before = list((Path("results") / "runlab").glob("*")) if Path("results/runlab").exists() else []
    result = labctl("run", "runlab", "-s", str(bad))
    assert result.returncode == 2
    assert "bad.yaml:3: steps[0].send.sock: no socket named 'nope'" in result.stderr
    after = list((Path("results") / "runlab").glob("*")) if Path("results/runlab").exists() else []
    assert before == after


def test_an_interrupted_run_is_incomplete_readable_and_leaves_no_orphans(engine, runlab, tmp_path):
    env = {**os.environ, "LABCTL_LABS_PATH": str(LABS)}
    proc = subprocess.Popen([sys.executable, "-m", "labctl", "run", "runlab", "-s", "slow", "--results", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    steps = None
    while time.time() < deadline:
        found = list(tmp_path.glob("runlab/*/steps.jsonl"))
        if found and any(r.get("kind") == "send" for r in read_jsonl(found[0])):
            steps = found[0]
            break
        time.sleep(0.2)
    assert steps is not None, "the run never reached its send step"
    time.sleep(0.5)  # inside the long sleep step now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err  # interrupted: neither a pass nor the lab's failure
    assert "interrupted" in err
    run = read_json(steps.parent / "run.json")
    assert run["status"] == "incomplete" and "interrupted" in run["reason"]
    assert [r["kind"] for r in read_jsonl(steps) if "kind" in r] == ["listen", "connect", "accept", "send"]
    assert (steps.parent / "pcaps" / "client-left.pcap").stat().st_size > 24
    verdicts = read_json(steps.parent / "verdicts.json")["verdicts"]
    assert any(v["kind"] == "run-complete" and not v["passed"] and v["outcome"] == "fail" for v in verdicts)
    # No actor, capture or helper left behind, in the nodes or on the engine.
    for node in ("client", "router", "server"):
        ps = engine.exec("runlab", node, ["ps", "-eo", "args"]).stdout
        assert "labctl.agent actor" not in ps and "tcpdump" not in ps, ps
    helpers = engine.client.containers.list(all=True, filters={"label": "org.labctl.owner=labctl"})
    assert not [c.name for c in helpers if c.labels.get("org.labctl.lab", "").startswith("__")]


def test_a_node_dying_mid_run_marks_the_run_incomplete_and_keeps_the_rest(engine, runlab, tmp_path):
    import threading

    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.extend(api.run(runlab, ["slow"], engine=engine, root=tmp_path)))
    worker.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        found = list(tmp_path.glob("runlab/*/steps.jsonl"))
        if found and any(r.get("kind") == "send" for r in read_jsonl(found[0])):
            break
        time.sleep(0.2)
    engine.client.containers.get("labctl-runlab-server").kill()
    worker.join(timeout=60)
    try:
        [result] = outcome
        assert result.status == "incomplete"
        run = read_json(result.path / "run.json")
        assert "server" in run["reason"]
        # The client's and the router's captures are kept; the dead server's too (copied from the stopped container).
        assert (result.path / "pcaps" / "client-left.pcap").stat().st_size > 24
        assert (result.path / "pcaps" / "router-right.pcap").stat().st_size > 24
        assert not result.passed
    finally:
        api.up(runlab, engine=engine)  # the module's lab, whole again for whatever runs next


def test_ctrl_c_ends_the_whole_run_not_only_the_current_scenario(engine, runlab, tmp_path):
    # `slow` then `fails`, in the order given: Ctrl-C in slow must not start fails.
    env = {**os.environ, "LABCTL_LABS_PATH": str(LABS)}
    proc = subprocess.Popen([sys.executable, "-m", "labctl", "run", "runlab", "-s", "slow", "-s", "fails",
                             "--results", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not any(
            r.get("kind") == "send" for f in tmp_path.glob("runlab/*/steps.jsonl") for r in read_jsonl(f)):
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    runs = [read_json(p) for p in tmp_path.glob("runlab/*/run.json")]
    assert [r["scenario"] for r in runs] == ["slow"], runs  # `fails` never started
    assert runs[0]["status"] == "incomplete"
    assert "slow" in out  # its verdicts are shown


def test_commands_die_with_their_step_children_included(engine, runlab, tmp_path):
    result = labctl("run", "runlab", "-s", "orphans", "--results", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    for node in ("client", "server"):
        ps = engine.exec("runlab", node, ["ps", "-eo", "args"]).stdout
        assert not [line for line in ps.splitlines() if line.startswith("sleep 31")], ps
