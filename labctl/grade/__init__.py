"""Grading a class: every submission through every scenario of a lab, one gradebook.

Each subdirectory of the submissions directory is one submission, given to the
lab as the parameter ``submission`` (an absolute path: a lab file writes
``src: "{{ submission }}/server.py"``). Every run is a separate ``labctl run``
process with a time limit, so a submission that crashes, never listens or
loops forever gets its verdicts and a reason, and the others go on. Every
submission starts on a fresh lab (taken down after it), so nothing one leaves
running reaches the next.

Grading runs on lab instances of its own (grade1 ... gradeN, see
``labctl.instances``), never on the lab itself, which the instructor may have up:
with ``parallel`` N, N submissions are graded at once, each worker on its instance.

Writes into the output directory: gradebook.csv, gradebook.json, summary.html
(pass rate per expectation, the most missed first), one HTML report per
submission (submissions/NAME.html) and the run directories (runs/NAME/...).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..analyze.damage import stored_verdicts
from ..errors import UserError
from ..rundir import write_json

RUN_TIMEOUT = 300.0  # seconds one scenario run of one submission may take, bringing the lab up included
Progress = Callable[[str], None]
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Column:
    """One graded expectation: a scenario's expectation, by its place there."""

    scenario: str  # its label: a matrix point's carries the point, ``old-duplicate[timestamps=0]``
    index: int
    name: str
    points: float | None
    point: tuple[tuple[str, object], ...] = ()  # the matrix values of that label, to run it alone
    file: str = ""  # the scenario file's name, which `labctl run -s` takes (its `name:` may differ)

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.name}"


@dataclass
class ScenarioResult:
    scenario: str
    run_dir: str | None
    status: str  # complete | incomplete | error | timeout
    verdicts: list[dict] = field(default_factory=list)
    reason: str | None = None
    seconds: float = 0.0
    damage: list[str] = field(default_factory=list)  # what is wrong in its run directory ("file: problem")


@dataclass
class SubmissionGrade:
    submission: str
    path: str
    results: list[ScenarioResult] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)  # column key -> pass | fail | undecided | not run
    points: float = 0.0
    max_points: float = 0.0
    reason: str | None = None
    report: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"submission": self.submission, "path": self.path, "outcomes": self.outcomes, "points": self.points,
                "max_points": self.max_points, "reason": self.reason, "report": self.report, "seconds": round(self.seconds, 2),
                "runs": [vars(r) for r in self.results]}


@dataclass
class Gradebook:
    lab: str
    directory: Path
    columns: list[Column]
    grades: list[SubmissionGrade]
    parallel: int
    workers: int
    note: str | None
    seconds: float

    def to_json(self) -> dict:
        return {"schema": SCHEMA_VERSION, "lab": self.lab, "parallel": self.parallel, "workers": self.workers, "note": self.note,
                "seconds": round(self.seconds, 2),
                "columns": [{"key": c.key, "scenario": c.scenario, "index": c.index, "name": c.name, "points": c.points} for c in self.columns],
                "submissions": [g.to_json() for g in self.grades], "summary": summary(self)}


def submissions_in(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory of submissions", hint="one subdirectory per submission")
    found = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise UserError(f"{directory} holds no submissions", hint="one subdirectory per submission")
    return found


def columns_of(lab: str | Path, scenarios: Sequence[str], params: Mapping[str, str], sample: Path) -> list[Column]:
    """The graded expectations, from the scenarios as a submission would load them."""
    from ..loader import load_lab, load_scenarios

    loaded = load_lab(lab, {**params, "submission": str(sample)})
    result = []
    for one in load_scenarios(loaded, scenarios, {**params, "submission": str(sample)}):
        for index, expectation in enumerate(one.scenario.expect):
            name = expectation.name or f"{expectation.kind} #{index + 1}"
            result.append(Column(one.label, index, name, expectation.points, tuple(one.point.items()),
                                 one.source.file.stem if one.source.file else one.scenario.name))
    return result


def instance_names(workers: int) -> list[str]:
    """The lab instances grading runs on, one per worker."""
    return [f"grade{k}" for k in range(1, workers + 1)]


def _run_one(lab: str, label: str, file: str, point: Mapping[str, object], submission: Path, params: Mapping[str, str],
             results: Path, timeout: float, instance: str) -> ScenarioResult:
    """Scenario file ``file`` for one submission, one matrix point of it when ``point`` is set (fixed
    with -p, so the run is that point alone), as a ``labctl run`` process; its result under ``label``."""
    fixed = {**params, **{key: value if isinstance(value, str) else json.dumps(value) for key, value in point.items()}}
    argv = [sys.executable, "-m", "labctl", "run", lab, "-s", file, "--results", str(results), "--json",
            "--instance", instance, "-p", f"submission={submission}"]
    for key, value in fixed.items():
        argv += ["-p", f"{key}={value}"]
    started = time.monotonic()
    before = _runs_in(results)  # a run directory left from an earlier grading into the same place is not this run's
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGINT first: the runner then still writes its run directory (incomplete: interrupted).
        os.killpg(proc.pid, signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
        # What the stopped run saw before it was stopped still counts; what it never saw is undecided there.
        run_dir = _latest_run(results, before)
        verdicts = stored_verdicts(Path(run_dir), None)[0] if run_dir else []
        return ScenarioResult(label, run_dir, "timeout", verdicts, f"the run took more than {timeout:.0f} s and was stopped",
                              time.monotonic() - started)
    seconds = time.monotonic() - started
    if proc.returncode in (0, 1, 3) and stdout.strip():
        try:
            [outcome] = json.loads(stdout)
        except ValueError:
            outcome = None
        if outcome is not None:
            return ScenarioResult(label, outcome["run_dir"], outcome["status"], outcome["verdicts"], None, seconds)
    message = " ".join((stderr or stdout).strip().replace("error: ", "", 1).split())[-600:]
    return ScenarioResult(label, _latest_run(results, before), "error", [], message or f"labctl run exited with status {proc.returncode}", seconds)


def _runs_in(results: Path) -> set[Path]:
    return set(results.rglob("run.json")) if results.exists() else set()


def _latest_run(results: Path, before: set[Path]) -> str | None:
    """The run directory this run made: the newest of those that were not there ``before`` it."""
    runs = sorted(_runs_in(results) - before, key=lambda p: p.stat().st_mtime)
    return str(runs[-1].parent) if runs else None


def run_damage(run_dir: str | None) -> list[str]:
    """What is wrong in a run directory ("file: problem"), read through the checked readers as
    `labctl report` reads it; nothing when the run left no directory."""
    from ..analyze.verdicts import RunView

    if not run_dir:
        return []
    path = Path(run_dir)
    if not path.is_dir():
        return ["it is not a directory: there is no run in it" if path.exists() else "it is gone"]
    view = RunView(path)
    damage = list(view.damage)
    stored_verdicts(path, damage)
    return [d.text for d in dict.fromkeys(damage)]


def _reason(result: ScenarioResult, columns: list[Column]) -> str | None:
    """Why a run lost points, in a line: the run's own error, or the first graded expectation that
    failed (what was observed), and the error a program of the run died of, if one did."""
    damaged = f"its run directory {result.run_dir} is damaged: {'; '.join(result.damage)}" if result.damage else ""
    if result.reason:
        return "; ".join(filter(None, (result.reason, damaged)))
    graded = {c.index for c in columns if c.scenario == result.scenario}
    missed = [v for v in result.verdicts if v.get("index") in graded and v.get("kind") not in ("step-ran", "run-complete")
              and v.get("outcome") != "pass"]
    incomplete = [v for v in result.verdicts if v.get("kind") == "run-complete" and v.get("outcome") != "pass"]
    if not missed and not incomplete:
        return damaged or None
    parts = [damaged] if damaged else []
    if incomplete:
        parts.append(f"the run did not complete: {incomplete[0]['observed']}")
    if missed:
        first = missed[0]
        observed = " ".join(str(first.get("observed") or "").replace("\\n", " ").split())[:200]
        parts.append(f"{first.get('name') or first.get('description')}: {observed}")
    if crash := _program_error(result.run_dir):
        parts.append(f"the program said: {crash}")
    return "; ".join(parts)


def _program_error(run_dir: str | None) -> str:
    """The error a program of the run ended with (the last line of a traceback), if any."""
    if not run_dir:
        return ""
    for log in sorted((Path(run_dir) / "logs").glob("*-exec-*.log")):
        try:
            lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:  # a damaged run directory: a log that is a directory, or unreadable
            continue
        if any(line.startswith("Traceback") for line in lines):
            return lines[-1][:300]
    return ""


def grade_submission(lab: str, submission: Path, scenarios: Sequence[str], columns: list[Column], params: Mapping[str, str],
                     out: Path, timeout: float, engine_down: Callable[[], None], instance: str) -> SubmissionGrade:
    started = time.monotonic()
    grade = SubmissionGrade(submission.name, str(submission))
    results_dir = out / "runs" / submission.name
    # One run per label: a matrix point is run alone, its verdicts read against its own columns.
    chosen = {c.scenario: (c.file or c.scenario.split("[")[0], dict(c.point)) for c in columns} or {name: (name, {}) for name in scenarios}
    try:
        for label, (file, point) in chosen.items():
            grade.results.append(_run_one(lab, label, file, point, submission.resolve(), params, results_dir / label, timeout,
                                          instance))
    finally:
        engine_down()
    by_scenario = {r.scenario: r for r in grade.results}
    reasons = []
    for column in columns:
        result = by_scenario.get(column.scenario)
        verdict = next((v for v in (result.verdicts if result else []) if v.get("index") == column.index
                        and v.get("kind") not in ("step-ran", "run-complete")), None)
        outcome = verdict["outcome"] if verdict else "not run"
        grade.outcomes[column.key] = outcome
        if column.points is not None:
            grade.max_points += column.points
            if outcome == "pass":
                grade.points += column.points
    for result in grade.results:
        result.damage = run_damage(result.run_dir)
        if (why := _reason(result, columns)) is not None:
            reasons.append(f"{result.scenario}: {why}")
    grade.reason = " / ".join(reasons) or None
    grade.seconds = time.monotonic() - started
    return grade


def grade(lab: str | Path, submissions: str | Path, *, scenarios: Sequence[str] = (), parallel: int = 1,
          output: str | Path | None = None, params: Mapping[str, str] | None = None, timeout: float = RUN_TIMEOUT,
          engine=None, progress: Progress | None = None) -> Gradebook:
    """Grade every submission (subdirectory of ``submissions``) on every scenario of ``lab``; write the gradebook."""
    from .. import api
    from ..loader import load_lab

    progress = progress or (lambda _: None)
    params = dict(params or {})
    found = submissions_in(Path(submissions))
    loaded = load_lab(lab, {**params, "submission": str(found[0].resolve())})
    lab_ref = str(loaded.path.parent.resolve()) if loaded.path is not None else str(lab)
    columns = columns_of(lab_ref, scenarios, params, found[0].resolve())
    out = Path(output) if output is not None else Path(f"{loaded.lab.name}-grades")
    out.mkdir(parents=True, exist_ok=True)
    workers, note = max(1, min(parallel, len(found))), None
    name = loaded.lab.name
    engine = engine or api.default_engine()
    free: SimpleQueue = SimpleQueue()
    for instance in instance_names(workers):
        api.down(name, engine=engine, instance=instance)  # one left from before would hold other files and programs
        free.put(instance)
    started = time.monotonic()

    def one(submission: Path) -> SubmissionGrade:
        instance = free.get()  # this worker's own lab instance, for this submission
        try:
            progress(f"grading {submission.name}" + (f" (instance {instance})" if workers > 1 else ""))
            result = grade_submission(lab_ref, submission, scenarios, columns, params, out, timeout,
                                      lambda: api.down(name, engine=engine, instance=instance), instance)
        finally:
            free.put(instance)
        progress(f"{submission.name}: {result.points:g}/{result.max_points:g}" + (f" ({result.reason[:120]})" if result.reason else ""))
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        grades = list(pool.map(one, found))
    for result in grades:
        result.report = _write_report(out, result)
    book = Gradebook(name, out, columns, grades, parallel, workers, note, time.monotonic() - started)
    write_gradebook(book)
    return book


def _write_report(out: Path, result: SubmissionGrade) -> str | None:
    """One HTML file per submission: labctl's report of each of its runs, one after another."""
    from .. import api

    reports = []
    for run in result.results:
        if run.run_dir and Path(run.run_dir).is_dir():  # a damaged one too: the report says what is wrong with it
            try:
                reports.append((run.scenario, api.report([run.run_dir], format="html")))
            except UserError as exc:
                reports.append((run.scenario, f"<p>no report: {html.escape(exc.message)}</p>"))
        else:
            reports.append((run.scenario, f"<p>no run directory: {html.escape(run.reason or run.status)}</p>"))
    path = out / "submissions" / f"{result.submission}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = "\n".join(f'<h2>{html.escape(scenario)}</h2>\n<iframe title="{html.escape(scenario)}" srcdoc="{html.escape(page)}"></iframe>'
                       for scenario, page in reports)
    reason = f"<p class=reason>{html.escape(result.reason)}</p>" if result.reason else ""
    path.write_text(f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(result.submission)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}} iframe{{width:100%;height:80vh;border:1px solid #ccc}} .reason{{color:#a00}}</style></head>
<body><h1>{html.escape(result.submission)}: {result.points:g} / {result.max_points:g}</h1>{reason}
{frames}
</body></html>
""")
    return str(path.relative_to(out))


def summary(book: Gradebook) -> list[dict]:
    """Per expectation: how many passed, the pass rate; the most missed first."""
    rows = []
    for column in book.columns:
        outcomes = [g.outcomes.get(column.key) for g in book.grades]
        passed = sum(o == "pass" for o in outcomes)
        rows.append({"key": column.key, "scenario": column.scenario, "name": column.name, "points": column.points,
                     "passed": passed, "missed": len(outcomes) - passed, "of": len(outcomes),
                     "pass_rate": round(passed / len(outcomes), 4) if outcomes else 0.0})
    return sorted(rows, key=lambda r: (-r["missed"], r["key"]))


def write_gradebook(book: Gradebook) -> None:
    out = book.directory
    write_json(out / "gradebook.json", book.to_json())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["submission", *[c.key for c in book.columns], "points", "max_points", "reason", "report"])
    for g in book.grades:
        writer.writerow([g.submission, *[g.outcomes.get(c.key, "not run") for c in book.columns], f"{g.points:g}", f"{g.max_points:g}",
                         g.reason or "", g.report or ""])
    (out / "gradebook.csv").write_text(buffer.getvalue())
    (out / "summary.html").write_text(summary_html(book))


def _points(points: float | None) -> str:
    return "" if points is None else f"{points:g}"


def summary_html(book: Gradebook) -> str:
    rows = "\n".join(f"<tr><td>{html.escape(r['scenario'])}</td><td>{html.escape(r['name'])}</td><td>{_points(r['points'])}</td>"
                     f"<td>{r['passed']} / {r['of']}</td><td><meter min=0 max=1 value={r['pass_rate']}></meter> {r['pass_rate']:.0%}</td>"
                     f"<td>{r['missed']}</td></tr>" for r in summary(book))
    students = "\n".join(f"<tr><td><a href=\"{html.escape(g.report or '')}\">{html.escape(g.submission)}</a></td><td>{g.points:g} / {g.max_points:g}</td>"
                         f"<td>{html.escape(g.reason or '')}</td></tr>" for g in book.grades)
    note = f"<p>{html.escape(book.note)}</p>" if book.note else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(book.lab)}: class summary</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}} table{{border-collapse:collapse;margin-bottom:2em}} td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style></head>
<body><h1>{html.escape(book.lab)}: class summary</h1>
<p>{len(book.grades)} submission(s), graded in {book.seconds:.1f} s.</p>{note}
<h2>Expectations, the most missed first</h2>
<table><tr><th>scenario</th><th>expectation</th><th>points</th><th>passed</th><th>pass rate</th><th>missed</th></tr>
{rows}
</table>
<h2>Submissions</h2>
<table><tr><th>submission</th><th>points</th><th>reason</th></tr>
{students}
</table>
</body></html>
"""
