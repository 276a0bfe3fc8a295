"""What a sweep is: a lab, a scenario, a grid of parameters, repetitions, a seed; and its tasks.

Written on the command line (``--param loss=0..30:5% --repeat 10``) or in a
file with a ``sweep:`` block (``sweeps/NAME.yaml`` in the lab, or any path)::

    sweep:
      scenario: transfer
      params: {loss: "0..20:5%", delay: [5ms, 25ms], size: 65536}
      repeat: 3
      metric: transfer_time
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..errors import UserError
from .grid import Axis, axes_from_mapping, count, merge_axes, points
from .metrics import DEFAULT_METRIC, metric
from .task import Task

SWEEP_DIR = "sweeps"  # a lab's sweep files live beside its scenarios/
FILE_KEYS = ("scenario", "params", "repeat", "metric", "seed", "parallel")
MAX_TASKS = 100_000


@dataclass(frozen=True)
class SweepSpec:
    lab: str  # a built-in lab's name, or an absolute path
    scenario: str
    axes: tuple[Axis, ...]
    repeat: int = 1
    metric: str = DEFAULT_METRIC
    seed: int | None = None  # None: chosen when the sweep starts (and kept in sweep.json)
    parallel: int = 1

    @property
    def swept(self) -> tuple[Axis, ...]:
        """The parameters that take more than one value (the others are fixed)."""
        return tuple(a for a in self.axes if a.swept)

    @property
    def size(self) -> int:
        return count(self.axes, self.repeat)

    def identity(self) -> dict:
        """What makes two sweeps the same sweep (resuming must not mix grids); metric is only how it is summarised."""
        return {"lab": self.lab, "scenario": self.scenario, "axes": [a.to_json() for a in self.axes], "repeat": self.repeat}

    def to_json(self) -> dict:
        return {**self.identity(), "metric": self.metric, "seed": self.seed, "parallel": self.parallel,
                "swept": [a.name for a in self.swept]}


def make_spec(lab: str | Path, scenario: str | None, axes: Sequence[Axis] = (), *, repeat: int | None = None,
              metric_name: str | None = None, seed: int | None = None, parallel: int | None = None,
              file: str | Path | None = None) -> SweepSpec:
    """A sweep from the command line's pieces and, optionally, a sweep file (the command line wins)."""
    written: dict[str, Any] = load_sweep_file(lab, file) if file is not None else {}
    scenario = scenario or written.get("scenario")
    if not scenario:
        raise UserError("which scenario does the sweep run?", hint="give it after the lab, or as `scenario:` in the sweep file")
    merged = merge_axes(axes_from_mapping(written.get("params") or {}), axes)
    repeat = repeat if repeat is not None else written.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise UserError(f"repeat must be a whole number of at least 1, not {repeat!r}")
    parallel = parallel if parallel is not None else written.get("parallel", 1)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise UserError(f"parallel must be a whole number of at least 1, not {parallel!r}")
    chosen = metric_name or written.get("metric") or DEFAULT_METRIC
    metric(str(chosen))  # unknown metrics are refused before anything runs
    seed = seed if seed is not None else written.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise UserError(f"seed must be a whole number, not {seed!r}")
    spec = SweepSpec(lab_ref(lab), str(scenario), merged, repeat, str(chosen), seed, parallel)
    if spec.size > MAX_TASKS:
        raise UserError(f"this sweep is {spec.size} runs (at most {MAX_TASKS})", hint="fewer values or repetitions")
    return spec


def lab_ref(lab: str | Path) -> str:
    """A path becomes absolute (a task must mean the same lab from any directory); a name stays a name."""
    path = Path(lab)
    return str(path.resolve()) if path.exists() else str(lab)


def load_sweep_file(lab: str | Path, file: str | Path) -> dict[str, Any]:
    """A sweep file's ``sweep:`` block: ``file`` is a path, or NAME for the lab's ``sweeps/NAME.yaml``."""
    from ..loader import resolve_lab_file

    path = Path(file)
    if not path.is_file():
        in_lab = resolve_lab_file(lab).parent / SWEEP_DIR / f"{file}.yaml"
        if not in_lab.is_file():
            available = sorted(p.stem for p in in_lab.parent.glob("*.yaml")) if in_lab.parent.is_dir() else []
            raise UserError(f"no sweep file '{file}'", hint=f"a path, or one of the lab's sweeps: {', '.join(available) or 'none'} (in {in_lab.parent})")
        path = in_lab
    from ..loader import parse_yaml, read_source

    try:
        # The loader's bounded reader: an alias bomb, a binary or non-UTF-8 file is one located error.
        data = parse_yaml(read_source(path), path)[0]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    block = data.get("sweep") if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise UserError(f"{path}: no `sweep:` block", hint="sweep: {scenario: NAME, params: {loss: '0..30:5%'}, repeat: 10}")
    unknown = sorted(set(block) - set(FILE_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown key(s) in sweep: {', '.join(unknown)}", hint=f"keys: {', '.join(FILE_KEYS)}")
    if block.get("params") is not None and not isinstance(block["params"], dict):
        raise UserError(f"{path}: sweep.params must map each parameter to its values, e.g. {{loss: '0..30:5%'}}")
    return block


_UNSAFE = re.compile(r"[^A-Za-z0-9=.,%_+-]+")


def task_id(index: int, point: Mapping[str, str], repetition: int) -> str:
    named = ",".join(f"{k}={v}" for k, v in point.items())
    safe = _UNSAFE.sub("-", named).strip("-")[:120]
    return f"{index:04d}-{safe + '-' if safe else ''}r{repetition}"


def task_seed(seed: int, point: Mapping[str, str], repetition: int) -> int:
    """Each run's seed, from the sweep's and what the run is (not its position), so it survives a change of order."""
    text = f"{seed}|" + "|".join(f"{k}={v}" for k, v in sorted(point.items())) + f"|r{repetition}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def tasks(spec: SweepSpec, seed: int) -> list[Task]:
    """Every run of the sweep. Repetitions vary slowest: an interrupted sweep already has the whole
    grid once, and slow drift of the machine spreads over every point instead of biasing some."""
    result = []
    grid = points(spec.axes)
    for repetition in range(1, spec.repeat + 1):
        for point in grid:
            swept = {k: v for k, v in point.items() if any(a.name == k and a.swept for a in spec.axes)}
            one_seed = task_seed(seed, point, repetition)
            params = {**point}
            params.setdefault("seed", str(one_seed))
            result.append(Task(task_id(len(result), swept, repetition), spec.lab, spec.scenario, params, swept,
                               repetition, one_seed))
    return result
