"""How long `labctl report` takes on a large run, per format.

    python3 benchmarks/bench_report.py [--segments 10000] [--repeat 3] [--json]

Writes a run directory by hand (tests/synthetic.py: real pcaps at four
captures, one data segment dropped at the router and retransmitted) with about
``--segments`` segments, then times, on it: building the report model (reading
the pcaps, the analysis, the timeline), and rendering each format as `labctl
report` does (the ladder folded to its remarkable parts). The goal is 10,000
segments in under 5 s per format, on the 2-core machines labctl runs on.

It prints figures and never asserts on time: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labctl.report import render  # noqa: E402
from labctl.report.model import build  # noqa: E402
from tests.synthetic import bulk  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        started = time.perf_counter()
        run = bulk(max((args.segments - 9) // 2, 1)).write(Path(tmp), judge=False)
        written = time.perf_counter() - started
        report = build(run)
        figures = {"segments": len(report.segments), "capture_records": sum(len(s.seen) for s in report.segments),
                   "pcap_bytes": sum(p.stat().st_size for p in (run / "pcaps").iterdir()), "write_seconds": round(written, 3)}
        timings: dict[str, list[float]] = {"model": []}
        for _ in range(args.repeat):
            started = time.perf_counter()
            build(run)
            timings["model"].append(time.perf_counter() - started)
        sizes = {}
        for fmt in ("term", "md", "html", "json"):
            timings[fmt] = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                text = render([run], fmt)  # the model and the format, as `labctl report -f FMT` does
                timings[fmt].append(time.perf_counter() - started)
            sizes[fmt] = len(text.encode())
    result = {**figures, "seconds": {k: {"median": round(statistics.median(v), 3), "max": round(max(v), 3)} for k, v in timings.items()},
              "output_bytes": sizes}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{figures['segments']:,} segments ({figures['capture_records']:,} capture records, "
          f"{figures['pcap_bytes'] / 1e6:.1f} MB of pcaps); median of {args.repeat}, seconds:")
    print(f"  {'model (pcaps, analysis, timeline)':<36} {result['seconds']['model']['median']:>7.3f}")
    for fmt in ("term", "md", "html", "json"):
        print(f"  {'report -f ' + fmt + ' (model included)':<36} {result['seconds'][fmt]['median']:>7.3f}   "
              f"{sizes[fmt] / 1e3:,.0f} kB")


if __name__ == "__main__":
    main()
