"""Run a sweep: its tasks (those not finished yet), then the summary.

The sweep directory::

    sweep.json      the sweep (lab, scenario, grid, repeat, seed), every task with its seed,
                    labctl's version, the machine (kernel, cores, engine), one entry per session
    runs/<task>/    one run directory per task (with task.json: the task it answers)
    interrupted/    runs cut short (Ctrl-C, a killed sweep), set aside when the sweep resumed
    runs.csv, summary.csv, summary.md, summary.json, chart.svg, chart.png

Resuming is running the same sweep into the same directory: a task whose run
directory finished (see ``task.finished``) is not run again; any other is set
aside and run anew.
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Callable

from .. import __version__
from ..errors import UserError
from ..rundir import Damage, write_json
from .spec import SweepSpec, tasks as make_tasks
from .summary import RUNS_DIR, SWEEP_FILE, Summary, read_sweep, write as write_summary
from .task import STAGING_PREFIX, Task, TaskResult, damage_text, finished, run_task, take_down

SCHEMA_VERSION = 1
INTERRUPTED_DIR = "interrupted"


@dataclass(frozen=True)
class Event:
    """What a sweep tells whoever shows its progress."""

    kind: str  # plan | note | start | progress (a step of a run) | done | summary
    total: int
    finished: int  # tasks finished so far (including those from earlier sessions)
    task: Task | None = None
    result: TaskResult | None = None
    message: str = ""


OnEvent = Callable[[Event], None]
Execute = Callable[..., TaskResult]  # run_task's shape: (task, run_dir, *, engine=None, progress=None)
Release = Callable[[Task, str], None]  # take_down's shape: (a task that ran there, the instance): the instance goes


@dataclass(frozen=True)
class SweepResult:
    dir: Path
    tasks: list[Task]
    ran: list[TaskResult]
    skipped: int  # finished in an earlier session
    summary: Summary | None


def machine(engine=None, *, ask_engine: bool = True) -> dict:
    try:
        if not ask_engine:
            raise RuntimeError("not asked: the tasks run elsewhere")
        if engine is None:
            from ..engine import default_engine

            engine = default_engine()
        version = engine.version()
    except Exception as exc:  # the summary still says which machine, without the engine
        version = f"unknown ({exc})"
    return {"kernel": platform.release(), "machine": platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(), "engine": version}


def validate(spec: SweepSpec) -> None:
    """Load the lab and the scenario at every grid point before anything runs: a bad value
    (loss=150%) is one message naming file, line and field, and no run is made."""
    from ..loader import load_lab, load_scenarios
    from .grid import points

    for point in points(spec.axes):
        loaded = load_lab(spec.lab, point)
        scenarios = load_scenarios(loaded, [spec.scenario], point)
        if len(scenarios) > 1:
            axes = ", ".join(scenarios[0].point)
            raise UserError(f"scenario '{spec.scenario}' has a matrix ({axes}): one run per task is needed",
                            hint=f"sweep its matrix as parameters instead, e.g. --param {next(iter(scenarios[0].point))}=...")


def prepare(spec: SweepSpec, sweep_dir: Path, *, engine=None, parallel: int | None = None,
            ask_engine: bool = True) -> tuple[dict, list[Task]]:
    """Write (or, resuming, check and extend) sweep.json; returns it and the sweep's tasks."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / SWEEP_FILE
    existing = read_sweep(sweep_dir) if path.exists() else None
    seed = spec.seed
    if existing is not None:
        before = existing.get("spec") or {}
        ours = spec.identity()
        different = [key for key in ours if before.get(key) != ours[key]]
        if different:
            raise UserError(f"{sweep_dir} holds another sweep (its {', '.join(different)} differ)",
                            hint="give another -o directory, or the same lab, scenario, parameters and repeat to resume it")
        if seed is not None and before.get("seed") != seed:
            raise UserError(f"{sweep_dir} was swept with seed {before.get('seed')}, not {seed}", hint="resume without --seed")
        seed = before.get("seed")
    if seed is None:
        seed = secrets.randbits(32)
    all_tasks = make_tasks(spec, seed)
    record = existing or {"schema_version": SCHEMA_VERSION, "kind": "labctl-sweep", "created": time.time(), "sessions": []}
    record.update(labctl_version=__version__, machine=machine(engine, ask_engine=ask_engine),
                  spec={**spec.to_json(), "seed": seed, "parallel": parallel or spec.parallel},
                  tasks=[t.to_json() for t in all_tasks])
    write_json(path, record)
    return record, all_tasks


def set_aside(sweep_dir: Path, all_tasks: list[Task], damaged: dict[str, str] | None = None) -> list[str]:
    """Move every unfinished attempt (a run still 'running' when the sweep was killed, an interrupted
    one, one too damaged to say it finished, a staging directory) into interrupted/, so runs/ holds
    finished runs and the task runs anew. ``damaged``: what was wrong with each damaged one moved."""
    runs, aside = sweep_dir / RUNS_DIR, sweep_dir / INTERRUPTED_DIR
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    candidates = []
    for task in all_tasks:
        damage: list[Damage] = []
        if (runs / task.id).exists() or (runs / task.id).is_symlink():
            if not finished(runs / task.id, damage):
                candidates.append(runs / task.id)
                if damage and damaged is not None:
                    damaged[f"{RUNS_DIR}/{task.id}"] = damage_text(damage)
    candidates += sorted(runs.glob(f"{STAGING_PREFIX}*")) if runs.is_dir() else []
    for directory in candidates:
        aside.mkdir(exist_ok=True)
        target = aside / f"{directory.name.removeprefix(STAGING_PREFIX)}-{stamp}-{secrets.token_hex(2)}"
        shutil.move(str(directory), str(target))
        moved.append(target.name)
    return moved


def run(spec: SweepSpec, sweep_dir: str | Path, *, parallel: int | None = None, engine=None, on_event: OnEvent | None = None,
        execute: Execute = run_task, summarise: bool = True, release: Release | None = None) -> SweepResult:
    """Run (or resume) a sweep into ``sweep_dir`` and write its summary.

    ``execute`` runs one task (``task.run_task`` by default: the real engine); a placement
    on other machines would be another function of the same shape. Ctrl-C stops after
    setting the current run's directory in place; running the same sweep again resumes.

    With ``parallel`` N > 1, N tasks run at once, each worker on a lab instance of its own
    (sw1 ... swN), which ``release`` takes down when the sweep ends (``task.take_down`` with
    the real engine). A sweep killed before that leaves them up; its resumption reuses them.
    """
    sweep_dir = Path(sweep_dir)
    tell = on_event or (lambda event: None)
    parallel = parallel or spec.parallel
    if execute is run_task:
        validate(spec)
    record, all_tasks = prepare(spec, sweep_dir, engine=engine, parallel=parallel, ask_engine=execute is run_task)
    (sweep_dir / RUNS_DIR).mkdir(exist_ok=True)
    damaged: dict[str, str] = {}
    moved = set_aside(sweep_dir, all_tasks, damaged)
    todo = [t for t in all_tasks if not finished(sweep_dir / RUNS_DIR / t.id)]
    skipped = len(all_tasks) - len(todo)
    workers = 1 if parallel <= 1 else max(1, min(parallel, len(todo)))
    if release is None and execute is run_task:
        release = lambda task, instance: take_down(task, instance, engine)  # noqa: E731
    session = {"started": time.time(), "parallel": parallel, "workers": workers, "to_run": len(todo), "skipped": skipped,
               "set_aside": moved, "instances": instance_names(workers) if parallel > 1 else [], "ended": None, "ran": 0,
               "result": "running"}
    record["sessions"].append(session)
    write_json(sweep_dir / SWEEP_FILE, record)
    tell(Event("plan", len(all_tasks), skipped, message=f"{len(todo)} to run, {skipped} already finished"
                                                        + (f", {len(moved)} unfinished set aside" if moved else "")))
    for where, what in damaged.items():
        tell(Event("note", len(all_tasks), skipped, message=f"damaged run directory {where}: {what}: set aside in {INTERRUPTED_DIR}/ "
                                                              "and run again"))
    ran: list[TaskResult] = []
    try:
        if parallel <= 1:
            for task in todo:
                tell(Event("start", len(all_tasks), skipped + len(ran), task))
                result = execute(task, sweep_dir / RUNS_DIR / task.id, engine=engine,
                                 progress=lambda message, task=task: tell(Event("progress", len(all_tasks), skipped + len(ran), task, message=message)))
                ran.append(result)
                tell(Event("done", len(all_tasks), skipped + len(ran), task, result))
        else:
            _run_parallel(todo, sweep_dir, workers, engine, execute, ran,
                          lambda kind, t, r, message="": tell(Event(kind, len(all_tasks), skipped + len(ran), t, r, message)), release)
        session["result"] = "done"
    except KeyboardInterrupt:
        session["result"] = "interrupted"
        raise
    finally:
        session.update(ended=time.time(), ran=len(ran))
        write_json(sweep_dir / SWEEP_FILE, record)
    summary = None
    if summarise:
        summary = write_summary(sweep_dir)
        tell(Event("summary", len(all_tasks), skipped + len(ran), message=str(sweep_dir / "summary.md")))
    return SweepResult(sweep_dir, all_tasks, ran, skipped, summary)


def instance_names(workers: int) -> list[str]:
    """The lab instances a parallel sweep's workers run on: the same for every sweep, so a resumed
    sweep reuses (and then takes down) those a killed one left up."""
    return [f"sw{k}" for k in range(1, workers + 1)]


def _run_parallel(todo: list[Task], sweep_dir: Path, workers: int, engine, execute: Execute, ran: list[TaskResult],
                  tell: Callable[..., None], release: Release | None = None) -> None:
    """Each worker owns one lab instance (sw1, sw2, ...) for the whole sweep, so no two runs share one;
    when the sweep ends, however it ends, every instance a task ran on is taken down."""
    instances: SimpleQueue = SimpleQueue()
    for name in instance_names(workers):
        instances.put(name)
    lock = threading.Lock()
    used: dict[str, Task] = {}  # instance -> a task that ran on it (its lab and parameters name the lab)

    def one(task: Task) -> TaskResult:
        instance = instances.get()
        try:
            placed = task.on(instance)
            with lock:
                used.setdefault(instance, placed)
                tell("start", placed, None)
            return execute(placed, sweep_dir / RUNS_DIR / task.id, engine=engine,
                           progress=lambda message: tell("progress", placed, None, message))
        finally:
            instances.put(instance)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep")
    pending = {pool.submit(one, task): task for task in todo}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                task = pending.pop(future)
                result = future.result()
                with lock:
                    ran.append(result)
                    tell("done", task, result)
    except BaseException:
        for future in pending:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if release is not None:
            _release_all(used, release, tell)


def _release_all(used: dict[str, Task], release: Release, tell: Callable[..., None]) -> None:
    for instance, task in sorted(used.items()):
        try:
            release(task, instance)
        except (UserError, OSError) as exc:  # the runs are done and kept: say so, and go on
            tell("note", task, None, f"instance {instance} of {task.lab} was not taken down: {exc}")
