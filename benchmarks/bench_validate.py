"""How long validating a lab takes as it grows, without Docker (figures, never assertions).

    python3 benchmarks/bench_validate.py [--sizes 50,100,200,400,1000] [--json]

Three shapes, each loaded with ``loader.load_lab_text`` (parse, model, meaning, reachability):

- ``one link``: N hosts on one link (the shape that was ~n^4: 400 hosts took minutes);
- ``star``: one router, N hosts each on its own link to it;
- ``chain``: N routers in a line, a host at each end.

Also a scenario file with an M-point matrix (every point rendered and validated).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labctl.loader import load_lab_text, load_scenario_file  # noqa: E402


def one_link(n: int) -> str:
    nodes = "".join(f"  h{i}: {{}}\n" for i in range(n))
    return f"name: big\nnodes:\n{nodes}links:\n  - {{name: l, subnet: 10.0.0.0/16, endpoints: [{', '.join(f'h{i}' for i in range(n))}]}}\n"


def star(n: int) -> str:
    nodes = "  r: {role: router}\n" + "".join(f"  h{i}: {{}}\n" for i in range(n - 1))
    links = "".join(f"  - {{name: l{i}, endpoints: [r, h{i}]}}\n" for i in range(n - 1))
    return f"name: big\nnodes:\n{nodes}links:\n{links}"


def chain(n: int) -> str:
    routers = n - 2
    nodes = "  a: {}\n  b: {}\n" + "".join(f"  r{i}: {{role: router}}\n" for i in range(routers))
    hops = ["a", *(f"r{i}" for i in range(routers)), "b"]
    links = "".join(f"  - {{name: l{i}, endpoints: [{x}, {y}]}}\n" for i, (x, y) in enumerate(zip(hops, hops[1:])))
    return f"name: big\nnodes:\n{nodes}links:\n{links}"


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="50,100,200,400,1000")
    parser.add_argument("--points", default="10,100,1000")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for n in map(int, args.sizes.split(",")):
        for shape, make in (("one link", one_link), ("star", star), ("chain", chain)):
            rows.append({"shape": shape, "nodes": n, "seconds": round(timed(lambda: load_lab_text(make(n))), 4)})
    lab_text = "name: m\nnodes: {a: {}, b: {}}\nlinks: [{name: l, endpoints: [a, b]}]\n"
    with tempfile.TemporaryDirectory() as tmp:
        lab = load_lab_text(lab_text, Path(tmp) / "lab.yaml")
        for m in map(int, args.points.split(",")):
            path = Path(tmp) / "s.yaml"
            path.write_text(f"name: s\nmatrix: {{x: {list(range(m))}}}\nsteps:\n  - {{sleep: \"{{{{ x / 1000 }}}}\"}}\n")
            rows.append({"shape": "matrix points", "nodes": m, "seconds": round(timed(lambda: load_scenario_file(path, lab, {})), 4)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(f"{row['shape']:>14} {row['nodes']:>6}  {row['seconds']:.4f} s")


if __name__ == "__main__":
    main()
