#!/usr/bin/env python3
"""Run every scenario of a lab N times; print pass/fail/undecided counts and the spread of key timings.

    python3 scripts/repeat_scenarios.py [LAB] [--times 10] [--results DIR] [--cpu-hog] [--instance NAME]
    python3 scripts/repeat_scenarios.py --from DIR [DIR...]   # the table again, from run directories

Each run is a full `labctl run` (observers, captures, verdicts). A scenario
with a matrix counts each matrix point as its own line. Timings come from the
run directories alone (labctl.sweep.metrics): the FIN retransmission delay, how
long a lingering close() blocked (step linger_close), the kernel's TIME_WAIT
timer when first sampled, and the scenario's duration, as median [min..max]
over the runs that have them.
With --cpu-hog every round runs twice, unloaded and then with one busy
process per core for the whole round (labctl.cpuload); it prints both tables
and a third with the pass counts side by side and how each timing's median
(and its slowest run) moved under the hog. Run directories then go to
DIR/unloaded and DIR/cpu-hog.
With --from, nothing runs: the table is made from the run directories found
under each DIR (several processes' results, say, or an earlier --results), by
each run's scenario label (run.json), so a published table can be re-made.
Prints figures only:
the exit status is 0 when every run of every scenario passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

# The labctl of this checkout, not whichever one is installed (a worktree tests its own code).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from labctl import api
from labctl.cpuload import cpu_hog
from labctl.sweep.metrics import FAIL, PASS, measure, read_verdicts, run_outcome

# (metric, column): the teardown lab's key timings; a scenario without one shows "-".
TIMINGS = (("fin_retransmission_delay", "FIN retransmission delay"),
           ("step:linger_close", "linger close"),
           ("time_wait_timer", "TIME_WAIT timer"),
           ("duration", "duration"))


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]
    if ordered[-1] >= 10:  # timers: seconds read better than tens of thousands of ms
        return f"{median:.2f} s [{ordered[0]:.2f}..{ordered[-1]:.2f}]"
    return f"{median * 1000:.0f} ms [{ordered[0] * 1000:.0f}..{ordered[-1] * 1000:.0f}]"


@dataclass
class Tally:
    """What the runs of one condition (unloaded, or under the CPU hog) gave."""
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    timings: dict[str, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    hogs: list = field(default_factory=list)  # labctl.cpuload.Hog of each round under the hog

    def add(self, result) -> None:
        verdict = run_outcome(read_verdicts(result.path)) if result.status == "complete" else FAIL
        self.counts[result.scenario][verdict] += 1
        for name, value in measure(result.path, [name for name, _ in TIMINGS]).items():
            if value is not None:
                self.timings[result.scenario][name].append(value)
        if verdict != PASS:
            self.failures[result.scenario].append(f"{verdict}: {result.path}")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def shift(unloaded: list[float], loaded: list[float]) -> str:
    if not unloaded or not loaded:
        return "-"
    delta = median(loaded) - median(unloaded)
    if abs(median(unloaded)) >= 10:
        return f"{delta:+.2f} s"
    return f"{delta * 1000:+.1f} ms (max {(max(loaded) - max(unloaded)) * 1000:+.0f})"


def table_of(title: str, tally: Tally) -> Table:
    table = Table(title=title)
    for column in ("scenario", "passed", "failed", "undecided", *(title for _, title in TIMINGS)):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for scenario in sorted(tally.counts):
        row = tally.counts[scenario]
        table.add_row(escape(scenario), f"{row[PASS]}/{sum(row.values())}", str(row[FAIL]), str(row["undecided"]),
                      *(spread(tally.timings[scenario][name]) for name, _ in TIMINGS))
    return table


def from_run_directories(roots: list[Path], console: Console) -> int:
    """The table of runs already made: every directory with a run.json under each root."""
    tally = Tally()
    for run_json in sorted(path for root in roots for path in root.rglob("run.json")):
        try:
            run = json.loads(run_json.read_text())
            label, status = run.get("label") or run["scenario"], run.get("status")
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            console.print(f"[yellow]skipped[/yellow] {escape(str(run_json))}: {exc}")
            continue
        if status == "running":  # another process is making it: not an outcome yet
            console.print(f"[yellow]skipped[/yellow] {escape(str(run_json.parent))}: still running")
            continue
        tally.add(SimpleNamespace(path=run_json.parent, scenario=label, status=status))
    runs = sum(sum(row.values()) for row in tally.counts.values())
    console.print(table_of(f"{runs} run(s) from {', '.join(str(r) for r in roots)}", tally))
    for scenario, paths in tally.failures.items():
        console.print(f"[red]{escape(scenario)}[/red]: " + ", ".join(paths))
    return 1 if tally.failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lab", nargs="?", default="teardown")
    parser.add_argument("--times", type=int, default=10)
    parser.add_argument("--scenario", "-s", action="append", default=[])
    parser.add_argument("--results", type=Path, default=None, help="keep run directories here (default: a temporary folder)")
    parser.add_argument("--cpu-hog", action="store_true",
                        help="each round twice: unloaded, then with a busy process on every core; both tables and the shift")
    parser.add_argument("--instance", default=None,
                        help="run on this instance of the lab (two processes on two instances repeat side by side)")
    parser.add_argument("--from", dest="from_dirs", type=Path, nargs="+", default=None, metavar="DIR",
                        help="run nothing: the table from the run directories under each DIR")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 200)  # piped: never cut scenario names
    if args.from_dirs:
        return from_run_directories(args.from_dirs, console)
    root = args.results or Path(tempfile.mkdtemp(prefix="labctl-repeat-"))
    conditions = {"unloaded": Tally(), "cpu hog": Tally()} if args.cpu_hog else {"unloaded": Tally()}
    for round_number in range(1, args.times + 1):
        for condition, tally in conditions.items():
            started = time.monotonic()
            # Under --cpu-hog the conditions alternate round by round, so both meet the same machine.
            where = root / condition.replace(" ", "-") if args.cpu_hog else root
            with cpu_hog() if condition == "cpu hog" else nullcontext() as hog:
                outcomes = api.run(args.lab, args.scenario, root=where, instance=args.instance)
            if hog is not None:
                tally.hogs.append(hog)
            for result in outcomes:
                tally.add(result)
            console.print(f"round {round_number}/{args.times}{f' ({condition})' if args.cpu_hog else ''}: "
                          f"{sum(o.passed for o in outcomes)}/{len(outcomes)} passed in {time.monotonic() - started:.1f} s"
                          + (f"; {hog.describe()}" if hog is not None else ""))
    for condition, tally in conditions.items():
        title = f"{args.lab}: {args.times} runs of each scenario" + (f", {condition}" if args.cpu_hog else "")
        console.print(table_of(f"{title} (run directories in {root})", tally))
    if args.cpu_hog:
        unloaded, loaded = conditions["unloaded"], conditions["cpu hog"]
        table = Table(title=f"{args.lab}: what the CPU hog changed (median under the hog minus median unloaded; max: the same for the slowest run)")
        for column in ("scenario", "passed unloaded", "passed under hog", *(title for _, title in TIMINGS)):
            table.add_column(column, justify="left" if column == "scenario" else "right")
        for scenario in sorted(set(unloaded.counts) | set(loaded.counts)):
            table.add_row(escape(scenario), f"{unloaded.counts[scenario][PASS]}/{args.times}",
                          f"{loaded.counts[scenario][PASS]}/{args.times}",
                          *(shift(unloaded.timings[scenario][name], loaded.timings[scenario][name]) for name, _ in TIMINGS))
        console.print(table)
        busy = [h.cores_busy for h in loaded.hogs]
        idle = [h.idle_fraction for h in loaded.hogs if h.idle_fraction is not None]
        console.print(f"the hog's loops had {min(busy):.2f}..{max(busy):.2f} of {os.cpu_count()} cores in each round"
                      + (f"; the machine was idle {max(idle):.1%} of the time at most" if idle else ""))
    failed = False
    for condition, tally in conditions.items():
        for scenario, paths in tally.failures.items():
            failed = True
            console.print(f"[red]{escape(scenario)}[/red]{f' ({condition})' if args.cpu_hog else ''}: " + ", ".join(paths))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
