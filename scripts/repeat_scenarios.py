#!/usr/bin/env python3
"""Run every scenario of a lab N times and print the pass count per scenario.

    python3 scripts/repeat_scenarios.py [LAB] [--times 10] [--results DIR]

Each run is a full `labctl run` (observers, captures, verdicts). A scenario
with a matrix counts each matrix point as its own line. Prints figures only:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lab", nargs="?", default="teardown")
    parser.add_argument("--times", type=int, default=10)
    parser.add_argument("--scenario", "-s", action="append", default=[])
    parser.add_argument("--results", type=Path, default=None, help="keep run directories here (default: a temporary folder)")
    args = parser.parse_args()
    console = Console()
    root = args.results or Path(tempfile.mkdtemp(prefix="labctl-repeat-"))
    passed: dict[str, int] = defaultdict(int)
    failures: dict[str, list[str]] = defaultdict(list)
    for round_number in range(1, args.times + 1):
        started = time.monotonic()
        outcomes = api.run(args.lab, args.scenario, root=root)
        for outcome in outcomes:
            passed[outcome.scenario] += outcome.passed
            if not outcome.passed:
                failures[outcome.scenario].append(str(outcome.path))
        console.print(f"round {round_number}/{args.times}: {sum(o.passed for o in outcomes)}/{len(outcomes)} passed "
                      f"in {time.monotonic() - started:.1f} s")
    table = Table(title=f"{args.lab}: passes out of {args.times} runs each (run directories in {root})")
    table.add_column("scenario")
    table.add_column("passed", justify="right")
    for scenario in sorted(passed):
        table.add_row(escape(scenario), f"{passed[scenario]}/{args.times}")
    console.print(table)
    for scenario, paths in failures.items():
        console.print(f"[red]{escape(scenario)}[/red] failed in: " + ", ".join(paths))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
