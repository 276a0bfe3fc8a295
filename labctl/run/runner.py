"""Run one scenario on a lab that is up, and record everything in a run directory.

Order: make the run directory, start the observers (kernel tracepoints on
the host; captures and state sampling in every node, via its actor), run
the steps one by one, stop the observers, copy what the nodes recorded into
the run directory, then judge the expectations from the directory alone.
A run cut short (Ctrl-C, a node dying, an engine error) is marked
incomplete and keeps all it collected.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..analyze.results import Verdict
from ..analyze.verdicts import judge
from ..engine import Engine
from ..errors import UserError
from ..impairments import in_force
from ..loader import LoadedLab, LoadedScenario
from ..plan import LabPlan
from ..rundir import RUN_SCHEMA_VERSION, RunDir
from ..nodes import NodeLost
from .changes import LabChanges
from .collect import collect_all
from .dispatch import StepDispatch
from .observers import Observers

Progress = Callable[[str], None]
NODE_RUN_ROOT = "/run/labctl"


@dataclass(frozen=True)
class RunResult:
    path: Path
    scenario: str
    status: str  # complete | incomplete
    verdicts: list[Verdict]

    @property
    def passed(self) -> bool:
        return self.status == "complete" and all(v.passed for v in self.verdicts)


class ResultsUnwritable(UserError):
    """The results directory stopped taking writes during a run (a full disk, a quota, an I/O error)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the run was recorded (incomplete, judged), and nothing after it runs.

    ``results`` holds every run finished or cut short so far, the interrupted one last.
    """

    def __init__(self, result: RunResult):
        super().__init__(f"interrupted during {result.scenario}")
        self.result = result
        self.results: list[RunResult] = [result]


class ScenarioRun:
    """One run, in order; each part has its module (observers, dispatch, changes, collect)."""

    def __init__(self, engine: Engine, loaded: LoadedLab, plan: LabPlan, one: LoadedScenario, image: str,
                 root: Path | None = None, progress: Progress | None = None):
        self.engine = engine
        self.loaded = loaded
        self.plan = plan
        self.one = one
        self.image = image
        self.progress = progress or (lambda _: None)
        self.rundir = RunDir.create(plan.lab, one.label, root)
        self.node_dir = f"{NODE_RUN_ROOT}/{self.rundir.path.name}"
        self.changes = LabChanges(engine, plan, self.rundir, self.progress)
        self.observers = Observers(engine, plan, one.scenario.steps, self.rundir, self.node_dir, self.progress)
        self.steps = StepDispatch(plan, self.rundir, self.observers.sessions, self.changes, self.observers.lost, self.progress)
        self.steps.kernel_states = self.observers.kernel_states

    def _metadata(self, status: str, started: float, ended: float | None, reason: str | None, observers: dict) -> dict:
        return {
            "schema_version": RUN_SCHEMA_VERSION,
            "labctl_version": __version__,
            "lab": self.plan.lab,
            "lab_source": self.plan.source,
            # Which copy of the lab ran it, and where it held the lab file's fixed subnets (steps,
            # expectations, nodes and links below speak of the moved ones, as the captures do).
            "instance": self.plan.instance,
            "remap": self.plan.remap.to_json()["subnets"],
            "scenario": self.one.scenario.name,
            "label": self.one.label,
            "description": self.one.scenario.description,
            "params": self.one.params,
            "matrix_point": self.one.point,
            "status": status,
            "reason": reason,
            "started": started,
            "ended": ended,
            "host": {"kernel": platform.release(), "machine": platform.machine()},
            "engine": self.engine.version(),
            "image": self.image,
            "observers": observers,
            "nodes": {node.name: {"role": node.role, "interfaces": {i.name: str(i.address) for i in node.interfaces}}
                      for node in self.plan.nodes},
            "links": {link.name: {"subnet": str(link.subnet), "endpoints": list(link.endpoints)} for link in self.plan.links},
            "steps": [step.model_dump(mode="json", by_alias=True, exclude_none=True) for step in self.one.scenario.steps],
            "expect": [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in self.one.scenario.expect],
            "impairments": self.changes.records,
        }

    # --- the run ---------------------------------------------------------------------

    def execute(self) -> RunResult:
        started = time.time()
        observers: dict[str, Any] = {}
        self._mark("running", started, None, None, observers)
        status, reason, interrupted = "complete", None, False
        try:
            ready = self.observers.start(observers)
            for direction in in_force(ready):
                self.changes.record_impairment(direction, "in force at start", time.time())
            for index, step in enumerate(self.one.scenario.steps):
                self.steps.run(index, step)
                if self.rundir.failure:
                    break  # the results directory stopped taking what the run records: no use going on
        except KeyboardInterrupt:
            status, reason, interrupted = "incomplete", "interrupted (Ctrl-C)", True
        except NodeLost as exc:
            status, reason = "incomplete", str(exc)
        except Exception as exc:
            status, reason = "incomplete", f"{type(exc).__name__}: {exc}"
            self._finish(observers)
            self._mark(status, started, time.time(), self._unwritten() or reason, observers)
            raise
        try:
            self._finish(observers)
        except KeyboardInterrupt:
            status, reason, interrupted = "incomplete", "interrupted (Ctrl-C) while collecting", True
        full = self._unwritten()
        if full:
            status, reason = "incomplete", full
        self._mark(status, started, time.time(), reason, observers)
        self.rundir.close()
        verdicts = judge(self.rundir.path)
        try:
            self.rundir.write("verdicts.json", {"schema_version": RUN_SCHEMA_VERSION, "verdicts": [v.to_json() for v in verdicts]})
        except OSError:
            if not full:
                raise
        result = RunResult(self.rundir.path, self.one.label, status, verdicts)
        if full:
            raise ResultsUnwritable(f"{full}: {self.rundir.path} is marked incomplete and keeps what was written",
                                    hint="free some space (or give --results another directory) and run again")
        if interrupted:
            raise RunInterrupted(result)  # Ctrl-C ends the whole `run`, not only this scenario
        return result

    def _unwritten(self) -> str | None:
        """Why the run directory stopped taking writes (a full disk), in words; None when it did not."""
        if self.rundir.failure is None:
            return None
        name, exc = self.rundir.failure
        return (f"the results directory {self.rundir.path.parent.parent} could not be written during the run "
                f"({exc.strerror or exc}, writing {name})")

    def _mark(self, status: str, started: float, ended: float | None, reason: str | None, observers: dict) -> None:
        """run.json; when even the space the run directory reserved did not make room, say so and stop."""
        try:
            self.rundir.write("run.json", self._metadata(status, started, ended, reason, observers))
        except OSError as exc:
            said = "running" if ended is not None else "nothing"
            cause = self._unwritten() or f"the results directory could not be written ({exc.strerror or exc})"
            raise ResultsUnwritable(f"{cause}, and {self.rundir.path / 'run.json'} could not be written "
                                    f"({exc.strerror or exc}): it still says {said}",
                                    hint="free some space (or give --results another directory) and run again") from None

    def _finish(self, observers: dict) -> None:
        """Stop observing, put the lab back as it was, then copy out what the nodes recorded."""
        self.observers.stop(observers)
        self.changes.undo()
        missed = collect_all(self.engine, self.plan, self.node_dir, self.rundir, self.progress)
        if missed:
            observers["not_collected"] = missed
