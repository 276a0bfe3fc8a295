"""A sweep directory -> one summary: per run and per grid point, as CSV, Markdown, JSON and a chart.

Reads sweep.json and the run directories only (no engine), so ``labctl report
SWEEP_DIR`` redraws it anywhere. A run counts once it finished (its run.json
says so, see ``task.finished``); a pending or interrupted one is listed as
pending and counts in no pass rate. Run directories are read through the
checked readers: what is damaged in one is said, naming the run directory and
the file; one too damaged to say it ended is pending (resuming runs it again),
and stored verdicts that cannot all be read never make a pass.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..rundir import Damage, read_json, read_run, type_name, write_json
from .grid import Axis
from .metrics import FAIL, METRICS, PASS, UNDECIDED, metric, measure, recorded_outcome
from .task import Task, damage_text, finished

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
DAMAGE_SHOWN = 10  # damaged run directories named in the summary's heading (all of them in runs.csv, summary.json)
FILES = ("runs.csv", "summary.csv", "summary.md", "summary.json", "chart.svg", "chart.png")


@dataclass
class RunRow:
    task: Task
    run_dir: Path
    finished: bool
    status: str | None = None  # run.json's
    outcome: str | None = None  # pass | fail | undecided (None while pending)
    metrics: dict[str, float | None] = field(default_factory=dict)
    damage: list[Damage] = field(default_factory=list)  # what is wrong in its run directory (files relative to it)

    @property
    def where(self) -> str | None:
        """The run directory, relative to the sweep directory, when there is one to look at."""
        return f"{self.run_dir.parent.name}/{self.run_dir.name}" if self.finished or self.damage else None

    def damage_text(self) -> str:
        return damage_text(self.damage)


@dataclass
class Spread:
    n: int  # runs with a value
    median: float | None = None
    q1: float | None = None
    q3: float | None = None
    low: float | None = None
    high: float | None = None
    mean: float | None = None

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        if not values:
            return cls(0)
        ordered = sorted(values)
        q1, q3 = (statistics.quantiles(ordered, n=4, method="inclusive")[0::2] if len(ordered) > 1 else (ordered[0], ordered[0]))
        return cls(len(ordered), statistics.median(ordered), q1, q3, ordered[0], ordered[-1], statistics.fmean(ordered))


@dataclass
class PointRow:
    point: dict[str, str]
    runs: int
    finished: int
    passed: int
    failed: int
    undecided: int
    spread: Spread

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.finished if self.finished else None


@dataclass
class Summary:
    dir: Path
    sweep: dict  # sweep.json
    axes: tuple[Axis, ...]  # the swept ones (more than one value)
    metric: Any  # metrics.Metric
    runs: list[RunRow]
    points: list[PointRow]

    @property
    def counts(self) -> dict[str, int]:
        done = [r for r in self.runs if r.finished]
        return {"runs": len(self.runs), "finished": len(done), "pending": len(self.runs) - len(done),
                "passed": sum(r.outcome == PASS for r in done), "failed": sum(r.outcome == FAIL for r in done),
                "undecided": sum(r.outcome == UNDECIDED for r in done), "damaged": sum(bool(r.damage) for r in self.runs)}

    def to_json(self) -> dict:
        return {"schema_version": 1, "sweep": self.sweep.get("spec"), "metric": {"name": self.metric.name, "unit": self.metric.unit,
                                                                                  "description": self.metric.description},
                "counts": self.counts,
                "points": [{"point": p.point, "runs": p.runs, "finished": p.finished, "passed": p.passed, "failed": p.failed,
                            "undecided": p.undecided, "pass_rate": p.pass_rate, self.metric.name: vars(p.spread)} for p in self.points],
                "runs": [{"id": r.task.id, "point": dict(r.task.point), "repetition": r.task.repetition, "seed": r.task.seed,
                          "run_dir": r.where, "status": r.status, "outcome": r.outcome, "metrics": r.metrics,
                          "damage": [{"file": d.file, "problem": d.problem} for d in r.damage]} for r in self.runs]}


def read_sweep(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"{sweep_dir} is not a sweep directory (no {SWEEP_FILE})")
    try:
        data = read_json(path)
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: it holds {type_name(data)}, not the object labctl writes")
    return data


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def collect(sweep_dir: str | Path, metric_name: str | None = None) -> Summary:
    """Every run of the sweep with its outcome and metrics, and the per-point aggregate of ``metric_name``."""
    sweep_dir = Path(sweep_dir)
    sweep = read_sweep(sweep_dir)
    spec = sweep.get("spec") or {}
    chosen = metric(metric_name or spec.get("metric") or "transfer_time")
    axes = tuple(Axis(a["name"], tuple(a["values"])) for a in spec.get("axes", []))
    names = list(METRICS) + ([chosen.name] if chosen.name not in METRICS else [])
    rows = []
    for data in sweep.get("tasks", []):
        task = Task.from_json(data)
        run_dir = sweep_dir / RUNS_DIR / task.id
        damage: list[Damage] = []
        row = RunRow(task, run_dir, finished(run_dir, damage), damage=damage)
        if row.finished:
            row.status = read_run(run_dir).get("status")
            row.outcome = recorded_outcome(run_dir, damage)
            try:
                row.metrics = measure(run_dir, names, damage)
            except Exception as exc:  # a run directory analysis cannot read: its metrics are unknown, the run still counts
                row.metrics = {name: None for name in names}
                row.metrics["error"] = f"{type(exc).__name__}: {exc}"  # type: ignore[assignment]
        rows.append(row)
    swept = tuple(a for a in axes if a.swept)
    return Summary(sweep_dir, sweep, swept, chosen, rows, aggregate(rows, swept, chosen.name))


def aggregate(rows: list[RunRow], axes: tuple[Axis, ...], metric_name: str) -> list[PointRow]:
    """One row per grid point (in grid order), over its repetitions."""
    groups: dict[tuple, list[RunRow]] = {}
    for row in rows:
        groups.setdefault(tuple(row.task.point.get(a.name) for a in axes), []).append(row)
    result = []
    for key, group in groups.items():
        done = [r for r in group if r.finished]
        values = [r.metrics[metric_name] for r in done if r.metrics.get(metric_name) is not None]
        result.append(PointRow(dict(zip((a.name for a in axes), key)), len(group), len(done),
                               sum(r.outcome == PASS for r in done), sum(r.outcome == FAIL for r in done),
                               sum(r.outcome == UNDECIDED for r in done), Spread.of(values)))
    return result


# --- formats ------------------------------------------------------------------------------

def _number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}g}"


def runs_csv(summary: Summary) -> str:
    names = list(METRICS) + ([summary.metric.name] if summary.metric.name not in METRICS else [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", *(a.name for a in summary.axes), "repetition", "seed", "finished", "status", "outcome", *names, "run_dir",
                     "damage"])
    for row in summary.runs:
        writer.writerow([row.task.id, *(row.task.point.get(a.name, "") for a in summary.axes), row.task.repetition, row.task.seed,
                         int(row.finished), row.status or "", row.outcome or "", *(_number(row.metrics.get(n), 6) for n in names),
                         row.where or "", row.damage_text()])
    return buffer.getvalue()


def summary_csv(summary: Summary) -> str:
    m = summary.metric.name
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*(a.name for a in summary.axes), "runs", "finished", "passed", "failed", "undecided", "pass_rate",
                     f"{m}_n", f"{m}_median", f"{m}_q1", f"{m}_q3", f"{m}_min", f"{m}_max", f"{m}_mean"])
    for p in summary.points:
        s = p.spread
        writer.writerow([*(p.point[a.name] for a in summary.axes), p.runs, p.finished, p.passed, p.failed, p.undecided,
                         _number(p.pass_rate, 6), s.n, *(_number(v, 6) for v in (s.median, s.q1, s.q3, s.low, s.high, s.mean))])
    return buffer.getvalue()


def _rate(p: PointRow) -> str:
    return "" if p.pass_rate is None else f"{p.pass_rate * 100:.0f}%"


def _spread_text(s: Spread, unit: str) -> str:
    if not s.n:
        return "no value"
    return f"{_number(s.median)} ({_number(s.low)}..{_number(s.high)}) {unit}".strip()


def table_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """The per-point table every text format shows."""
    head = [*(a.title for a in summary.axes), "runs", "pass", "fail", "undecided", "pass rate",
            f"{summary.metric.title}: median (min..max)", "n"]
    body = [[*(p.point[a.name] for a in summary.axes), f"{p.finished}/{p.runs}", str(p.passed), str(p.failed), str(p.undecided),
             _rate(p), _spread_text(p.spread, summary.metric.unit), str(p.spread.n)] for p in summary.points]
    return head, body


def _heading(summary: Summary) -> tuple[str, list[str]]:
    spec = summary.sweep.get("spec") or {}
    c = summary.counts
    fixed = [a for a in spec.get("axes", []) if len(a["values"]) == 1]
    lines = [f"lab `{Path(spec.get('lab', '?')).name}`, scenario `{spec.get('scenario')}`, "
             f"{spec.get('repeat')} repetition(s) of {len(summary.points)} point(s); seed {spec.get('seed')}",
             f"{c['finished']} of {c['runs']} runs finished: {c['passed']} passed, {c['failed']} failed, {c['undecided']} undecided"
             + (f"; {c['pending']} pending (run the same sweep again to finish it)" if c["pending"] else "")]
    if fixed:
        lines.append("fixed: " + ", ".join(f"{a['name']}={a['values'][0]}" for a in fixed))
    lines.append(f"metric: {summary.metric.name}: {summary.metric.description}")
    damaged = [r for r in summary.runs if r.damage]
    for row in damaged[:DAMAGE_SHOWN]:
        counted = (f"counted as {row.outcome}" if row.finished else
                   "not counted: it cannot be told to have finished; running the same sweep again sets it aside and runs it again")
        lines.append(f"damaged run directory {row.where}: {row.damage_text()} ({counted})")
    if len(damaged) > DAMAGE_SHOWN:
        lines.append(f"and {len(damaged) - DAMAGE_SHOWN} more damaged run directories: see the damage column of runs.csv")
    return f"Sweep {spec.get('scenario')} on {Path(spec.get('lab', '?')).name}", lines


def markdown(summary: Summary) -> str:
    title, lines = _heading(summary)
    head, body = table_rows(summary)
    machine = summary.sweep.get("machine") or {}
    out = [f"# {title}", "", *(f"- {line}" for line in lines), "",
           "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
           *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body), "",
           "![pass rate and metric against the swept parameters](chart.svg)", "",
           f"labctl {summary.sweep.get('labctl_version')}; kernel {machine.get('kernel')}, {machine.get('cores')} cores, "
           f"engine {machine.get('engine')}. Per run: `runs.csv` and `runs/<task>/`. Redraw: `labctl report` on this directory.", ""]
    return "\n".join(out)


def term(summary: Summary, *, color: bool = False, width: int | None = None) -> str:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    title, lines = _heading(summary)
    head, body = table_rows(summary)
    console = Console(file=io.StringIO(), force_terminal=color, color_system="standard" if color else None, width=width or 120)
    console.print(f"[bold]{title}[/bold]")
    for line in lines:
        console.print(escape(line.replace("`", "")), highlight=False)
    table = Table()
    # Cells are text: a swept value or a scenario label such as [n=1] is not rich markup.
    for column in head:
        table.add_column(escape(str(column)))
    for row in body:
        table.add_row(*(escape(str(cell)) for cell in row))
    console.print(table)
    console.print(f"chart: {summary.dir / 'chart.svg'} (and .png); tables: summary.csv, runs.csv, summary.md", highlight=False)
    return console.file.getvalue()  # type: ignore[attr-defined]


def html(summary: Summary) -> str:
    from html import escape

    title, lines = _heading(summary)
    head, body = table_rows(summary)
    svg = (summary.dir / "chart.svg").read_text() if (summary.dir / "chart.svg").is_file() else ""
    svg = svg[svg.find("<svg"):] if "<svg" in svg else ""
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>{escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}"
            "td,th{border:1px solid #bbb;padding:.2em .6em;text-align:right}</style></head><body>"
            f"<h1>{escape(title)}</h1><ul>" + "".join(f"<li>{escape(line.replace('`', ''))}</li>" for line in lines) + "</ul>"
            "<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + f"</tr>{rows}</table>{svg}</body></html>\n")


def write(sweep_dir: str | Path, metric_name: str | None = None) -> Summary:
    """Collect and write every summary file into the sweep directory; returns the summary."""
    from .chart import draw

    summary = collect(sweep_dir, metric_name)
    directory = summary.dir
    (directory / "runs.csv").write_text(runs_csv(summary))
    (directory / "summary.csv").write_text(summary_csv(summary))
    write_json(directory / "summary.json", summary.to_json())
    draw(summary, directory / "chart.svg", directory / "chart.png")
    (directory / "summary.md").write_text(markdown(summary))
    return summary


def render(sweep_dir: str | Path, fmt: str = "term", *, color: bool = False, width: int | None = None) -> str:
    """``labctl report SWEEP_DIR``: rewrite the summary files from the run directories, and return it in ``fmt``."""
    summary = write(sweep_dir)
    if fmt == "md":
        return markdown(summary)
    if fmt == "json":
        return json.dumps(summary.to_json(), indent=2, default=str) + "\n"
    if fmt == "html":
        return html(summary)
    return term(summary, color=color, width=width)
