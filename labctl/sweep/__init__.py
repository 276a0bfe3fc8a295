"""Parameter sweeps: every combination of a grid of parameters, repeated, each run its own
self-contained task and run directory, then one summary (CSV, Markdown, a chart).

From a notebook::

    from labctl import sweep
    spec = sweep.make_spec("lossy-transfer", "transfer",
                           [sweep.parse_axis("loss=0..20:10%"), sweep.parse_axis("delay=5ms,25ms")], repeat=2)
    sweep.expand(spec)                      # the tasks, without running anything
    result = sweep.run(spec, "sweeps/loss") # runs (or resumes), writes the summary
    summary = sweep.summarise("sweeps/loss", metric="retransmissions")  # from the run directories alone
    summary.points[0].pass_rate, summary.points[0].spread.median
"""

from __future__ import annotations

from pathlib import Path

from .grid import Axis, expand_range, parse_axis, parse_values
from .metrics import METRICS, measure, metric, outcome, run_outcome
from .execution import Event, SweepResult, run
from .spec import SweepSpec, load_sweep_file, make_spec
from .summary import Summary, collect, is_sweep_dir, render
from .task import Task, TaskResult, finished, run_task

__all__ = ["Axis", "Event", "METRICS", "Summary", "SweepResult", "SweepSpec", "Task", "TaskResult", "collect", "expand",
           "expand_range", "finished", "is_sweep_dir", "load_sweep_file", "make_spec", "measure", "metric", "outcome",
           "parse_axis", "parse_values", "render", "run", "run_outcome", "run_task", "summarise"]


def expand(spec: SweepSpec, seed: int = 0) -> list[Task]:
    """The sweep's tasks (every combination x repeat), as ``run`` would run them with this seed."""
    from .spec import tasks

    return tasks(spec, seed if spec.seed is None else spec.seed)


def summarise(sweep_dir: str | Path, metric: str | None = None) -> Summary:
    """Write the summary files of a sweep directory again (any metric), from its run directories alone."""
    from .summary import write

    return write(sweep_dir, metric)
