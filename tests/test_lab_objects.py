"""The object API (labctl.lab) without Docker: context-manager semantics and routing on the
in-memory engine, and typed results read from hand-made run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labctl import ExecResult, Lab, Run, RunningLab, Segment, SocketTimeline, UserError, Verdict
from labctl.engine.memory import MemoryEngine

from . import synthetic

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def engine() -> MemoryEngine:
    return MemoryEngine()


@pytest.fixture
def teardown() -> Lab:
    return Lab.load("teardown")


def test_a_lab_reads_like_its_file(teardown):
    assert teardown.name == "teardown"
    assert sorted(teardown.nodes) == ["client", "router", "server"] and teardown.nodes["router"].role == "router"
    assert [link.name for link in teardown.links] == ["left", "right"]
    assert "lost-final-ack" in teardown.scenarios
    assert teardown.validate(["fin-to-closed", "lost-final-ack"]) == {"fin-to-closed": 2, "lost-final-ack": 1}


def test_a_bad_lab_is_refused_at_load(tmp_path):
    (tmp_path / "lab.yaml").write_text("name: bad\nnodes: {a: {}}\nlinks: [{name: l, endpoints: [a, nobody]}]\n")
    with pytest.raises(UserError):
        Lab.load(tmp_path)


def test_the_block_takes_the_lab_down_at_its_end(engine, teardown):
    with teardown.up(engine=engine) as running:
        assert isinstance(running, RunningLab)
        assert engine.labs() == ["teardown"]
    assert engine.labs() == [] and running.is_down


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_in_the_block_takes_the_lab_down_and_goes_on(engine, teardown, error):
    with pytest.raises(type(error)):
        with teardown.up(engine=engine):
            raise error
    assert engine.labs() == []


def test_keep_leaves_the_lab_up(engine, teardown):
    with pytest.raises(RuntimeError):
        with teardown.up(engine=engine, keep=True):
            raise RuntimeError("look at it")
    assert engine.labs() == ["teardown"]


def test_a_failing_teardown_does_not_hide_the_error_of_the_block(engine, teardown):
    class Stuck(MemoryEngine):
        def destroy(self, lab):
            raise UserError("engine went away")

    stuck = Stuck()
    with pytest.raises(RuntimeError) as raised:
        with teardown.up(engine=stuck):
            raise RuntimeError("the test's own failure")
    assert "engine went away" in " ".join(raised.value.__notes__)


def test_an_up_that_fails_midway_leaves_nothing(teardown):
    class Broken(MemoryEngine):
        def deploy(self, plan, image, progress=None, **more):
            super().deploy(plan, image, progress, **more)
            raise UserError("the engine broke after creating the nodes")

    broken = Broken()
    with pytest.raises(UserError):
        teardown.up(engine=broken)
    assert broken.labs() == []


def test_exec_status_and_impair_go_through_the_api(engine, teardown):
    with teardown.up(engine=engine) as running:
        result = running.exec("client", ["ping", "-c1", "server"])
        assert isinstance(result, ExecResult) and result.exit_code == 0
        running.exec("client", "echo hi > /tmp/x")
        assert engine.node("teardown", "client").execs[-2:] == [["ping", "-c1", "server"], ["sh", "-c", "echo hi > /tmp/x"]]
        directions = running.impair("right", from_node="router", delay="50ms")
        assert [(d.link, d.node, d.settings.get("delay_ms")) for d in directions] == [("right", "router", 50.0)]
        status = running.status()
        assert status.lab == "teardown" and sorted(n.name for n in status.nodes) == ["client", "router", "server"]
        [link] = [link for link in status.links if link["name"] == "right"]
        assert [i["from"] for i in link["impairments"]] == ["router"]
        running.impair("right", clear=True)
        with pytest.raises(UserError):
            running.impair("right", delay="-3ms")


def test_a_run_is_one_matrix_point(engine, teardown, tmp_path):
    with teardown.up(engine=engine, results=tmp_path) as running:
        run = running.run("lost-final-ack")
        # The memory engine moves no packets: every expectation is undecided, none failed.
        assert isinstance(run, Run) and run.status == "complete" and run.path.parent == tmp_path / "teardown"
        assert run.verdicts and all(isinstance(v, Verdict) and v.undecided and v.reason for v in run.verdicts)
        assert not run.passed and run.exit_status == 3
        with pytest.raises(UserError, match="2 matrix points"):
            running.run("fin-to-closed")
        fixed = running.run("fin-to-closed", params={"method": "kill"})  # a fixed axis is no longer a matrix point
        assert fixed.scenario == "fin-to-closed" and fixed.params["method"] == "kill"
        assert [r.scenario for r in running.run_all(["fin-to-closed"])] == ["fin-to-closed[method=kill]", "fin-to-closed[method=no_tw_buckets]"]


def test_a_run_directory_gives_typed_facts(tmp_path):
    run = Run.open(synthetic.lost_final_ack().write(tmp_path))
    assert run.status == "complete" and run.passed and run.exit_status == 0
    assert all(isinstance(v, Verdict) and v.outcome == "pass" for v in run.verdicts)
    assert run.verdicts[0].evidence[0].kind == "segment"
    assert all(isinstance(s, Segment) for s in run.segments)
    [fin] = run.find_segments(from_="server", flags="F", retransmission=True)
    assert fin.retransmission and fin.node == "server" and "F" in fin.flags
    assert len(run.find_segments(from_="server", to="client", flags="F")) == 2
    dropped = [tx for tx in run.transmissions if tx.dropped]
    assert [(tx.first.flags, tx.dropped_at) for tx in dropped] == [("A", "router")]
    [server] = [s for s in run.sockets if s.node == "server"]
    assert isinstance(server, SocketTimeline) and server.states[-2:] == ["LAST_ACK", "CLOSED"]
    assert "lost-final-ack" in run.report("md")
    written = tmp_path / "report.html"
    assert run.report("html", path=written).lower().startswith("<!doctype html>") and written.read_text() == run.report("html")


def test_a_run_without_verdicts_json_is_judged_from_its_directory(tmp_path):
    directory = synthetic.lost_final_ack().write(tmp_path, judge=False)
    run = Run.open(directory)
    assert not (directory / "verdicts.json").exists()
    assert [v.outcome for v in run.verdicts] == ["pass"] * 3


def test_a_failed_run_explains_itself(tmp_path):
    made = synthetic.lost_final_ack()
    made.expect = [{"segments": {"from": "server", "flags": "F", "count": 5}, "name": "five FINs"}]
    run = Run.open(made.write(tmp_path))
    assert not run.passed and run.exit_status == 1 and run.verdicts[0].failed
    assert "five FINs" in run.explain() and "2 seen" in run.explain()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        Run.open(tmp_path)
    with pytest.raises(UserError):
        Run.latest("no-such-lab", root=tmp_path)


def test_find_segments_refuses_what_an_expectation_would(tmp_path):
    run = Run.open(synthetic.lost_final_ack().write(tmp_path))
    with pytest.raises(UserError):
        run.find_segments(flags="Q")
    with pytest.raises(UserError):
        run.find_segments(colour="red")


def test_importing_labctl_stays_light():
    """labctl/__init__.py goes into the node image with the agent: names load on first use."""
    code = ("import sys, labctl; assert 'labctl.lab' not in sys.modules and 'pydantic' not in sys.modules;"
            "from labctl import Lab; assert Lab.__module__ == 'labctl.lab'; print(sorted(labctl.__all__))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "Lab" in json.loads(out.replace("'", '"'))
