#!/usr/bin/env python3
"""A sweep of RUNS runs (default 40) with --parallel 1, 2 and 4: wall time, runs per minute, peak RSS.

    python3 benchmarks/bench_sweep.py [--runs 40] [--parallel 1,2,4] [--json] [--keep DIR]

Each sweep is `labctl sweep` in a subprocess, on a copy of the lossy-transfer lab
(named benchsweep; taken down at the end): loss 0..15:5% (4 points), delay 2 ms,
a 20 kB transfer, RUNS/4 repetitions, into a fresh sweep directory. Peak RSS is
the labctl process's own (``os.wait4``'s ru_maxrss), which includes the summary
and chart. With --parallel N > 1 the sweep's workers run on lab instances of their
own (sw1 ... swN). Figures only; nothing is asserted.
Needs the engine (hold the engine lock on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
NAME = "benchsweep"
POINTS = ("loss=0..15:5%", "delay=2ms", "size=20000")  # 4 points


def one_sweep(lab: Path, out: Path, repeat: int, parallel: int) -> dict:
    command = [sys.executable, "-m", "labctl", "sweep", str(lab), "transfer", *(a for p in POINTS for a in ("-p", p)),
               "-r", str(repeat), "--parallel", str(parallel), "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    record = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else {}
    session = (record.get("sessions") or [{}])[-1]
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    runs = (summary.get("counts") or {}).get("finished")
    if runs is None:  # interrupted: no summary was written; count what finished
        from labctl.sweep import finished

        runs = sum(finished(p) for p in (out / "runs").glob("[0-9]*")) if (out / "runs").is_dir() else 0
    return {"parallel": parallel, "workers": session.get("workers"), "runs": runs, "exit": code, "wall_s": round(wall, 2),
            "runs_per_min": round(runs / wall * 60, 2) if wall else None, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "passed": (summary.get("counts") or {}).get("passed"), "note": session.get("note") or "",
            "error": stderr.strip().splitlines()[-1] if code != 0 and stderr.strip() else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40, help="runs per sweep (rounded up to a multiple of 4)")
    parser.add_argument("--parallel", default="1,2,4", help="comma-separated --parallel values")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--keep", metavar="DIR", help="keep the sweep directories here (default: removed)")
    args = parser.parse_args()
    repeat = max(1, math.ceil(args.runs / 4))
    levels = [int(p) for p in args.parallel.split(",") if p.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    lab = work / NAME
    shutil.copytree(REPO / "labs" / "lossy-transfer", lab)
    (lab / "lab.yaml").write_text((lab / "lab.yaml").read_text().replace("name: lossy-transfer", f"name: {NAME}", 1))
    results = []
    try:
        for parallel in levels:
            results.append(one_sweep(lab, work / f"sweep-p{parallel}", repeat, parallel))
    finally:
        subprocess.run([sys.executable, "-m", "labctl", "down", str(lab), "--all-instances"], capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for directory in work.glob("sweep-p*"):
                shutil.move(str(directory), str(Path(args.keep) / directory.name))
        shutil.rmtree(work, ignore_errors=True)
    machine = {"cores": os.cpu_count(), "kernel": os.uname().release}
    if args.json:
        print(json.dumps({"machine": machine, "runs_asked": repeat * 4, "results": results}, indent=2))
        return 0
    table = Table(title=f"bench_sweep: {repeat * 4} runs of lossy-transfer/transfer per sweep ({machine['cores']} cores)")
    for column in ("--parallel", "workers", "runs", "passed", "wall (s)", "runs/min", "peak RSS (MB)", "note"):
        table.add_column(column)
    for r in results:
        table.add_row(str(r["parallel"]), str(r["workers"]), str(r["runs"]), str(r["passed"]), f"{r['wall_s']:.1f}",
                      f"{r['runs_per_min']:.1f}" if r["runs_per_min"] is not None else "", f"{r['peak_rss_mb']:.1f}",
                      r["note"][:70] or r["error"][:70])
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
