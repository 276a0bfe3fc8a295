"""Sweeps without Docker: the grid, the tasks, resuming, metrics and the summary on synthetic run directories.

The sweep's own engine tests (a real sweep, a killed one resumed) are in test_sweep_engine.py.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import threading
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from labctl import api, sweep
from labctl.errors import UserError
from labctl.sweep import execution, metrics
from labctl.sweep.grid import MAX_VALUES
from labctl.sweep.task import Task, TaskResult, finished

from . import synthetic

LAB = Path(__file__).resolve().parents[1] / "labs" / "lossy-transfer"


# --- the grid -----------------------------------------------------------------------------

@pytest.mark.parametrize("written, values", [
    ("0..30:5", ("0", "5", "10", "15", "20", "25", "30")),
    ("0..30:10%", ("0%", "10%", "20%", "30%")),
    ("10ms..50ms:20ms", ("10ms", "30ms", "50ms")),
    ("10..50:20ms", ("10ms", "30ms", "50ms")),
    ("0..10:4", ("0", "4", "8")),  # the end is included only when a step lands on it
    ("1..3", ("1", "2", "3")),
    ("0..1:0.25", ("0", "0.25", "0.5", "0.75", "1")),
    ("30..0:10", ("30", "20", "10", "0")),
    ("10ms,50ms", ("10ms", "50ms")),
    ("cubic, reno", ("cubic", "reno")),
    ("0..10:5%,50%", ("0%", "5%", "10%", "50%")),
    ("7", ("7",)),
])
def test_values_as_written(written, values):
    assert sweep.parse_values("x", written) == values


def test_values_from_yaml_lists_and_numbers():
    assert sweep.parse_values("delay", ["5ms", "25ms"]) == ("5ms", "25ms")
    assert sweep.parse_values("size", 65536) == ("65536",)
    assert sweep.parse_values("loss", ["0..10:5%", "30%"]) == ("0%", "5%", "10%", "30%")


@pytest.mark.parametrize("written, message", [
    ("0..30:0", "step above zero"),
    ("0ms..30s:5", "mixes units"),
    ("5%,5%", "given twice"),
    ("1,,2", "empty value"),
    (f"0..{MAX_VALUES * 10}", "at most"),
])
def test_bad_values_are_user_errors(written, message):
    with pytest.raises(UserError, match=message):
        sweep.parse_values("x", written)


def test_axis_names_units_and_numbers():
    loss = sweep.parse_axis("loss=0..30:10%")
    assert (loss.name, loss.unit, loss.title, loss.numbers) == ("loss", "%", "loss (%)", (0.0, 10.0, 20.0, 30.0))
    bare = sweep.parse_axis("loss=0..30:5")
    assert (bare.unit, bare.title) == ("", "loss")
    names = sweep.parse_axis("cc=cubic,reno")
    assert names.numbers is None and names.unit == ""
    for bad in ("loss", "=5", "1x=5", "a-b=1"):
        with pytest.raises(UserError):
            sweep.parse_axis(bad)


# --- tasks --------------------------------------------------------------------------------

def spec_2x2(repeat: int = 2, **kwargs) -> sweep.SweepSpec:
    return sweep.make_spec(LAB, "transfer", [sweep.parse_axis("loss=0%,10%"), sweep.parse_axis("delay=5ms,25ms"),
                                             sweep.parse_axis("size=2000")], repeat=repeat, **kwargs)


def test_every_combination_times_repeat_with_its_own_seed():
    spec = spec_2x2(seed=42)
    tasks = sweep.expand(spec)
    assert len(tasks) == spec.size == 8
    assert len({t.id for t in tasks}) == 8 and len({t.seed for t in tasks}) == 8
    assert {(t.point["loss"], t.point["delay"]) for t in tasks} == {("0%", "5ms"), ("0%", "25ms"), ("10%", "5ms"), ("10%", "25ms")}
    assert all("size" not in t.point and t.params["size"] == "2000" for t in tasks)  # fixed, not swept
    assert [t.repetition for t in tasks] == [1, 1, 1, 1, 2, 2, 2, 2]  # repetitions vary slowest
    assert all(t.params["seed"] == str(t.seed) and t.lab == str(LAB) for t in tasks)
    assert [t.seed for t in sweep.expand(spec)] == [t.seed for t in tasks]  # same sweep seed, same run seeds
    assert [t.seed for t in sweep.expand(spec_2x2(seed=43))] != [t.seed for t in tasks]
    assert all(re.fullmatch(r"[A-Za-z0-9=.,%_+-]+", t.id) for t in tasks)
    assert Task.from_json(json.loads(json.dumps(tasks[3].to_json()))) == tasks[3]  # a task survives JSON


def test_a_sweep_file_and_the_command_line(tmp_path):
    block = sweep.load_sweep_file(LAB, "loss-delay")
    assert block["scenario"] == "transfer"
    spec = sweep.make_spec(LAB, None, [sweep.parse_axis("delay=1ms")], file="loss-delay", repeat=1)
    assert spec.scenario == "transfer" and spec.repeat == 1
    assert dict((a.name, a.values) for a in spec.axes)["delay"] == ("1ms",)  # the command line wins
    assert [a.name for a in spec.swept] == ["loss"]
    other = tmp_path / "s.yaml"
    other.write_text("sweep: {scenario: transfer, params: {loss: '0..10:5%'}, repeat: 3, colour: red}\n")
    with pytest.raises(UserError, match="unknown key"):
        sweep.make_spec(LAB, None, file=other)
    with pytest.raises(UserError, match="no sweep file"):
        sweep.make_spec(LAB, None, file="nope")
    with pytest.raises(UserError, match="unknown metric"):
        sweep.make_spec(LAB, "transfer", metric_name="speed")
    with pytest.raises(UserError, match="repeat"):
        sweep.make_spec(LAB, "transfer", repeat=0)


def test_a_bad_value_is_refused_before_any_run(tmp_path):
    spec = sweep.make_spec(LAB, "transfer", [sweep.parse_axis("loss=0%,150%")])
    with pytest.raises(UserError, match="100%"):
        sweep.run(spec, tmp_path / "sw")
    assert not (tmp_path / "sw").exists()


# --- resuming, with tasks that write synthetic run directories -----------------------------------

class FakeRuns:
    """An ``execute`` that writes a synthetic run directory per task (a lost final ACK, so there is a
    FIN retransmission), fails the tasks of loss=10%, and can be told to be interrupted at the n-th call."""

    def __init__(self, interrupt_at: int | None = None):
        self.calls: list[Task] = []
        self.interrupt_at = interrupt_at

    def __call__(self, task: Task, run_dir: Path, *, engine=None, progress=None) -> TaskResult:
        self.calls.append(task)
        run = synthetic.lost_final_ack()
        run.name = run_dir.name
        if task.point.get("loss") == "10%":
            run.expect = [*run.expect, {"segments": {"from": "server", "flags": "F", "count": 5}}]
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            run.status = "running"  # killed mid-run: its run.json never got further
            run.write(run_dir.parent, judge=False)
            raise KeyboardInterrupt
        run.write(run_dir.parent)
        (run_dir / "task.json").write_text(json.dumps(task.to_json()))
        return TaskResult(task, run_dir, "complete", None, 0.0, json.loads((run_dir / "verdicts.json").read_text())["verdicts"])


def test_resume_runs_only_what_did_not_finish(tmp_path):
    spec, where = spec_2x2(), tmp_path / "sw"
    first = FakeRuns(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(spec, where, execute=first)
    done = sorted(p.name for p in (where / "runs").iterdir() if finished(p))
    assert len(done) == 3 and not finished(where / "runs" / first.calls[3].id)
    stamps = {name: (where / "runs" / name / "run.json").stat().st_mtime_ns for name in done}
    record = json.loads((where / "sweep.json").read_text())
    assert record["sessions"][-1]["result"] == "interrupted" and len(record["tasks"]) == 8

    second = FakeRuns()
    result = sweep.run(spec, where, execute=second)
    assert [t.id for t in second.calls] == [t.id for t in sweep.expand(spec, record["spec"]["seed"])][3:]
    assert result.skipped == 3 and len(result.ran) == 5
    assert {name: (where / "runs" / name / "run.json").stat().st_mtime_ns for name in done} == stamps  # not touched
    assert [p.name.startswith(first.calls[3].id) for p in (where / "interrupted").iterdir()] == [True]  # set aside, kept
    assert sorted(p.name for p in (where / "runs").iterdir()) == sorted(t.id for t in result.tasks)
    sessions = json.loads((where / "sweep.json").read_text())["sessions"]
    assert [s["result"] for s in sessions] == ["interrupted", "done"] and sessions[1]["skipped"] == 3

    third = FakeRuns()
    assert sweep.run(spec, where, execute=third).skipped == 8 and third.calls == []


def test_what_counts_as_finished(tmp_path):
    def made(status: str, reason: str | None = None, verdicts: bool = True) -> Path:
        run = synthetic.normal_close()
        run.name, run.status = f"{status}-{reason}-{verdicts}", status
        directory = run.write(tmp_path, judge=verdicts)
        data = json.loads((directory / "run.json").read_text())
        data["reason"] = reason
        (directory / "run.json").write_text(json.dumps(data))
        return directory

    assert finished(made("complete"))
    assert finished(made("incomplete", "node server went away during the run"))  # a result of its own: not redone
    assert not finished(made("incomplete", "interrupted (Ctrl-C)"))
    assert not finished(made("running", verdicts=False))
    assert not finished(made("complete", verdicts=False))  # judging never happened
    assert not finished(tmp_path / "absent")


def test_resuming_into_a_directory_of_another_sweep_is_refused(tmp_path):
    sweep.run(spec_2x2(repeat=1), tmp_path / "sw", execute=FakeRuns())
    with pytest.raises(UserError, match="another sweep"):
        sweep.run(spec_2x2(repeat=3), tmp_path / "sw", execute=FakeRuns())
    with pytest.raises(UserError, match="seed"):
        sweep.run(spec_2x2(repeat=1, seed=1), tmp_path / "sw", execute=FakeRuns())


def test_parallel_workers_each_own_an_instance(tmp_path):
    runs, released = FakeRuns(), []
    result = sweep.run(spec_2x2(), tmp_path / "sw", parallel=2, execute=runs, release=lambda task, i: released.append(i))
    assert len(result.ran) == 8 and {t.instance for t in runs.calls} == {"sw1", "sw2"}
    assert len({t.id for t in runs.calls}) == 8
    assert sorted(released) == ["sw1", "sw2"]  # each taken down once, when the sweep ended
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["sessions"][-1]["instances"] == ["sw1", "sw2"]


def test_parallel_tasks_really_run_at_once(tmp_path):
    """Two workers: the first two tasks meet at a barrier, which one worker alone never passes."""
    meet = threading.Barrier(2, timeout=30)
    runs, arrived, lock = FakeRuns(), [], threading.Lock()

    def execute(task, run_dir, **kwargs):
        with lock:
            arrived.append(task.id)
            first_two = len(arrived) <= 2
        if first_two:
            meet.wait()
        return runs(task, run_dir, **kwargs)

    assert len(sweep.run(spec_2x2(), tmp_path / "sw", parallel=2, execute=execute, release=lambda *_: None).ran) == 8


def test_an_interrupted_parallel_sweep_still_takes_its_instances_down(tmp_path):
    released = []
    with pytest.raises(KeyboardInterrupt):
        sweep.run(spec_2x2(), tmp_path / "sw", parallel=2, execute=FakeRuns(interrupt_at=3), release=lambda task, i: released.append(i))
    assert released and set(released) <= {"sw1", "sw2"} and len(released) == len(set(released))


# --- metrics and verdicts from a run directory alone ---------------------------------------------

def test_metrics_of_a_lost_final_ack(tmp_path):
    directory = synthetic.lost_final_ack().write(tmp_path)
    values = sweep.measure(directory, list(sweep.METRICS) + ["step:nope"])
    assert values["retransmissions"] == 1  # the server's FIN, once
    assert values["fin_retransmission_delay"] == pytest.approx(0.2, abs=1e-6)
    assert values["transfer_time"] == pytest.approx(0.0003 + 3 * synthetic.HOP, abs=1e-6)  # 'hello' to its ACK back at the client
    assert values["time_wait"] is None  # it outlasted the run
    assert values["step:nope"] is None


def test_metrics_of_a_normal_close_and_a_step(tmp_path):
    directory = synthetic.normal_close().write(tmp_path)
    values = sweep.measure(directory, ["retransmissions", "fin_retransmission_delay", "step:c", "step:1", "duration"])
    assert values["retransmissions"] == 0 and values["fin_retransmission_delay"] is None
    assert values["step:c"] == values["step:1"] == pytest.approx(0.0002)
    assert values["duration"] > 0
    with pytest.raises(UserError):
        sweep.metric("speed")


class Outcome(enum.Enum):
    PASS = "pass"
    UNDECIDED = "undecided"


@dataclass
class TypedVerdict:
    passed: bool | None
    outcome: Outcome | None = None


def test_verdicts_as_dicts_or_objects():
    assert sweep.outcome({"passed": True}) == "pass" and sweep.outcome({"passed": False}) == "fail"
    assert sweep.outcome({"passed": None}) == "undecided"
    assert sweep.outcome({"passed": False, "outcome": "undecided"}) == "undecided"
    assert sweep.outcome(TypedVerdict(True)) == "pass" and sweep.outcome(TypedVerdict(False)) == "fail"
    assert sweep.outcome(TypedVerdict(None, Outcome.UNDECIDED)) == "undecided"
    assert sweep.run_outcome([{"passed": True}, TypedVerdict(None, Outcome.UNDECIDED)]) == "undecided"
    assert sweep.run_outcome([{"passed": False}, TypedVerdict(None, Outcome.UNDECIDED)]) == "fail"
    assert sweep.run_outcome([{"passed": True}]) == "pass"


# --- the summary ------------------------------------------------------------------------------

def test_summary_counts_match_the_run_directories(tmp_path):
    where = tmp_path / "sw"
    sweep.run(spec_2x2(), where, execute=FakeRuns())
    summary = sweep.summarise(where, metric="fin_retransmission_delay")
    dirs = [p for p in (where / "runs").iterdir() if (p / "run.json").exists()]
    assert summary.counts == {"runs": 8, "finished": len(dirs), "pending": 0, "passed": 4, "failed": 4, "undecided": 0,
                              "damaged": 0}
    assert [(p.point, p.finished, p.passed) for p in summary.points] == [
        ({"loss": "0%", "delay": "5ms"}, 2, 2), ({"loss": "0%", "delay": "25ms"}, 2, 2),
        ({"loss": "10%", "delay": "5ms"}, 2, 0), ({"loss": "10%", "delay": "25ms"}, 2, 0)]
    assert all(p.spread.n == 2 and p.spread.median == pytest.approx(0.2) for p in summary.points)
    rows = list(csv.DictReader(io.StringIO((where / "summary.csv").read_text())))
    assert [(r["loss"], r["delay"], r["finished"], r["pass_rate"]) for r in rows][::3] == [("0%", "5ms", "2", "1"), ("10%", "25ms", "2", "0")]
    per_run = list(csv.DictReader(io.StringIO((where / "runs.csv").read_text())))
    assert sorted(r["run_dir"] for r in per_run) == sorted(f"runs/{p.name}" for p in dirs)
    markdown = (where / "summary.md").read_text()
    assert "| loss (%) | delay (ms) | runs |" in markdown and "8 of 8 runs finished: 4 passed, 4 failed" in markdown
    assert json.loads((where / "summary.json").read_text())["counts"]["finished"] == 8
    assert (where / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def chart_texts(svg: Path) -> list[str]:
    """Every text of an SVG (matplotlib writes each as a <text> element when svg.fonttype is none)."""
    import xml.etree.ElementTree as ET

    root = ET.parse(svg).getroot()
    return ["".join(node.itertext()).strip() for node in root.iter("{http://www.w3.org/2000/svg}text")]


def test_the_chart_names_its_axes_with_units(tmp_path):
    where = tmp_path / "sw"
    sweep.run(spec_2x2(repeat=1), where, execute=FakeRuns())
    texts = chart_texts(where / "chart.svg")
    assert "loss (%)" in texts and "pass rate (%)" in texts and "transfer completion time (s)" in texts
    assert "delay=5ms" in texts and "delay=25ms" in texts  # one line per value of the second parameter
    sweep.summarise(where, metric="step:c")
    assert "duration of step c (s)" in chart_texts(where / "chart.svg")


def test_a_partial_sweep_summarises_what_finished(tmp_path):
    where = tmp_path / "sw"
    with pytest.raises(KeyboardInterrupt):
        sweep.run(spec_2x2(), where, execute=FakeRuns(interrupt_at=3))
    summary = sweep.summarise(where)
    assert summary.counts["finished"] == 2 and summary.counts["pending"] == 6
    assert "6 pending" in (where / "summary.md").read_text()


def test_report_of_a_sweep_directory(tmp_path):
    where = tmp_path / "sw"
    sweep.run(spec_2x2(repeat=1), where, execute=FakeRuns())
    (where / "chart.svg").unlink()
    text = api.report([where], format="md")
    assert text.startswith("# Sweep transfer on lossy-transfer") and (where / "chart.svg").is_file()  # drawn again
    assert json.loads(api.report([str(where)], format="json"))["counts"]["runs"] == 4
    assert "pass rate" in api.report([where], format="term", width=160)
    assert "<svg" in api.report([where], format="html")
    moved = tmp_path / "elsewhere"
    shutil.move(str(where), str(moved))  # a sweep directory is self-contained: it reports from anywhere
    assert "4 of 4 runs finished" in api.report([moved], format="md")


# --- the command line (no engine: a dry run and user errors) ----------------------------------

def labctl(*argv: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(LAB.parents[1])}
    return subprocess.run([sys.executable, "-m", "labctl", *argv], capture_output=True, text=True, env=env, timeout=120)


def test_the_command_lists_its_runs_in_a_dry_run():
    proc = labctl("sweep", str(LAB), "transfer", "-p", "loss=0..10:5%", "-p", "delay=5ms,25ms", "-r", "2", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "12 run(s)" and lines[0].startswith("0000-loss=0%,delay=5ms-r1") and "delay=5ms" in lines[0]


@pytest.mark.parametrize("argv, message", [
    (["-p", "loss=0..10:0%"], "step above zero"),
    (["-p", "loss"], "NAME=VALUES"),
    (["--metric", "speed"], "unknown metric"),
    (["--file", "nope"], "no sweep file"),
])
def test_the_command_says_what_is_wrong(argv, message):
    proc = labctl("sweep", str(LAB), "transfer", *argv, "--dry-run")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


# --- run_task around api.run (a stand-in for api.run: no engine) ----------------------------------

@dataclass
class FakeRunResult:
    path: Path
    verdicts: list


def fake_api_run(behaviour: list[str]):
    """An api.run that, call by call, writes a run under root/<lab>/<run-id> and then does what
    ``behaviour`` says: ok | interrupted | engine-error (before any run) | cut-short (after writing run.json)."""
    from labctl.errors import EngineError

    calls = []

    def run(ref, scenarios, params, *, engine=None, root=None, progress=None):
        what = behaviour[len(calls)]
        calls.append(what)
        if what == "engine-error":
            raise EngineError("impair on node server failed: exit status 0")
        made = synthetic.normal_close()
        made.name = f"run-{len(calls)}"
        if what == "cut-short":
            made.status = "incomplete"
            made.write(root / "lab", judge=False)
            raise RuntimeError("the engine went away")
        if what == "interrupted":
            made.status = "incomplete"
        directory = made.write(root / "lab")
        if what == "interrupted":
            data = json.loads((directory / "run.json").read_text())
            data["reason"] = "interrupted (Ctrl-C)"
            (directory / "run.json").write_text(json.dumps(data))
        return [FakeRunResult(directory, json.loads((directory / "verdicts.json").read_text())["verdicts"])]

    return run, calls


def one_task() -> Task:
    return sweep.expand(spec_2x2(repeat=1), 7)[0]


def test_run_task_puts_the_run_directory_in_place_with_its_task(tmp_path, monkeypatch):
    run, calls = fake_api_run(["ok"])
    monkeypatch.setattr(api, "run", run)
    task = one_task()
    result = sweep.run_task(task, tmp_path / "runs" / task.id)
    assert result.finished and result.status == "complete" and calls == ["ok"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [task.id]  # the staging directory is gone
    written = json.loads((tmp_path / "runs" / task.id / "task.json").read_text())
    assert written["id"] == task.id and written["run_id"] == "run-1" and written["params"] == dict(task.params)
    with pytest.raises(FileExistsError):
        sweep.run_task(task, tmp_path / "runs" / task.id)


def test_run_task_interrupted_keeps_the_run_and_raises(tmp_path, monkeypatch):
    run, _ = fake_api_run(["interrupted"])
    monkeypatch.setattr(api, "run", run)
    task = one_task()
    with pytest.raises(KeyboardInterrupt):
        sweep.run_task(task, tmp_path / "runs" / task.id)
    assert (tmp_path / "runs" / task.id / "run.json").is_file() and not finished(tmp_path / "runs" / task.id)


def test_run_task_tries_an_engine_error_once_more(tmp_path, monkeypatch):
    from labctl.errors import EngineError

    run, calls = fake_api_run(["engine-error", "ok"])
    monkeypatch.setattr(api, "run", run)
    monkeypatch.setattr("labctl.sweep.task.time.sleep", lambda s: None)
    task = one_task()
    assert sweep.run_task(task, tmp_path / "a").finished and calls == ["engine-error", "ok"]
    assert "exit status 0" in json.loads((tmp_path / "a" / "task.json").read_text())["retried_after"]
    run, calls = fake_api_run(["engine-error", "engine-error"])
    monkeypatch.setattr(api, "run", run)
    with pytest.raises(EngineError):
        sweep.run_task(task, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_run_task_cut_short_is_kept_unfinished(tmp_path, monkeypatch):
    run, _ = fake_api_run(["cut-short"])
    monkeypatch.setattr(api, "run", run)
    task = one_task()
    result = sweep.run_task(task, tmp_path / "r")
    assert result.status == "incomplete" and not result.finished  # resuming runs it again
    assert "the engine went away" in json.loads((tmp_path / "r" / "task.json").read_text())["cut_short"]


def test_the_terminal_summary_shows_swept_values_as_written_not_as_markup(tmp_path):
    where = tmp_path / "sw"
    spec = sweep.make_spec(LAB, "transfer", [sweep.parse_axis("label=[red]a,[bold]b")], repeat=1)
    sweep.run(spec, where, execute=FakeRuns())
    text = api.report([where], format="term", width=160)
    assert "[red]a" in text and "[bold]b" in text
