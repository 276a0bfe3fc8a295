#!/usr/bin/env python3
"""Overhead of `labctl run` for a scenario with no waits, on a lab that is already up.

    python3 benchmarks/bench_run.py [--repeat 5] [--json]

Prints, per repetition and as medians: the total time of the run, the time
to the first step (start of the run to the first step's start, i.e. the run
directory, observers and actors), the time the steps themselves took, and
the overhead (total minus steps: setting up and tearing down observers,
collecting, analysing). Target from the issue: overhead under 1.5 s.
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from labctl import api
from labctl.rundir import read_json, read_jsonl

LAB = """\
name: benchrun
description: Client, router, server for the run-overhead benchmark.
nodes:
  client: {}
  router: {role: router}
  server: {}
links:
  - {name: left, endpoints: [client, router]}
  - {name: right, endpoints: [router, server]}
"""

SCENARIO = """\
name: no-waits
description: A connection, some data, a close; no sleeps and no waits.
steps:
  - {node: server, listen: {port: 7000}, as: lsn}
  - {node: client, connect: {to: server, port: 7000}, as: c}
  - {node: server, accept: lsn, as: s}
  - {node: client, send: {sock: c, data: "ping"}}
  - {node: server, recv: {sock: s, expect: "ping"}}
  - {node: client, close: c}
  - {node: server, close: s}
expect:
  - {segments: {from: client, to: server, flags: F, count: 1}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="labctl-bench-run-") as tmp:
        lab = Path(tmp) / "benchrun"
        (lab / "scenarios").mkdir(parents=True)
        (lab / "lab.yaml").write_text(LAB)
        (lab / "scenarios" / "no-waits.yaml").write_text(SCENARIO)
        results = Path(tmp) / "results"
        try:
            console.print("bringing the lab up (not timed)")
            api.up(lab)
            api.run(lab, ["no-waits"], root=results)  # warm: image checked, lab reconciled once
            rows = []
            for i in range(args.repeat):
                started = time.time()
                [outcome] = api.run(lab, ["no-waits"], root=results)
                total = time.time() - started
                run = read_json(outcome.path / "run.json")
                steps = [r for r in read_jsonl(outcome.path / "steps.jsonl") if "index" in r]
                first = steps[0]["t_start"] - started
                in_steps = steps[-1]["t_end"] - steps[0]["t_start"]
                rows.append({"total": total, "to_first_step": first, "steps": in_steps, "overhead": total - in_steps,
                             "passed": outcome.passed, "status": run["status"]})
                console.print(f"  run {i + 1}/{args.repeat}: total {total:.3f} s, first step after {first:.3f} s, "
                              f"steps {in_steps:.3f} s, overhead {total - in_steps:.3f} s")
        finally:
            api.down("benchrun")
    medians = {key: statistics.median(r[key] for r in rows) for key in ("total", "to_first_step", "steps", "overhead")}
    if args.json:
        print(json.dumps({"runs": rows, "median": medians, "target_overhead_s": 1.5}, indent=2))
        return 0
    table = Table(title=f"labctl run, scenario with no waits, lab already up ({args.repeat} runs, medians)")
    for column in ("total", "time to first step", "steps", "overhead (total - steps)"):
        table.add_column(column, justify="right")
    table.add_row(*(f"{medians[k]:.3f} s" for k in ("total", "to_first_step", "steps", "overhead")))
    Console().print(table)
    verdict = "met" if medians["overhead"] < 1.5 else "not met"
    Console().print(f"target: overhead under 1.5 s: {medians['overhead']:.3f} s, {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
