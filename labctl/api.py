"""The Python API: what the CLI, the tests and notebooks call.

Each function takes plain values, returns plain data, and raises
``UserError`` for anything the user can fix. None of them prints.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from . import nodes as agent
from .engine import DeployReport, Engine, ExecResult, default_engine
from .errors import EngineError, UserError
from .impairments import apply_lab, heal_loop, in_force, loop_link, parse_impairment, set_link, start_loop
from .instances import DEFAULT_INSTANCE, check_instance, flag, lab_key, split_key
from .instances import describe as describe_instance
from .loader import LoadedLab, available_labs, load_lab
from .plan import LabPlan, plan_lab
from .remap import remap_lab, remap_scenario

Progress = Callable[[str], None]


@dataclass(frozen=True)
class UpResult:
    plan: LabPlan
    report: DeployReport
    image: object
    seconds: float
    impairments: list = field(default_factory=list)  # impairments.Direction in force from the lab file


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


def lab_lock(engine: Engine, lab: str, instance: str = DEFAULT_INSTANCE, *, wait: bool = True, progress: Progress | None = None):
    """The lab instance's lock on this engine (see ``labctl.locking``): held by whatever changes or runs it."""
    from .locking import lab_lock as lock

    return lock(engine.ident, lab, instance, wait=wait, notify=progress)


def up(ref: str | Path, params: Mapping[str, str] | None = None, *, engine: Engine | None = None,
       offline: bool = False, progress: Progress | None = None, wait: bool = True, instance: str | None = None) -> UpResult:
    """Bring a lab up (or reconcile it with its file, repairing nodes whose setup never finished).
    Validation happens before anything is created; ``wait=False``: refuse if another labctl works on the lab.
    ``instance``: which isolated copy of the lab (default: ``default``, the lab itself)."""
    started = time.monotonic()
    instance = check_instance(instance)
    loaded = load_lab(ref, params)
    engine = engine or default_engine()
    image = engine.ensure_image(offline=offline, progress=progress)
    with lab_lock(engine, loaded.lab.name, instance, wait=wait, progress=progress):
        plan, report = _plan_and_deploy(engine, loaded, instance, image.tag, progress)
        impaired = _apply_lab_impairments(engine, plan, report, progress)
    return UpResult(plan, report, image, time.monotonic() - started, impaired)


ALLOCATION_LOCK = "__subnets__"  # not a lab name (those start with a letter): the engine's subnets


def _plan_and_deploy(engine: Engine, loaded: LoadedLab, instance: str, image: str,
                     progress: Progress | None) -> tuple[LabPlan, DeployReport]:
    """Plan the lab instance on this engine and deploy it, holding the engine's allocation lock
    from reading which subnets are free to creating its networks: two instances (or labs)
    coming up at once never both take the same free subnet."""
    from .locking import lab_lock as lock

    if any(loaded.lab.node_packages(name) for name in loaded.lab.nodes):
        _with_packages(engine, loaded, plan_lab(loaded, {}), image, progress)  # image variants first, outside the lock
    with lock(engine.ident, ALLOCATION_LOCK, wait=True, notify=progress):
        plan = _with_packages(engine, loaded, _plan_on(engine, loaded, instance), image, progress)
        return plan, _deploy(engine, plan, image, progress)


def _deploy(engine: Engine, plan: LabPlan, image: str, progress: Progress | None) -> DeployReport:
    """Deploy, then the nodes' files and startup (a failed startup rolls back like a failed deploy)."""
    from .provision import provision

    if not any(node.files or node.startup for node in plan.nodes):
        return engine.deploy(plan, image, progress)
    return engine.deploy(plan, image, progress, after=lambda report: provision(engine, plan, report, progress))


def _with_packages(engine: Engine, loaded: LoadedLab, plan: LabPlan, image: str, progress: Progress | None,
                   rebuild: bool = False) -> LabPlan:
    """Nodes with `packages:` run a lab image variant: the node image plus those packages, built on the host's side."""
    import dataclasses

    from .engine import UnknownPackage

    variants: dict[tuple[str, ...], str] = {}
    nodes = []
    for node in plan.nodes:
        if not node.packages or node.image:
            nodes.append(node)
            continue
        if node.packages not in variants:
            try:
                variants[node.packages] = engine.ensure_variant(image, node.packages, rebuild=rebuild, progress=progress)
            except UnknownPackage as exc:
                raise loaded.error(_package_field(loaded.lab, node.name, exc.package), exc.message, hint=exc.hint) from None
        nodes.append(dataclasses.replace(node, image=variants[node.packages]))
    return dataclasses.replace(plan, nodes=tuple(nodes))


def _package_field(lab, node: str, package: str) -> tuple:
    if package in lab.nodes[node].packages:
        return ("nodes", node, "packages", lab.nodes[node].packages.index(package))
    return ("packages", lab.packages.index(package)) if package in lab.packages else ("packages",)


def _apply_lab_impairments(engine: Engine, plan: LabPlan, report: DeployReport, progress: Progress | None) -> list:
    """The lab file's impairments, after deploy (nodes it just created start with none in force)."""
    impaired = apply_lab(engine, plan, report.fresh)
    for direction in impaired:
        if progress and direction.changed:
            progress(f"impaired {direction.summary}")
    return impaired


def run(ref: str | Path, scenarios: Sequence[str] = (), params: Mapping[str, str] | None = None, *,
        engine: Engine | None = None, root: Path | None = None, progress: Progress | None = None,
        wait: bool = True, instance: str | None = None) -> list:
    """Run scenarios of a lab (all of them by default), bringing the lab (``instance``) up if needed.

    Every scenario and matrix point is validated before anything is created or run.
    Returns one ``RunResult`` per run, each with its run directory and verdicts.
    """
    from .loader import load_scenarios
    from .run import RunInterrupted, ScenarioRun

    from .environment import check_results_dir
    from .rundir import results_root

    instance = check_instance(instance)
    loaded = load_lab(ref, params)
    chosen = load_scenarios(loaded, scenarios, params)
    check_results_dir(root or results_root())  # before the lab is touched
    engine = engine or default_engine()
    image = engine.ensure_image(progress=progress)
    # One run at a time per lab instance: another's socket clean-up or reconcile would cut this one's connections.
    with lab_lock(engine, loaded.lab.name, instance, wait=wait, progress=progress):
        plan, report = _plan_and_deploy(engine, loaded, instance, image.tag, progress)
        _apply_lab_impairments(engine, plan, report, progress)
        # An instance that holds the lab file's fixed subnets elsewhere: its scenarios' addresses move too.
        loaded = remap_lab(loaded, plan.remap)
        chosen = [remap_scenario(one, plan.remap) for one in chosen]
        results = []
        for one in chosen:
            if progress:
                progress(f"running {one.label}")
            try:
                results.append(ScenarioRun(engine, loaded, plan, one, image.tag, root, progress).execute())
            except RunInterrupted as stop:
                # Ctrl-C ends the whole run: the scenarios after this one do not start.
                stop.results = [*results, stop.result]
                raise
    return results


def validate(ref: str | Path, scenarios: Sequence[str] = (), params: Mapping[str, str] | None = None) -> dict:
    """Load a lab and every scenario of it (each matrix point), as `up` and `run` would, without an engine.

    Raises ``UserError`` at the first problem; returns what was checked.
    """
    from .loader import load_scenarios, scenario_files

    loaded = load_lab(ref, params)
    chosen: list = []
    if scenarios or (loaded.path is not None and scenario_files(loaded.path)):
        chosen = load_scenarios(loaded, scenarios, params)
    files: dict[str, dict] = {}
    for one in chosen:
        entry = files.setdefault(str(one.source.file), {"scenario": one.scenario.name, "file": str(one.source.file), "runs": 0})
        entry["runs"] += 1
    return {"lab": loaded.lab.name, "path": str(loaded.path or ""), "nodes": len(loaded.lab.nodes), "links": len(loaded.lab.links),
            "scenarios": list(files.values())}


def lab_name(ref: str | Path, params: Mapping[str, str] | None = None) -> str:
    """A lab reference to a name: a path is read for its name; anything else is the name."""
    if Path(ref).exists():
        return load_lab(ref, params).lab.name
    return str(ref)


ALL_INSTANCES = "*"


def down(ref: str | Path | None, *, engine: Engine | None = None, params: Mapping[str, str] | None = None,
         wait: bool = True, progress: Progress | None = None, instance: str | None = None) -> list[str]:
    """Remove a lab instance's objects (``instance``: default ``default``; ``"*"``: every instance of
    the lab), a stale one's too. ``ref`` None: every labctl object on the engine, every instance."""
    from contextlib import ExitStack

    every = instance == ALL_INSTANCES
    instance = DEFAULT_INSTANCE if every else check_instance(instance)
    name = None if ref is None else lab_name(ref, params)  # a bad lab file is refused before the engine is reached
    engine = engine or default_engine()
    if name is None:
        keys = sorted(engine.labs())
    elif every:
        keys = sorted(k for k in engine.labs() if split_key(k)[0] == name)
    else:
        keys = [lab_key(name, instance)]
    removed: list[str] = []
    with ExitStack() as locks:
        # Every lab instance's lock, one after the other in key order, so two `down`s cannot deadlock.
        for key in keys:
            locks.enter_context(lab_lock(engine, *split_key(key), wait=wait, progress=progress))
        if name is None:
            return engine.destroy(None)
        for key in keys:
            removed += engine.destroy(key)
    return removed


def instances(lab: str | Path, *, engine: Engine | None = None, params: Mapping[str, str] | None = None) -> list[str]:
    """The instances of a lab that have objects on the engine, by name."""
    name = lab_name(lab, params)
    engine = engine or default_engine()
    return sorted(split_key(k)[1] for k in engine.labs() if split_key(k)[0] == name)


@dataclass
class NodeStatus:
    name: str
    status: str
    container: str
    image: str
    interfaces: list[dict] = field(default_factory=list)
    routes: list[dict] = field(default_factory=list)
    impairments: list[dict] = field(default_factory=list)  # in force on this node's egress, per interface
    loop: dict | None = None  # the routing loop this router takes part in (or last took part in)
    services: list[dict] = field(default_factory=list)  # startup services: cmd, state (running | exited), pid, exit, log
    configured: bool | None = None  # its agent says its setup finished (None: not asked, it is not running)
    problem: str | None = None  # why it is not healthy
    blocked: list[str] = field(default_factory=list)  # addresses it has no route to: the host's ends of its links


@dataclass
class LabStatus:
    lab: str
    nodes: list[NodeStatus]
    links: list[dict]  # each with "impairments": one entry per impaired direction (from a node)
    loops: list[dict] = field(default_factory=list)  # routing loops in force, per router
    health: str = "healthy"  # healthy | stale (half made: `up` repairs it, `down` removes it) | busy (another labctl at work)
    problems: list[str] = field(default_factory=list)
    busy: str | None = None  # who holds the lab's lock
    instance: str = DEFAULT_INSTANCE

    @property
    def title(self) -> str:
        """The lab instance as messages name it."""
        return describe_instance(self.lab, self.instance)

    @property
    def key(self) -> str:
        return lab_key(self.lab, self.instance)

    def to_json(self) -> dict:
        return {"lab": self.lab, "instance": self.instance, "health": self.health, "problems": self.problems, "busy": self.busy,
                "nodes": [vars(n) for n in self.nodes], "links": self.links, "loops": self.loops}


def status(lab: str | None = None, *, engine: Engine | None = None, instance: str | None = None) -> list[LabStatus]:
    """Every lab instance that is up (``lab``: that lab's instances; ``instance``: only that one)."""
    if instance is not None:
        instance = check_instance(instance)
        if lab is None:
            raise UserError("--instance names an instance of a lab: give the lab too")
    engine = engine or default_engine()
    if lab is None:
        keys = engine.labs()
    else:
        wanted = lab_name(lab)
        keys = [lab_key(wanted, instance)] if instance else [k for k in engine.labs() if split_key(k)[0] == wanted] or [wanted]
    result = []
    for name in keys:
        nodes = engine.nodes(name)
        if lab and not nodes and not engine.links(name):
            which = describe_instance(*split_key(name))
            raise UserError(f"lab '{which}' is not up", hint=f"start it with `labctl up {split_key(name)[0]}{flag(split_key(name)[1])}`")

        def describe(state) -> NodeStatus:
            entry = NodeStatus(state.node, state.status, state.container, state.image)
            if state.status != "running":
                entry.problem = f"it is {state.status}"
                return entry
            try:
                seen = agent.inspect(engine, name, state.node)
                health = seen.health or agent.health(engine, name, state.node)  # an engine whose inspect says less
            except UserError as exc:
                entry.problem = f"its agent does not answer ({exc.message[:120]})"
                return entry  # a node that does not answer is shown as the engine has it
            entry.configured = health.configured and health.spec == state.spec
            if not health.configured:
                entry.problem = health.detail or "not configured"
            elif health.spec != state.spec:
                entry.problem = "it was configured for another spec"
            entry.interfaces, entry.routes = list(seen.interfaces), list(seen.routes)
            entry.impairments, entry.loop, entry.blocked = list(seen.impairments), seen.loop, list(seen.blocked)
            entry.services = [service.to_json() for service in seen.services] if seen.health else _services(engine, name, state.node)
            return entry

        with ThreadPoolExecutor(max_workers=8) as pool:
            described = list(pool.map(describe, nodes))
        impaired = in_force({n.name: {"impairments": n.impairments} for n in described})
        link_states = engine.links(name)
        links = [{"name": l.link, "network": l.network, "subnet": l.subnet, "gateway": l.gateway,
                  "impairments": [{"from": d.node, **d.to_json()} for d in impaired if d.link == l.link]}
                 for l in link_states]
        loops = [{"router": n.name, **n.loop} for n in described if n.loop and n.loop.get("active")]
        entry = LabStatus(split_key(name)[0], described, links, loops, instance=split_key(name)[1])
        _judge_health(engine, entry, nodes, link_states)
        result.append(entry)
    return result


def _plan_on(engine: Engine, loaded: LoadedLab, instance: str = DEFAULT_INSTANCE) -> LabPlan:
    """The lab's plan on this engine. Links of it that are up keep the subnets they hold while
    those are free, so a lab is not moved (torn down and made again) only because the pool
    allocation would come out differently now that other networks have come or gone; this
    is also what keeps a lab brought up by `docker-compose` from an export as it is."""
    from ipaddress import IPv4Network

    key = lab_key(loaded.lab.name, instance)
    current = {l.link: IPv4Network(l.subnet) for l in engine.links(key) if l.subnet}
    return plan_lab(loaded, engine.subnets_in_use(exclude_lab=key), current, instance)


def _services(engine: Engine, lab: str, node: str) -> list[dict]:
    """A node's startup services (none when it has none)."""
    try:
        return [service.to_json() for service in agent.call(engine, lab, node, "services").services]
    except UserError:
        return []


def _judge_health(engine: Engine, entry: LabStatus, nodes: list, links: list) -> None:
    """Healthy: the objects are exactly those of a complete `up` (its record) and every node says it is configured."""
    from .engine import state_digest
    from .locking import is_held

    problems = [f"node {n.name}: {n.problem}" for n in entry.nodes if n.problem]
    actual = state_digest({n.node: n.spec for n in nodes}, {l.link: l.spec for l in links})
    recorded = engine.recorded(entry.key)
    if not recorded:
        problems.insert(0, "no `up` of it ever finished (one was killed?)")
    elif actual not in recorded:
        problems.insert(0, "its nodes and links are not those its last finished `up` made (a later one was killed?)")
    entry.problems = problems
    entry.busy = is_held(engine.ident, entry.lab, entry.instance)
    if entry.busy:
        entry.health = "busy"  # another labctl is changing or running it: half made is its business now
    elif problems:
        entry.health = "stale"


def _running_plan(ref: str | Path, params: Mapping[str, str] | None, engine: Engine,
                  instance: str = DEFAULT_INSTANCE) -> tuple[LoadedLab, LabPlan]:
    """A lab instance that is up, and its plan as its nodes have it (the subnets its links hold now)."""
    name = lab_name(ref, params)
    nodes = engine.nodes(lab_key(name, instance))
    if not nodes:
        raise UserError(f"lab '{describe_instance(name, instance)}' is not up", hint=f"start it with `labctl up {name}{flag(instance)}`")
    source = ref
    if not Path(str(ref)).exists() and str(ref) not in available_labs() and nodes[0].source:
        source = nodes[0].source  # brought up from a path: the engine's labels remember which
    loaded = load_lab(source, params)
    return loaded, _plan_on(engine, loaded, instance)


def impair(lab: str | Path, link: str, from_node: str | None = None, settings: Mapping | None = None, clear: bool = False, *,
           params: Mapping[str, str] | None = None, engine: Engine | None = None, wait: bool = True,
           progress: Progress | None = None, instance: str | None = None) -> list:
    """Impair a link of a running lab now, in one direction (``from_node``'s egress) or every one.

    ``settings`` as a lab file writes them: ``{"delay": "50ms", "jitter": "10ms", "loss": "5%", "rate": "1mbit"}``;
    they replace what was in force in those directions. ``clear`` removes it. Returns an
    ``impairments.Direction`` per direction, with the mechanism that does it (netem or the fallback).
    """
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    if clear and given:
        raise UserError("give settings or clear, not both")
    if not clear and not given:
        raise UserError("nothing to set: give at least one setting (delay, loss, rate, ...) or clear",
                        hint="e.g. labctl impair LAB LINK --delay 50ms --loss 5%")
    instance = check_instance(instance)
    engine = engine or default_engine()
    imp = None if clear else parse_impairment(given, from_node)
    with lab_lock(engine, lab_name(lab, params), instance, wait=wait, progress=progress):
        _, plan = _running_plan(lab, params, engine, instance)
        return set_link(engine, plan, link, from_node, imp)


def loop(lab: str | Path, r1: str, r2: str, seconds: float | str | None = None, match: Mapping | None = None, *,
         heal: bool = False, params: Mapping[str, str] | None = None, engine: Engine | None = None, wait: bool = True,
         progress: Progress | None = None, instance: str | None = None):
    """A transient forwarding loop between two routers for ``seconds`` (e.g. 2 or "2s"), optionally only
    for packets matching ``match`` ({"from": node, "to": node, "proto": "tcp", "dport": 80, "flags": "P"}).

    Returns at once (an ``impairments.LoopResult`` with its start and heal times); the routers heal
    it themselves. ``heal=True`` heals a loop of these routers now instead.
    """
    from .units import parse_duration

    instance = check_instance(instance)
    engine = engine or default_engine()
    if not heal:
        if seconds is None:
            raise UserError("how long should the loop last? give seconds (e.g. --for 2s)")
        try:
            duration = parse_duration(seconds)
        except ValueError as exc:
            raise UserError(f"loop duration: {exc}") from None
    with lab_lock(engine, lab_name(lab, params), instance, wait=wait, progress=progress):
        _, plan = _running_plan(lab, params, engine, instance)
        if heal:
            loop_link(plan, r1, r2)
            return heal_loop(engine, plan, [r1, r2])
        return start_loop(engine, plan, r1, r2, duration, match)


def exec_in(lab: str, node: str, argv: Sequence[str], *, engine: Engine | None = None,
            stream: Callable[[bytes, bool], None] | None = None, instance: str | None = None) -> ExecResult:
    key = lab_key(lab_name(lab), check_instance(instance))
    engine = engine or default_engine()
    return engine.exec(key, node, argv, stream=stream)


def shell(lab: str, node: str, argv: Sequence[str] = ("bash",), *, engine: Engine | None = None, instance: str | None = None) -> int:
    key = lab_key(lab_name(lab), check_instance(instance))
    engine = engine or default_engine()
    return engine.shell(key, node, argv)


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


def schema(kind: str = "lab") -> dict:
    """The JSON Schema of ``lab`` or ``scenario`` files, as editors should check them."""
    from .export.schemas import schema as editor_schema

    return editor_schema(kind)


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


def build_image(lab: str | Path | None = None, params: Mapping[str, str] | None = None, *, offline: bool = False,
                rebuild: bool = False, engine: Engine | None = None, progress: Progress | None = None):
    """The node image; with ``lab``, also the lab image variants its `packages:` need (ahead of `up`).

    Returns the node image's info; a lab's variants are in its ``variants`` (node -> tag) when a lab is given.
    """
    engine = engine or default_engine()
    info = engine.ensure_image(offline=offline, rebuild=rebuild, progress=progress)
    if lab is None:
        return info
    loaded = load_lab(lab, params)
    plan = _with_packages(engine, loaded, plan_lab(loaded, {}), info.tag, progress, rebuild=rebuild)
    return LabImages(info, {node.name: node.image or info.tag for node in plan.nodes})


def images(*, engine: Engine | None = None) -> list:
    """The images labctl made on the engine (``ImageEntry``: tag, kind, size, packages, current, used_by)."""
    return (engine or default_engine()).images()


def prune_images(tags: Sequence[str] = (), *, everything: bool = False, engine: Engine | None = None) -> list[str]:
    """Remove labctl's images that no container runs: old node images, lab variants nobody uses
    (only ``tags``, when given). The node image of this code and its base stay unless ``everything``;
    an image in use always stays. Returns the tags removed."""
    engine = engine or default_engine()
    entries = engine.images()
    if unknown := sorted(set(tags) - {e.tag for e in entries}):
        raise UserError(f"not an image labctl made: {', '.join(unknown)}", hint="labctl image list shows them")
    removed = []
    # Lab variants and node images first: a base goes only once nothing built on it is left.
    for entry in sorted(entries, key=lambda e: e.kind == "base"):
        if (tags and entry.tag not in tags) or entry.used_by or (entry.current and not everything):
            continue
        engine.remove_image(entry.tag)
        removed.append(entry.tag)
    return removed


@dataclass(frozen=True)
class LabImages:
    node_image: object
    variants: dict[str, str]


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
    image = engine.image_present()
    if image:
        checks.append(Check("node image", True, image))
    else:
        checks.append(Check("node image", False, f"{engine.image_wanted()} not built yet", "built on first `labctl up` (or `labctl image build`)"))
    debootstrap = shutil.which("debootstrap")
    checks.append(Check("debootstrap (offline base)", debootstrap is not None, debootstrap or "not installed",
                        "" if debootstrap else "a Debian base image from a registry (apt-get install debootstrap for offline builds)"))
    checks.append(_tracefs_check(engine))
    if image:
        try:
            features = agent.probe(engine, image).features
        except UserError as exc:
            checks.append(Check("kernel features", False, f"probe failed: {exc.message[-300:]}"))
            features = {}
        for feature in features.values():
            checks.append(Check(f"kernel: {feature['what']}", feature["ok"], "available" if feature["ok"] else feature["detail"] or "not available",
                                "" if feature["ok"] else feature["fallback"]))
    else:
        checks.append(Check("kernel features", False, "not probed: needs the node image", "run `labctl image build`, then doctor again"))
    return checks


def _tracefs_check(engine: Engine) -> Check:
    from .engine.tracefs import TRACEPOINTS

    instead = "TCP states from sampling (ss) and the captures only"
    tracefs = engine.host_observers()
    if tracefs is None:
        return Check("tracefs tracepoints", False, f"the {engine.name} engine's nodes run on another kernel", instead)
    if not tracefs.mounted():
        return Check("tracefs tracepoints", False, f"{tracefs.root} not mounted", instead)
    if missing := tracefs.missing():
        return Check("tracefs tracepoints", False, f"missing: {', '.join(missing)}", instead)
    return Check("tracefs tracepoints", True, ", ".join(t.split("/")[1] for t in TRACEPOINTS))


# --- export: the lab for other tools ---------------------------------------------------------

@dataclass(frozen=True)
class ComposeExport:
    directory: Path
    files: list[Path]
    image: str
    image_state: str  # "present", "built", or "missing" (no engine reachable to check or build it)
    templates: Path


def export_compose(ref: str | Path, params: Mapping[str, str] | None = None, *, output: Path | None = None,
                   templates: Path | None = None, engine: Engine | None = None, build: bool = True,
                   progress: Progress | None = None, instance: str | None = None) -> ComposeExport:
    """Write the lab as a Compose project (``compose.yaml`` and ``.env``) into ``output``
    (default ``./<lab>-compose``), from ``compose-templates/`` or the user's ``templates``.
    ``instance``: that instance of the lab (its names, and its fixed subnets moved as `up` would).

    The node image is the one ``up`` would use; it is built now when missing (``build``).
    Without a reachable engine the file still comes out, naming the image to build.
    """
    from .engine.docker.image import expected_tag
    from .export import compose

    instance = check_instance(instance)
    loaded = load_lab(ref, params)
    try:
        engine = engine or default_engine()
    except UserError:
        engine = None
    if engine is None:
        image, state = expected_tag(), "missing"
    else:
        present = getattr(engine, "image_present")()
        if present or not build:
            image, state = present or expected_tag(), "present" if present else "missing"
        else:
            image, state = engine.ensure_image(progress=progress).tag, "built"
    plan = _plan_on(engine, loaded, instance) if engine is not None else plan_lab(loaded, {}, {}, instance)
    context = compose.compose_context(plan, image, description=loaded.lab.description)
    rendered = compose.render(context, templates)
    directory = Path(output) if output is not None else Path(f"{loaded.lab.name}-compose")
    files = compose.write(rendered, directory, context)
    return ComposeExport(directory, files, image, state, rendered.templates)


# --- live captures -----------------------------------------------------------------------------

# tcpdump in the node, ended when labctl's end of the stream goes away (Ctrl-C, the reader of a
# pipe quitting): the exec's stdin then closes, and the watcher kills tcpdump, so no capture is
# left running in the node. With -c, tcpdump ends by itself and so does the exec.
# (A background job's stdin is /dev/null unless redirected: hence fd 3.)
_CAPTURE = ('exec 3<&0; tcpdump "$@" & t=$!; (cat <&3 >/dev/null; kill $t 2>/dev/null) >/dev/null 2>&1 & w=$!; '
            'exec 3<&-; wait $t; s=$?; kill $w 2>/dev/null; exit $s')


def capture(lab: str | Path, node: str, interface: str | None = None, *, sink: Callable[[bytes], None],
            pcap: bool = True, count: int | None = None, bpf: Sequence[str] = (),
            on_stderr: Callable[[bytes], None] | None = None, engine: Engine | None = None, instance: str | None = None) -> int:
    """A live capture on a node's interface (``None``: its only lab interface, else ``any``).

    ``pcap``: the capture file as tcpdump writes it (``-U -w -``: each packet as it comes), so
    ``sink`` can feed Wireshark or tshark directly; otherwise tcpdump's text, line by line.
    Runs until ``count`` packets, the node going away, or the caller's KeyboardInterrupt
    (after which the capture in the node is stopped too). Returns tcpdump's exit status.
    """
    name = lab_name(lab)
    key = lab_key(name, check_instance(instance))
    engine = engine or default_engine()
    try:
        interfaces = [i["name"] for i in agent.inspect(engine, key, node).interfaces]
    except EngineError as exc:
        raise UserError(f"cannot list the interfaces of {node}: {exc.message[-300:]}") from None
    if interface is None:
        interface = interfaces[0] if len(interfaces) == 1 else "any"
    elif interface not in interfaces and interface != "any":
        raise UserError(f"node {node} of lab {name} has no interface '{interface}'",
                        hint=f"its interfaces: {', '.join(interfaces)} (or any)")
    args = ["-i", interface, "-n", "-s", "0", "--immediate-mode"]
    args += ["-U", "-w", "-"] if pcap else ["-l"]
    if count is not None:
        args += ["-c", str(count)]
    stream = engine.attach(key, node, ["sh", "-c", _CAPTURE, "sh", *args, *bpf])
    try:
        while (chunk := stream.read()) is not None:
            kind, data = chunk
            if kind == 1:
                sink(data)
            elif on_stderr:
                on_stderr(data)
    finally:
        stream.close()
    code = stream.exit_code()
    return code if code is not None else 0


def export_pcapng(run: str | Path, target, *, root: Path | None = None) -> dict:
    """A run's captures merged into one pcapng written to ``target`` (a binary file object):
    one interface per capture, named ``NODE:IFACE`` and described by its address, so
    Wireshark shows where each packet was seen. ``run``: a run directory, or a lab (its
    latest run under ``root``). Reads the run directory only."""
    from .export import pcapng
    from .rundir import latest_run

    directory = Path(run)
    if not (directory / "run.json").is_file():
        found = latest_run(str(run), root) if "/" not in str(run) else None
        if found is None:
            raise UserError(f"{run} is not a run directory, nor a lab with runs", hint="give results/LAB/RUN-ID, or a lab that has run")
        directory = found
    if not (directory / "pcaps").is_dir():
        raise UserError(f"{directory} holds no captures (no pcaps/ directory)")
    return {"run_dir": str(directory), **pcapng.write(directory, target)}


# --- courses: a new lab, grading a class -------------------------------------------------------

def new_lab(directory: str | Path, name: str | None = None) -> list[Path]:
    """Scaffold a lab in ``directory``: lab.yaml, one scenario, its guide (README.md) and a .gitignore for results."""
    from .scaffold import new_lab as scaffold

    return scaffold(directory, name)


def grade(ref: str | Path, submissions: str | Path, *, scenarios: Sequence[str] = (), parallel: int = 1,
          output: str | Path | None = None, params: Mapping[str, str] | None = None, timeout: float | None = None,
          engine: Engine | None = None, progress: Progress | None = None):
    """Every submission (a subdirectory of ``submissions``, given to the lab as ``{{ submission }}``) on every
    scenario; writes gradebook.csv/.json, summary.html and one HTML report per submission into ``output``.

    Returns a ``grade.Gradebook``. Grades are results, not errors: only a problem with the lab or the
    command itself raises.
    """
    from .grade import RUN_TIMEOUT, grade as grade_class

    return grade_class(ref, submissions, scenarios=scenarios, parallel=parallel, output=output, params=params,
                       timeout=timeout or RUN_TIMEOUT, engine=engine, progress=progress)
