"""One run of a sweep as a self-contained task: lab + params + scenario + instance + seed -> run directory.

A ``Task`` is plain data (it survives JSON), and ``run_task`` needs nothing but
the task and the directory the run should end up in, so a later engine can
ship tasks to other machines and bring their run directories back without the
sweep meaning anything else. The run is made in a staging directory beside its
place and moved there when the runner is done with it, so a run directory at
its place is whole; whether it *finished* is read from its own run.json.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import EngineError
from ..rundir import Damage, load_json, read_run, write_json

TASK_FILE = "task.json"  # the task a run directory answers, written into it by run_task
STAGING_PREFIX = ".staging-"
ENGINE_ATTEMPTS = 2  # an engine error before the run started is tried once more
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Task:
    id: str  # unique in its sweep, readable, safe as a directory name
    lab: str  # a built-in lab's name or an absolute path to a lab
    scenario: str
    params: Mapping[str, str] = field(default_factory=dict)  # every -p given to the run (swept and fixed, and the seed)
    point: Mapping[str, str] = field(default_factory=dict)  # the swept values of this run
    repetition: int = 1
    seed: int = 0
    instance: str | None = None  # which isolated copy of the lab runs it (None: the lab itself)

    def to_json(self) -> dict:
        return {"id": self.id, "lab": self.lab, "scenario": self.scenario, "params": dict(self.params),
                "point": dict(self.point), "repetition": self.repetition, "seed": self.seed, "instance": self.instance}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Task":
        return cls(data["id"], data["lab"], data["scenario"], dict(data.get("params") or {}), dict(data.get("point") or {}),
                   int(data.get("repetition", 1)), int(data.get("seed", 0)), data.get("instance"))

    def on(self, instance: str | None) -> "Task":
        return dataclasses.replace(self, instance=instance)


@dataclass(frozen=True)
class TaskResult:
    task: Task
    run_dir: Path
    status: str  # complete | incomplete (run.json's status)
    reason: str | None
    seconds: float
    verdicts: list = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return is_interruption(self.status, self.reason)

    @property
    def finished(self) -> bool:
        return finished(self.run_dir)


def is_interruption(status: str | None, reason: str | None) -> bool:
    return status == "incomplete" and (reason or "").startswith("interrupted")


def finished(run_dir: Path, damage: list[Damage] | None = None) -> bool:
    """A run that needs no redoing: its run.json says it ended (complete, or incomplete for a reason
    of its own such as a node that died) and its verdicts were written. A run that was still
    running (the sweep was killed) or was interrupted (Ctrl-C) is not, nor one whose directory is
    too damaged to say it ended (run.json unreadable, verdicts.json missing, not a directory):
    ``damage`` says what is wrong with it (checked readers, files relative to the run directory)."""
    if not run_dir.is_dir():
        if (run_dir.exists() or run_dir.is_symlink()) and damage is not None:
            damage.append(Damage(".", "it is not a directory: there is no run in it"))
        return False
    run = read_run(run_dir, damage)
    status = run.get("status")
    if status not in ("complete", "incomplete") or is_interruption(status, run.get("reason")):
        return False
    verdicts = run_dir / "verdicts.json"
    if not verdicts.is_file():
        cut_short = (read_task(run_dir) or {}).get("cut_short")  # unjudged on purpose (see run_task): not damage
        if damage is not None and not cut_short:
            damage.append(Damage("verdicts.json", "it is not a file: the run's verdicts cannot be read" if verdicts.exists()
                                 else "it is missing, though run.json says the run ended: its verdicts were never written or were lost"))
        return False
    return True


def damage_text(damage: list[Damage]) -> str:
    """What ``finished`` and the summary found wrong in a run directory, in one line."""
    return "; ".join(d.problem if d.file == "." else d.text for d in damage)


def run_task(task: Task, run_dir: Path, *, engine=None, progress: Progress | None = None) -> TaskResult:
    """Run one task; its run directory ends up at ``run_dir`` (which must not exist yet).

    Brings the lab (instance) up if needed. A Ctrl-C during the run still leaves a run
    directory (marked incomplete: interrupted), and is raised again after it is in place.
    """
    from .. import api

    if run_dir.exists():
        raise FileExistsError(f"{run_dir} exists: set it aside before running its task again")
    staging = run_dir.parent / f"{STAGING_PREFIX}{run_dir.name}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    started = time.monotonic()
    kwargs: dict[str, Any] = {"engine": engine, "root": staging, "progress": progress}
    if task.instance is not None:
        kwargs["instance"] = task.instance
    interrupted, retried, cut_short = False, None, None
    for attempt in range(1, ENGINE_ATTEMPTS + 1):
        try:
            outcomes = api.run(task.lab, [task.scenario], dict(task.params), **kwargs)
        except KeyboardInterrupt:
            interrupted, outcomes = True, []
        except EngineError as exc:
            # Before the run directory exists (bringing the lab in line, its impairments): one
            # engine hiccup in hundreds of runs should not end the sweep; a second one does.
            if _made(staging) is None and attempt < ENGINE_ATTEMPTS:
                retried = str(exc)
                if progress:
                    progress(f"task {task.id}: {exc}; trying once more")
                time.sleep(1.0)
                continue
            if _made(staging) is None:
                raise
            outcomes = []
        except Exception as exc:
            # The runner marks a run cut short by an engine error incomplete and re-raises before
            # judging it: its directory is put in place (unjudged, so not finished: resuming runs it
            # again) and the sweep goes on. No run directory (the lab did not come up), or one that
            # does not say it was cut short (analysis broke): the error is the sweep's.
            made = _made(staging)
            if made is None or read_run(made).get("status") != "incomplete":
                raise
            cut_short = f"{type(exc).__name__}: {exc}"
            if progress:
                progress(f"task {task.id}: run cut short: {cut_short}")
            outcomes = []
        break
    made = outcomes[0].path if outcomes else _made(staging)
    if made is None:
        shutil.rmtree(staging, ignore_errors=True)
        if interrupted:
            raise KeyboardInterrupt
        raise RuntimeError(f"task {task.id}: the run left no run directory")
    if len(outcomes) > 1:
        raise RuntimeError(f"task {task.id}: scenario '{task.scenario}' is a matrix of {len(outcomes)} runs; "
                           "sweep its matrix axes as parameters instead")
    os.replace(made, run_dir)
    shutil.rmtree(staging, ignore_errors=True)
    write_json(run_dir / TASK_FILE, {**task.to_json(), "run_id": made.name, "ran_seconds": round(time.monotonic() - started, 3),
                                     **({"retried_after": retried} if retried else {}), **({"cut_short": cut_short} if cut_short else {})})
    run = read_run(run_dir)
    verdicts = outcomes[0].verdicts if outcomes else _verdicts(run_dir)
    result = TaskResult(task, run_dir, run.get("status", "incomplete"), run.get("reason"), time.monotonic() - started, verdicts)
    if interrupted or result.interrupted:
        raise KeyboardInterrupt
    return result


def _made(staging: Path) -> Path | None:
    """The run directory the runner made under a staging root (root/<lab>/<run-id>)."""
    found = [p.parent for p in staging.glob("*/*/run.json")]
    return max(found, key=lambda p: p.name) if found else None


def _verdicts(run_dir: Path) -> list:
    from .metrics import read_verdicts

    return read_verdicts(run_dir)


def read_task(run_dir: Path) -> dict | None:
    """task.json, or None when it is not there or not a readable object."""
    return load_json(run_dir / TASK_FILE, None)


def take_down(task: Task, instance: str, engine=None) -> list[str]:
    """Take down the lab instance a parallel sweep's tasks ran on (``task``: one of them)."""
    from .. import api

    return api.down(task.lab, params=dict(task.params), engine=engine, instance=instance)
