"""A sweep whose run directories are damaged: the summary, `labctl report SWEEP_DIR` and resuming.

A synthetic sweep of the teardown lab's lost-final-ack scenario (two points, one run each) whose
runs are copies of tests/runs/lost-final-ack (a real run); one of them is then damaged in one way.
No traceback in any format; a damaged run is counted as what it is (pending when it cannot be told
to have finished, undecided when its stored verdicts cannot all be read, never a pass they do not
vouch for), and the summary names the run directory, the file and what is wrong. Resuming sets
aside and runs again exactly the runs that cannot be told to have finished, and says why.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from labctl import api, sweep
from labctl.sweep.task import Task, TaskResult, finished

from .test_report_damaged import FIXTURE, cut, edit_json, insert_line, remove, replace

FORMATS = ("term", "md", "html", "json")


class CopiedRuns:
    """An ``execute`` whose run is a copy of the real lost-final-ack run."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, task: Task, run_dir: Path, *, engine=None, progress=None) -> TaskResult:
        self.calls.append(task.id)
        shutil.copytree(FIXTURE, run_dir)
        (run_dir / "task.json").write_text(json.dumps(task.to_json()))
        return TaskResult(task, run_dir, "complete", None, 0.0, json.loads((run_dir / "verdicts.json").read_text())["verdicts"])


def spec() -> sweep.SweepSpec:
    return sweep.make_spec("teardown", "lost-final-ack", [sweep.parse_axis("port=5002,5003")], repeat=1, metric_name="duration",
                           seed=7)


@pytest.fixture
def swept(tmp_path: Path) -> tuple[Path, Path]:
    """A sweep directory of two whole runs, and the run directory of its first task (the one damaged)."""
    where = tmp_path / "sw"
    sweep.run(spec(), where, execute=CopiedRuns(), summarise=False)
    first = sweep.expand(spec())[0]
    return where, where / "runs" / first.id


def a_file(run: Path) -> None:
    shutil.rmtree(run)
    run.write_bytes(b"not a run\n")


def verdicts_bare_list(run: Path) -> None:
    """The oldest form of verdicts.json: the list alone, every verdict whole."""
    (run / "verdicts.json").write_text(json.dumps(json.loads((run / "verdicts.json").read_text())["verdicts"]))


def one_failed_one_lost(data: dict) -> None:
    data["verdicts"][0].update(outcome="fail", passed=False)
    data["verdicts"][1] = "pass"


# (id, damage, counted: finished?, outcome, the note's file ('' for the run directory itself), what it says)
CASES = [
    ("run-json-truncated", cut("run.json", lambda n: n // 2), False, None, "run.json", "it is cut short (the JSON ends early"),
    ("run-json-a-list", replace("run.json", b"[1, 2, 3]"), False, None, "run.json", "it holds a list, not an object"),
    ("run-dir-a-file", a_file, False, None, "", "it is not a directory: there is no run in it"),
    ("verdicts-missing", remove("verdicts.json"), False, None, "verdicts.json",
     "it is missing, though run.json says the run ended: its verdicts were never written or were lost"),
    ("verdicts-truncated", cut("verdicts.json", lambda n: n - 40), True, "undecided", "verdicts.json", "it is cut short"),
    ("verdicts-a-list-of-junk", replace("verdicts.json", b'[1, "pass"]'), True, "undecided", "verdicts.json",
     "verdict 1 is a number, not a verdict: left out"),
    ("verdicts-not-a-list", edit_json("verdicts.json", lambda d: d.update(verdicts={"a": 1})), True, "undecided", "verdicts.json",
     "its 'verdicts' is an object, not a list of verdicts"),
    ("verdicts-one-failed-one-lost", edit_json("verdicts.json", one_failed_one_lost), True, "fail", "verdicts.json",
     "verdict 2 is a string, not a verdict: left out"),
    ("steps-binary-line", insert_line("steps.jsonl", 5, b"\x00\xff\xfe\x01binary\n"), True, "pass", "steps.jsonl",
     "1 line skipped (line 5 is not UTF-8 text (binary data)); the other 13 read"),
]


@pytest.mark.parametrize("name, damage, counted, outcome, file, says", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_run_in_a_sweep_is_counted_as_what_it_is_and_named(name, damage, counted, outcome, file, says, swept):
    where, run = swept
    damage(run)
    pages = {fmt: api.report([where], format=fmt, width=400) for fmt in FORMATS}  # `labctl report SWEEP_DIR`: no traceback
    data = json.loads(pages["json"])
    row = next(r for r in data["runs"] if r["id"] == run.name)
    assert (row["outcome"], row["run_dir"]) == (outcome, f"runs/{run.name}")
    assert any(d["file"] == (file or ".") and says in d["problem"] for d in row["damage"]), row["damage"]
    assert data["counts"] == {"runs": 2, "finished": 1 + counted, "pending": 1 - counted, "passed": 1 + (outcome == "pass"),
                              "failed": int(outcome == "fail"), "undecided": int(outcome == "undecided"), "damaged": 1}
    named = f"damaged run directory runs/{run.name}: " + (f"{file}: " if file else "") + says
    for fmt in ("term", "md", "html"):
        assert named in " ".join(pages[fmt].replace("&#x27;", "'").split()), (fmt, pages[fmt])
    [csv_row] = [r for r in csv.DictReader(io.StringIO((where / "runs.csv").read_text())) if r["task"] == run.name]
    assert says in csv_row["damage"] and csv_row["outcome"] == (outcome or "")
    whole = next(r for r in data["runs"] if r["id"] != run.name)
    assert whole["outcome"] == "pass" and whole["damage"] == [] and whole["metrics"]["duration"] > 0


@pytest.mark.parametrize("name, damage, counted, outcome, file, says", CASES, ids=[c[0] for c in CASES])
def test_resuming_runs_again_only_the_runs_that_cannot_be_told_to_have_finished(name, damage, counted, outcome, file, says, swept):
    where, run = swept
    damage(run)
    assert finished(run) == counted
    again, notes = CopiedRuns(), []
    result = sweep.run(spec(), where, execute=again, on_event=lambda e: notes.append(e.message) if e.kind == "note" else None)
    assert again.calls == ([] if counted else [run.name]) and result.skipped == 1 + counted
    if counted:
        assert notes == [] and not (where / "interrupted").exists()
        assert json.loads(api.report([where], format="json"))["counts"]["damaged"] == 1  # kept, still said
    else:
        [aside] = (where / "interrupted").iterdir()  # the damaged one, kept
        assert aside.name.startswith(run.name)
        [note] = notes
        assert note.startswith(f"damaged run directory runs/{run.name}: ") and says in note and note.endswith("and run again")
        counts = json.loads(api.report([where], format="json"))["counts"]
        assert counts == {"runs": 2, "finished": 2, "pending": 0, "passed": 2, "failed": 0, "undecided": 0, "damaged": 0}


def test_a_bare_list_of_whole_verdicts_is_the_oldest_verdicts_json_not_damage(swept):
    where, run = swept
    verdicts_bare_list(run)
    data = json.loads(api.report([where], format="json"))
    assert data["counts"]["passed"] == 2 and data["counts"]["damaged"] == 0
