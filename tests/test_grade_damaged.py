"""Grading when a run directory is damaged: the gradebook is written, names the run directory and
what is wrong with it, and no expectation is counted as passed that the run did not show.

A run that gave `labctl grade` no outcome (stopped at its time limit, or `labctl run` failed)
is graded from the run directory it left; here that directory is a copy of
tests/runs/lost-final-ack (a real run) placed where grading files its runs
(OUT/runs/SUBMISSION/SCENARIO/LAB/RUN-ID) and damaged in one way. No Docker: the run itself
is replaced by what `_run_one` returns for a stopped run.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from labctl import grade

from .test_report_damaged import FIXTURE, cut, insert_line, remove, replace
from .test_sweep_damaged import a_file

STOPPED = "the run took more than 300 s and was stopped"


def running(run: Path) -> None:
    """Killed: run.json still says running, and nothing was judged."""
    data = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**data, "status": "running", "ended": None}))
    (run / "verdicts.json").unlink()


CASES = [
    ("run-json-truncated", cut("run.json", lambda n: n // 2), "run.json: it is cut short (the JSON ends early"),
    ("run-still-running", running, "run.json: it still says 'running'"),
    ("verdicts-a-list-of-junk", replace("verdicts.json", b'[1, "pass"]'), "verdicts.json: verdict 1 is a number, not a verdict: left out"),
    ("verdicts-missing", remove("verdicts.json"), "verdicts.json: it is missing: the run's verdicts were not stored"),
    ("steps-binary-line", insert_line("steps.jsonl", 5, b"\x00\xff\xfe\x01binary\n"), "steps.jsonl: 1 line skipped (line 5 is not UTF-8 text"),
    ("run-dir-a-file", a_file, "it is not a directory: there is no run in it"),
]


@pytest.mark.parametrize("name, damage, says", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_run_directory_is_named_in_the_gradebook(name, damage, says, tmp_path, monkeypatch):
    submission = tmp_path / "submissions" / "alice"
    submission.mkdir(parents=True)
    out = tmp_path / "grades"
    run_dir = out / "runs" / "alice" / "lost-final-ack" / "teardown" / "20261201-173507-lost-final-ack-ead7"
    shutil.copytree(FIXTURE, run_dir)
    damage(run_dir)
    monkeypatch.setattr(grade, "_run_one", lambda lab, scenario, *args: grade.ScenarioResult(scenario, str(run_dir), "timeout", [],
                                                                                             STOPPED, 300.0))
    columns = [grade.Column("lost-final-ack", i, f"expectation {i + 1}", 1.0) for i in range(7)]
    graded = grade.grade_submission("teardown", submission, ["lost-final-ack"], columns, {}, out, 300.0, lambda: None, "grade1")
    graded.report = grade._write_report(out, graded)
    grade.write_gradebook(grade.Gradebook("teardown", out, columns, [graded], 1, 1, None, 1.0))

    assert set(graded.outcomes.values()) == {"not run"} and graded.points == 0 and graded.max_points == 7
    book = json.loads((out / "gradebook.json").read_text())
    [row] = book["submissions"]
    assert any(says in d for d in row["runs"][0]["damage"]), row["runs"][0]["damage"]
    assert row["reason"].startswith(f"lost-final-ack: {STOPPED}; its run directory {run_dir} is damaged: ") and says in row["reason"]
    [line] = csv.DictReader(io.StringIO((out / "gradebook.csv").read_text()))
    assert says in line["reason"] and line["points"] == "0"
    page = (out / graded.report).read_text()
    if run_dir.is_dir():  # its report, with the damage among its notes
        assert "<iframe" in page and "no run directory" not in page
    else:
        assert "no run directory" in page


def test_a_whole_run_directory_has_nothing_to_say():
    assert grade.run_damage(str(FIXTURE)) == [] and grade.run_damage(None) == []


def test_a_log_that_is_a_directory_does_not_hide_the_programs_error(tmp_path, monkeypatch):
    run_dir = tmp_path / "grades" / "runs" / "alice" / "lost-final-ack" / "teardown" / "20261201-173507-lost-final-ack-ead7"
    shutil.copytree(FIXTURE, run_dir)
    (run_dir / "logs" / "client-exec-1.log").mkdir()
    (run_dir / "logs" / "server-exec-2.log").write_text("Traceback (most recent call last):\n  ...\nOSError: [Errno 98] Address in use\n")
    verdicts = json.loads((run_dir / "verdicts.json").read_text())["verdicts"]
    verdicts[0].update(outcome="fail", passed=False, observed="none seen")
    monkeypatch.setattr(grade, "_run_one", lambda lab, scenario, *args: grade.ScenarioResult(scenario, str(run_dir), "complete", verdicts))
    columns = [grade.Column("lost-final-ack", i, f"expectation {i + 1}", 1.0) for i in range(7)]
    submission = tmp_path / "alice"
    submission.mkdir()
    graded = grade.grade_submission("teardown", submission, ["lost-final-ack"], columns, {}, tmp_path / "grades", 300.0,
                                    lambda: None, "grade1")
    assert graded.points == 6 and graded.outcomes["lost-final-ack/expectation 1"] == "fail"
    assert graded.reason.endswith("the program said: OSError: [Errno 98] Address in use")


def test_a_run_directory_from_an_earlier_grading_is_not_taken_for_this_runs(tmp_path):
    (tmp_path / "lab" / "old").mkdir(parents=True)
    (tmp_path / "lab" / "old" / "run.json").write_text("{}")
    before = grade._runs_in(tmp_path)
    assert grade._latest_run(tmp_path, before) is None  # this run made none
    (tmp_path / "lab" / "new").mkdir()
    (tmp_path / "lab" / "new" / "run.json").write_text("{}")
    assert grade._latest_run(tmp_path, before) == str(tmp_path / "lab" / "new")
    assert grade._latest_run(tmp_path / "absent", set()) is None
