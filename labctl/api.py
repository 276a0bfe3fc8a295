"""The Python API: what the CLI, the tests and notebooks call.

Each function takes plain values, returns plain data, and raises
``UserError`` for anything the user can fix. None of them prints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .engine import DeployReport, Engine, ExecResult, default_engine
from .errors import UserError
from .loader import LoadedLab, available_labs, load_lab
from .model import lab_json_schema
from .plan import LabPlan, plan_lab

Progress = Callable[[str], None]
TRACEFS = Path("/sys/kernel/tracing")
TRACEPOINTS = ("sock/inet_sock_set_state", "tcp/tcp_retransmit_skb", "tcp/tcp_send_reset", "tcp/tcp_receive_reset")


@dataclass(frozen=True)
class UpResult:
    plan: LabPlan
    report: DeployReport
    image: object
    seconds: float


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"parameter '{pair}' is not KEY=VALUE")
        params[key.strip()] = value
    return params


def load(ref: str | Path, params: Mapping[str, str] | None = None) -> LoadedLab:
    return load_lab(ref, params)


def up(ref: str | Path, params: Mapping[str, str] | None = None, *, engine: Engine | None = None,
       offline: bool = False, progress: Progress | None = None) -> UpResult:
    """Bring a lab up (or reconcile it with its file). Validation happens before anything is created."""
    started = time.monotonic()
    loaded = load_lab(ref, params)
    engine = engine or default_engine()
    image = engine.ensure_image(offline=offline, progress=progress)
    plan = plan_lab(loaded, engine.subnets_in_use(exclude_lab=loaded.lab.name))
    report = engine.deploy(plan, image.tag, progress)
    return UpResult(plan, report, image, time.monotonic() - started)


def run(ref: str | Path, scenarios: Sequence[str] = (), params: Mapping[str, str] | None = None, *,
        engine: Engine | None = None, root: Path | None = None, progress: Progress | None = None) -> list:
    """Run scenarios of a lab (all of them by default), bringing the lab up if needed.

    Every scenario and matrix point is validated before anything is created or run.
    Returns one ``RunResult`` per run, each with its run directory and verdicts.
    """
    from .loader import load_scenarios
    from .runner import ScenarioRun

    loaded = load_lab(ref, params)
    chosen = load_scenarios(loaded, scenarios, params)
    engine = engine or default_engine()
    image = engine.ensure_image(progress=progress)
    plan = plan_lab(loaded, engine.subnets_in_use(exclude_lab=loaded.lab.name))
    engine.deploy(plan, image.tag, progress)
    results = []
    for one in chosen:
        if progress:
            progress(f"running {one.label}")
        results.append(ScenarioRun(engine, loaded, plan, one, image.tag, root, progress).execute())
    return results


def lab_name(ref: str | Path, params: Mapping[str, str] | None = None) -> str:
    """A lab reference to a name: a path is read for its name; anything else is the name."""
    if Path(ref).exists():
        return load_lab(ref, params).lab.name
    return str(ref)


def down(ref: str | Path | None, *, engine: Engine | None = None, params: Mapping[str, str] | None = None) -> list[str]:
    """Remove a lab's objects (every labctl object when ``ref`` is None)."""
    engine = engine or default_engine()
    return engine.destroy(None if ref is None else lab_name(ref, params))


@dataclass
class NodeStatus:
    name: str
    status: str
    container: str
    image: str
    interfaces: list[dict] = field(default_factory=list)
    routes: list[dict] = field(default_factory=list)


@dataclass
class LabStatus:
    lab: str
    nodes: list[NodeStatus]
    links: list[dict]

    def to_json(self) -> dict:
        return {"lab": self.lab, "nodes": [vars(n) for n in self.nodes], "links": self.links}


def status(lab: str | None = None, *, engine: Engine | None = None) -> list[LabStatus]:
    engine = engine or default_engine()
    names = [lab_name(lab)] if lab else engine.labs()
    result = []
    for name in names:
        nodes = engine.nodes(name)
        if lab and not nodes and not engine.links(name):
            raise UserError(f"lab '{name}' is not up", hint=f"start it with `labctl up {name}`")

        def describe(state) -> NodeStatus:
            entry = NodeStatus(state.node, state.status, state.container, state.image)
            if state.status == "running":
                inspected = engine.exec(name, state.node, ["python3", "-m", "labctl.agent", "inspect"])
                if inspected.exit_code == 0:
                    import json
                    data = json.loads(inspected.stdout)
                    entry.interfaces, entry.routes = data["interfaces"], data["routes"]
            return entry

        with ThreadPoolExecutor(max_workers=8) as pool:
            described = list(pool.map(describe, nodes))
        links = [{"name": l.link, "network": l.network, "subnet": l.subnet, "gateway": l.gateway} for l in engine.links(name)]
        result.append(LabStatus(name, described, links))
    return result


def exec_in(lab: str, node: str, argv: Sequence[str], *, engine: Engine | None = None,
            stream: Callable[[bytes, bool], None] | None = None) -> ExecResult:
    engine = engine or default_engine()
    return engine.exec(lab_name(lab), node, argv, stream=stream)


def shell(lab: str, node: str, argv: Sequence[str] = ("bash",), *, engine: Engine | None = None) -> int:
    engine = engine or default_engine()
    return engine.shell(lab_name(lab), node, argv)


@dataclass(frozen=True)
class LabInfo:
    name: str
    description: str
    path: str


def labs() -> list[LabInfo]:
    result = []
    for name, path in available_labs().items():
        try:
            description = load_lab(path).lab.description
        except UserError as exc:
            description = f"(invalid: {exc.message})"
        result.append(LabInfo(name, description, str(path.parent)))
    return result


def schema() -> dict:
    return lab_json_schema()


def report(runs: Sequence[str | Path] = (), *, format: str = "term", root: Path | None = None, color: bool = False,
           width: int | None = None, fold: bool = True) -> str:
    """A run as a report: ``term`` (rich text), ``md``, ``html`` (one self-contained file) or ``json``.

    Each of ``runs`` is a run directory, or a lab (its latest run under ``root``); none: the
    latest run of any lab; two: the runs compared side by side. Reads run directories only:
    no engine is needed. ``fold`` folds a large ladder to its remarkable parts.
    """
    from .report import render

    return render(runs, format, root=root, color=color, width=width, fold=fold)


def report_schema() -> dict:
    """The JSON Schema of ``report(..., format="json")``."""
    from .report.jsonreport import schema as report_json_schema

    return report_json_schema()


def build_image(*, offline: bool = False, rebuild: bool = False, engine: Engine | None = None,
                progress: Progress | None = None):
    engine = engine or default_engine()
    return engine.ensure_image(offline=offline, rebuild=rebuild, progress=progress)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    instead: str = ""


def doctor(*, engine: Engine | None = None) -> list[Check]:
    """What this machine offers labctl, and what labctl uses where something is missing."""
    checks: list[Check] = []
    try:
        engine = engine or default_engine()
        checks.append(Check("engine", True, engine.version()))
    except UserError as exc:
        checks.append(Check("engine", False, exc.message, "nothing: labctl needs a container engine"))
        return checks
    image = getattr(engine, "image_present")()
    if image:
        checks.append(Check("node image", True, image))
    else:
        from .engine.image import expected_tag
        checks.append(Check("node image", False, f"{expected_tag()} not built yet", "built on first `labctl up` (or `labctl image build`)"))
    debootstrap = shutil.which("debootstrap")
    checks.append(Check("debootstrap (offline base)", debootstrap is not None, debootstrap or "not installed",
                        "" if debootstrap else "a Debian base image from a registry (apt-get install debootstrap for offline builds)"))
    checks.append(_tracefs_check())
    if image:
        import json
        probed = engine.probe(image, ["python3", "-m", "labctl.agent", "probe"])
        if probed.exit_code == 0:
            for key, feature in json.loads(probed.stdout)["features"].items():
                checks.append(Check(f"kernel: {feature['what']}", feature["ok"], "available" if feature["ok"] else feature["detail"] or "not available",
                                    "" if feature["ok"] else feature["fallback"]))
        else:
            checks.append(Check("kernel features", False, f"probe failed: {probed.stderr.strip()[-300:]}"))
    else:
        checks.append(Check("kernel features", False, "not probed: needs the node image", "run `labctl image build`, then doctor again"))
    return checks


def _tracefs_check() -> Check:
    events = TRACEFS / "events"
    if not events.is_dir() and os.geteuid() == 0:
        # tracefs is often present but not mounted; root can mount it without side effects.
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True)
    missing = [tp for tp in TRACEPOINTS if not (events / tp).is_dir()]
    if not events.is_dir():
        return Check("tracefs tracepoints", False, f"{TRACEFS} not mounted", "TCP states from sampling (ss) and the captures only")
    if missing:
        return Check("tracefs tracepoints", False, f"missing: {', '.join(missing)}", "TCP states from sampling (ss) and the captures only")
    return Check("tracefs tracepoints", True, ", ".join(t.split("/")[1] for t in TRACEPOINTS))
