"""What the nodes recorded, copied into the run directory when the run ends.

Each node's actor writes under its own run directory inside the node
(captures, sampled states, rule actions, logs); the engine copies that
folder out, from a stopped node too, so a node that died mid-run still
gives its captures.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Callable

from ..engine import Engine
from ..plan import LabPlan
from ..rundir import RunDir


def collect_all(engine: Engine, plan: LabPlan, node_dir: str, rundir: RunDir, progress: Callable[[str], None]) -> dict[str, str]:
    """Every node's records; returns the nodes that could not give theirs, with why."""
    missed: dict[str, str] = {}
    for node in plan.nodes:
        try:
            collect(engine, plan.key, node.name, node_dir, rundir)
        except Exception as exc:  # a removed node has nothing to give; the others still do
            missed[node.name] = str(exc)
            progress(f"could not collect from {node.name}: {exc}")
    return missed


def collect(engine: Engine, lab: str, node: str, node_dir: str, rundir: RunDir) -> None:
    archive = engine.fetch(lab, node, node_dir)
    if archive is None:
        return
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            name = member.name.split("/", 1)[1] if "/" in member.name else member.name
            data = tar.extractfile(member).read()
            if name.startswith("pcaps/"):
                rundir.write_bytes(name, data)  # whole or absent; a full disk is rundir.failure
            elif name == "states.jsonl":
                for record in _lines(data):
                    rundir.append(name, {**record, "node": node, "source": "sample"})
            elif name == "rules.jsonl":
                for record in _lines(data):
                    rundir.append(name, {**record, "node": node})
            else:
                rundir.write_bytes(f"logs/{node}-{Path(name).name}", data)
    try:
        engine.exec(lab, node, ["rm", "-rf", node_dir])
    except Exception:
        pass


def _lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
