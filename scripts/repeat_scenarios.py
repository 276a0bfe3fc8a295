#!/usr/bin/env python3
"""Run every scenario of a lab N times; print pass/fail/undecided counts and the spread of key timings.

    python3 scripts/repeat_scenarios.py [LAB] [--times 10] [--results DIR]

Each run is a full `labctl run` (observers, captures, verdicts). A scenario
with a matrix counts each matrix point as its own line. Timings come from the
run directories alone (labctl.sweep.metrics): the FIN retransmission delay, how
long a lingering close() blocked (step linger_close), the kernel's TIME_WAIT
timer when first sampled, and the scenario's duration, as median [min..max]
over the runs that have them.
Prints figures only:
the exit status is 0 when every run of every scenario passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from labctl import api
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lab", nargs="?", default="teardown")
    parser.add_argument("--times", type=int, default=10)
    parser.add_argument("--scenario", "-s", action="append", default=[])
    parser.add_argument("--results", type=Path, default=None, help="keep run directories here (default: a temporary folder)")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 200)  # piped: never cut scenario names
    root = args.results or Path(tempfile.mkdtemp(prefix="labctl-repeat-"))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    timings: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    failures: dict[str, list[str]] = defaultdict(list)
    for round_number in range(1, args.times + 1):
        started = time.monotonic()
        outcomes = api.run(args.lab, args.scenario, root=root)
        for result in outcomes:
            verdict = run_outcome(read_verdicts(result.path)) if result.status == "complete" else FAIL
            counts[result.scenario][verdict] += 1
            for name, value in measure(result.path, [name for name, _ in TIMINGS]).items():
                if value is not None:
                    timings[result.scenario][name].append(value)
            if verdict != PASS:
                failures[result.scenario].append(f"{verdict}: {result.path}")
        console.print(f"round {round_number}/{args.times}: {sum(o.passed for o in outcomes)}/{len(outcomes)} passed "
                      f"in {time.monotonic() - started:.1f} s")
    table = Table(title=f"{args.lab}: {args.times} runs of each scenario (run directories in {root})")
    for column in ("scenario", "passed", "failed", "undecided", *(title for _, title in TIMINGS)):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for scenario in sorted(counts):
        row = counts[scenario]
        table.add_row(escape(scenario), f"{row[PASS]}/{args.times}", str(row[FAIL]), str(row["undecided"]),
                      *(spread(timings[scenario][name]) for name, _ in TIMINGS))
    console.print(table)
    for scenario, paths in failures.items():
        console.print(f"[red]{escape(scenario)}[/red]: " + ", ".join(paths))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
