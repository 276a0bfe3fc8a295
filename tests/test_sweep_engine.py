"""Sweeps on the real engine: a 2 x 2 x 2 sweep and its summary; a sweep killed half-way and resumed.

Each uses a copy of the lossy-transfer lab under a name of its own (taken down afterwards),
with a small transfer so a run takes a few seconds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labctl.instances import split_key

from .test_sweep import chart_texts

pytestmark = pytest.mark.engine
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def lossy_lab(tmp_path, engine, node_image):
    name = f"tsw{secrets.token_hex(3)}"
    directory = tmp_path / name
    shutil.copytree(REPO / "labs" / "lossy-transfer", directory)
    text = (directory / "lab.yaml").read_text()
    (directory / "lab.yaml").write_text(text.replace("name: lossy-transfer", f"name: {name}", 1))
    yield directory
    for key in [k for k in engine.labs() if split_key(k)[0] == name] or [name]:  # every instance of it
        engine.destroy(key)


def sweep_command(lab: Path, out: Path, *params: str) -> list[str]:
    return [sys.executable, "-m", "labctl", "sweep", str(lab), "transfer", "-p", "size=20000", *params, "-o", str(out)]


def labctl_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def finished_runs(out: Path) -> dict[str, tuple[str, int]]:
    """Task id -> (run id, run.json's mtime) of every run in place that completed, with its verdicts
    (a run that Ctrl-C cut short is in place too, marked incomplete: it is no finished run)."""
    result = {}
    for directory in sorted((out / "runs").glob("[0-9]*")):
        if ((directory / "verdicts.json").is_file() and (directory / "task.json").is_file()
                and json.loads((directory / "run.json").read_text())["status"] == "complete"):
            result[directory.name] = (json.loads((directory / "task.json").read_text())["run_id"],
                                      (directory / "run.json").stat().st_mtime_ns)
    return result


def test_a_parallel_sweep_of_two_parameters_makes_a_run_directory_per_run_and_a_summary_that_counts_them(lossy_lab, tmp_path, engine):
    """Two runs at a time, each worker on a lab instance of its own, both taken down at the end."""
    out = tmp_path / "sweep"
    proc = subprocess.run(sweep_command(lossy_lab, out, "-p", "loss=0%,10%", "-p", "delay=2ms,10ms", "-r", "2", "--metric", "retransmissions",
                                        "--parallel", "2"),
                          capture_output=True, text=True, env=labctl_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in (out / "runs").iterdir()]
    assert len(runs) == 8 and all((p / "run.json").is_file() and (p / "verdicts.json").is_file() for p in runs)
    records = [json.loads((p / "run.json").read_text()) for p in runs]
    assert sorted({r["instance"] for r in records}) == ["sw1", "sw2"]
    spans = sorted((r["started"], r["ended"]) for r in records)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans  # some runs overlapped in time
    assert [k for k in engine.labs() if split_key(k)[0] == lossy_lab.name] == []  # every instance taken down
    statuses = [json.loads((p / "run.json").read_text())["status"] for p in runs]
    outcomes = [all(v["passed"] for v in json.loads((p / "verdicts.json").read_text())["verdicts"]) for p in runs]
    record = json.loads((out / "sweep.json").read_text())
    assert len(record["tasks"]) == 8 and len({t["seed"] for t in record["tasks"]}) == 8
    assert record["machine"]["cores"] and record["machine"]["kernel"] and "Docker" in record["machine"]["engine"]
    # Every run got its own parameters: the impairment in force during it is the one of its task.
    for p in runs:
        task, run = json.loads((p / "task.json").read_text()), json.loads((p / "run.json").read_text())
        assert run["params"]["loss"] == task["params"]["loss"] and run["params"]["delay"] == task["params"]["delay"]
        set_by_scenario = [r for r in run["impairments"] if r.get("why") == "set by the scenario"]
        assert set_by_scenario and all(r["settings"].get("delay_ms") == float(task["params"]["delay"].removesuffix("ms"))
                                       for r in set_by_scenario)
    summary = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert len(summary) == 4 and sum(int(r["finished"]) for r in summary) == 8 == sum(int(r["runs"]) for r in summary)
    assert sum(int(r["passed"]) for r in summary) == sum(outcomes)
    assert statuses.count("complete") == 8
    per_run = list(csv.DictReader(io.StringIO((out / "runs.csv").read_text())))
    assert sorted(r["run_dir"] for r in per_run) == sorted(f"runs/{p.name}" for p in runs)
    texts = chart_texts(out / "chart.svg")
    assert {"loss (%)", "pass rate (%)", "retransmissions (segments)", "delay=2ms", "delay=10ms"} <= set(texts)
    assert (out / "chart.png").stat().st_size > 1000
    # The report is drawn again from the directory alone.
    (out / "summary.md").unlink()
    again = subprocess.run([sys.executable, "-m", "labctl", "report", str(out), "-f", "md"], capture_output=True, text=True,
                           env=labctl_env(), timeout=120)
    assert again.returncode == 0 and "8 of 8 runs finished" in again.stdout and (out / "summary.md").is_file()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_sweep_killed_half_way_resumes_without_repeating_finished_runs(lossy_lab, tmp_path, how):
    out = tmp_path / "sweep"
    command = sweep_command(lossy_lab, out, "-p", "loss=0%,5%", "-p", "delay=2ms", "-r", "2")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=labctl_env())
    deadline = time.monotonic() + 300
    while len(finished_runs(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # well into the third run
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == (130 if how == signal.SIGINT else -signal.SIGKILL), stderr[-3000:]
    before = finished_runs(out)
    assert 2 <= len(before) < 4, stderr[-3000:]

    resumed = subprocess.run(command, capture_output=True, text=True, env=labctl_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = finished_runs(out)
    assert len(after) == 4 and sorted(p.name for p in (out / "runs").iterdir()) == sorted(after)
    assert {task: after[task] for task in before} == before  # same run ids, untouched files: not run again
    session = json.loads((out / "sweep.json").read_text())["sessions"][-1]
    assert session["skipped"] == len(before) and session["ran"] == 4 - len(before)
    aside = list((out / "interrupted").iterdir()) if (out / "interrupted").is_dir() else []
    assert len(aside) <= 1 and all(not p.name.startswith(tuple(before)) for p in aside)
    if how == signal.SIGKILL:
        assert len(aside) == 1  # the run the kill cut short, kept for inspection
    summary = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert sum(int(r["finished"]) for r in summary) == 4
