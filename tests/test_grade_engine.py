"""`labctl grade` on the teardown course's three sample submissions, on the real engine."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "labs" / "teardown-course"
SUBMISSIONS = ROOT / "tests" / "submissions"

pytestmark = pytest.mark.engine

# The expected gradebook: right passes all; forgetting SO_REUSEADDR fails the restart (and what needs
# it); the crash fails everything, with the reason, and touches no one else's grades.
EXPECTED = {
    "right": {"points": 9, "failed": []},
    "no-reuseaddr": {"points": 6, "failed": ["restart/restarts at once (SO_REUSEADDR)", "restart/serves after the restart"]},
    "crashes": {"points": 0, "failed": "all"},
}


@pytest.mark.parametrize("parallel", [1, 2])
def test_grade_the_three_sample_submissions(tmp_path, engine, node_image, parallel):
    """The same gradebook whether submissions are graded one at a time or two at once (each on a lab instance of its own)."""
    out = tmp_path / "grades"
    proc = subprocess.run([sys.executable, "-m", "labctl", "grade", str(LAB), "--submissions", str(SUBMISSIONS), "-o", str(out),
                           "--parallel", str(parallel)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    book = json.loads((out / "gradebook.json").read_text())
    assert book["workers"] == parallel
    assert [k for k in engine.labs() if k.startswith("teardown-course.grade")] == []  # every grading instance taken down
    runs = [json.loads(p.read_text()) for p in (out / "runs").rglob("run.json")]
    assert len(runs) == 6 and {r["instance"] for r in runs} == {f"grade{k}" for k in range(1, parallel + 1)}
    keys = [c["key"] for c in book["columns"]]
    assert len(keys) == 8 and sum(c["points"] for c in book["columns"]) == 9
    rows = {s["submission"]: s for s in book["submissions"]}
    assert set(rows) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        row = rows[name]
        failed = [k for k in keys if row["outcomes"][k] != "pass"]
        assert failed == (keys if expected["failed"] == "all" else expected["failed"]), (name, row["outcomes"], row["reason"])
        assert row["points"] == expected["points"] and row["max_points"] == 9
        assert (out / row["report"]).is_file()
    assert rows["right"]["reason"] is None
    # EADDRINUSE is the evidence of the failed restart.
    [restart] = [v for r in rows["no-reuseaddr"]["runs"] if r["scenario"] == "restart" for v in r["verdicts"] if v["index"] == 2]
    assert restart["outcome"] == "fail" and "EADDRINUSE" in restart["observed"]
    # The crash's reason names what the program said.
    assert "TypeError" in rows["crashes"]["reason"], rows["crashes"]["reason"]
    with open(out / "gradebook.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["submission"], r["points"]) for r in table] == [("crashes", "0"), ("no-reuseaddr", "6"), ("right", "9")]
    summary = (out / "summary.html").read_text()
    assert "restarts at once (SO_REUSEADDR)" in summary and "1 / 3" in summary
    assert book["summary"][0]["missed"] >= book["summary"][-1]["missed"]


def grade_one_scenario(make_lab, tmp_path, scenario: str, *options: str) -> dict:
    """Grade one empty submission on a two-node lab holding only ``scenario``; the gradebook."""
    path = make_lab("""
        nodes: {client: {}, server: {}}
        links: [{name: wire, endpoints: [client, server]}]
    """)
    (path / "scenarios").mkdir()
    (path / "scenarios" / "graded.yaml").write_text(scenario)
    (tmp_path / "class" / "anyone").mkdir(parents=True)
    out = tmp_path / "grades"
    proc = subprocess.run([sys.executable, "-m", "labctl", "grade", str(path), "--submissions", str(tmp_path / "class"),
                           "-o", str(out), *options], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "gradebook.json").read_text())


MATRIX_SCENARIO = """\
name: echo
description: The client sends n bytes; the grade wants two.
matrix: {n: [1, 2]}
steps:
  - {node: server, listen: {port: 7000}, as: l}
  - {node: client, connect: {to: server, port: 7000}, as: c}
  - {node: server, accept: l, as: s}
  - {node: client, send: {sock: c, data: "{{ 'x' * n }}"}}
  - {node: server, recv: {sock: s, timeout: 2s}, as: got}
  - {node: client, close: c}
  - {node: server, close: s}
expect:
  - {name: two bytes arrive, points: 1, data: {step: got, equals: "xx"}}
"""


def test_each_matrix_point_is_graded_alone_against_its_own_column(tmp_path, engine, node_image, make_lab):
    book = grade_one_scenario(make_lab, tmp_path, MATRIX_SCENARIO)
    assert [c["key"] for c in book["columns"]] == ["echo[n=1]/two bytes arrive", "echo[n=2]/two bytes arrive"]
    [row] = book["submissions"]
    assert row["outcomes"] == {"echo[n=1]/two bytes arrive": "fail", "echo[n=2]/two bytes arrive": "pass"}, row["reason"]
    assert row["points"] == 1 and row["max_points"] == 2
    # One run per point, each of that point alone.
    runs = [json.loads(Path(r["run_dir"], "run.json").read_text()) for r in row["runs"]]
    assert sorted(r["params"]["n"] for r in runs) == [1, 2]
    assert "echo[n=1]" in row["reason"] and "echo[n=2]" not in row["reason"]


HANGS_AFTER_SERVING = """\
name: hang
description: The server answers, then the run waits far longer than the grader allows.
steps:
  - {node: server, listen: {port: 7001}, as: l}
  - {node: client, connect: {to: server, port: 7001}, as: c}
  - {node: server, accept: l, as: s}
  - {node: client, send: {sock: c, data: "hi"}}
  - {node: server, recv: {sock: s, timeout: 2s}, as: got}
  - {sleep: 120s}
expect:
  - {name: the request arrives, points: 1, data: {step: got, equals: "hi"}}
"""


def test_a_run_stopped_at_its_time_limit_keeps_the_points_it_had_earned(tmp_path, engine, node_image, make_lab):
    [row] = grade_one_scenario(make_lab, tmp_path, HANGS_AFTER_SERVING, "--timeout", "15")["submissions"]
    [run] = row["runs"]
    assert run["status"] == "timeout" and "more than 15 s" in row["reason"]
    assert row["outcomes"] == {"hang/the request arrives": "pass"} and row["points"] == 1
    assert run["run_dir"] and Path(run["run_dir"], "run.json").is_file()
