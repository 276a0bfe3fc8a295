"""Labs as Python objects: ``Lab`` (a lab file, loaded), ``RunningLab`` (it, up), ``Run`` (a run directory).

A thin layer over ``labctl.api``: every action is an api function (the same one the CLI
calls), and what a run found is read from its run directory by the analysis modules,
as typed objects::

    from labctl import Lab

    lab = Lab.load("teardown")
    with lab.up() as running:                      # taken down at the end, also on an exception
        print(running.exec("client", ["ping", "-c1", "server"]).stdout)
        run = running.run("lost-final-ack")
    assert run.passed, run.explain()
    [fin] = run.find_segments(from_="server", flags="F", retransmission=True)
    print(fin.summary(), run.report("md"))

``Run.open(run_dir)`` reads a run that is already on disk: no engine is needed.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence

from . import api
from .analyze.results import Verdict, exit_status
from .analyze.segments import Connection, Segment
from .analyze.states import SocketTimeline
from .analyze.timeline import Timeline, Transmission
from .engine import Engine, ExecResult, default_engine
from .errors import UserError
from .impairments import Direction, LoopResult
from .instances import DEFAULT_INSTANCE, check_instance
from .loader import LoadedLab, load_scenarios, scenario_files
from .model import Link, Node
from .rundir import Damage, latest_run, load_json, read_run

__all__ = ["Lab", "RunningLab", "Run"]

Params = Mapping[str, Any]
Progress = Callable[[str], None]


class Lab:
    """A lab file, loaded and validated (nothing is created until ``up``).

    Example::

        lab = Lab.load("teardown")            # a lab name, a directory or a lab.yaml
        sorted(lab.nodes), [l.name for l in lab.links]
        # -> (['client', 'router', 'server'], ['left', 'right'])
        "lost-final-ack" in lab.scenarios
        # -> True
    """

    def __init__(self, ref: str | Path, loaded: LoadedLab, params: Params):
        self.ref = ref
        self.loaded = loaded
        self.params: dict[str, Any] = dict(params)

    @classmethod
    def load(cls, ref: str | Path, params: Params | None = None) -> "Lab":
        """Read and check a lab: a name (``labctl labs``), a directory or a lab file; ``params``
        as ``-p`` gives them (``{"port": 5002}``). Raises ``UserError`` naming file, line and field.

        Example::

            Lab.load("teardown", params={"port": 5002}).name
            # -> 'teardown'
        """
        return cls(ref, api.load(ref, params), params or {})

    @property
    def name(self) -> str:
        return self.loaded.lab.name

    @property
    def description(self) -> str:
        return self.loaded.lab.description

    @property
    def path(self) -> Path | None:
        """The lab file it was read from."""
        return self.loaded.path

    @property
    def nodes(self) -> dict[str, Node]:
        """Node name -> its model (role, image, sysctls, routes), as the file has it."""
        return dict(self.loaded.lab.nodes)

    @property
    def links(self) -> list[Link]:
        return list(self.loaded.lab.links)

    @property
    def scenarios(self) -> list[str]:
        """The scenario files in the lab's ``scenarios/`` directory, by name."""
        return list(scenario_files(self.path)) if self.path else []

    def validate(self, scenarios: Sequence[str] = ()) -> dict[str, int]:
        """Check every scenario (all, or those named) at every matrix point, as ``run`` would,
        without an engine. Returns the number of runs per scenario; raises ``UserError``.

        Example::

            Lab.load("teardown").validate(["fin-to-closed"])
            # -> {'fin-to-closed': 2}
        """
        checked = api.validate(self.ref, scenarios, self.params)
        return {entry["scenario"]: entry["runs"] for entry in checked["scenarios"]}

    def up(self, *, engine: Engine | None = None, keep: bool = False, offline: bool = False,
           results: Path | None = None, progress: Progress | None = None, instance: str | None = None) -> "RunningLab":
        """Bring the lab up now (or reconcile it with its file) and return it running.
        ``instance``: another isolated copy of the lab beside the others (see ``labctl.instances``).

        Used as a context manager, the lab is taken down when the block ends, also on an
        exception; ``keep=True`` leaves it up. ``results``: where its runs' directories go
        (default ``./results`` or ``$LABCTL_RESULTS``). If bringing it up fails, what it made is
        taken down (unless ``keep``) and the error is raised.

        Example::

            with Lab.load("teardown").up() as running:
                running.exec("client", ["ping", "-c1", "server"]).exit_code
            # -> 0
        """
        instance = check_instance(instance)  # a bad name is refused before anything is made
        engine = engine or default_engine()
        try:
            api.up(self.ref, self.params, engine=engine, offline=offline, progress=progress, instance=instance)
        except BaseException as exc:
            if not keep:
                _down_after(exc, lambda: api.down(self.name, engine=engine, instance=instance))
            raise
        return RunningLab(self, engine, keep=keep, results=results, progress=progress, instance=instance)

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, nodes={sorted(self.nodes)}, params={self.params})"


def _down_after(exc: BaseException, down: Callable[[], object]) -> None:
    """Take a lab down while ``exc`` propagates; a failure to do so is noted on it, not raised over it."""
    try:
        down()
    except Exception as failed:  # the first error is the one the caller must see
        exc.add_note(f"labctl: taking the lab down afterwards failed too: {failed}")


class RunningLab:
    """A lab that is up on an engine: run commands and scenarios in it, impair its links.

    Made by ``Lab.up``; taken down by ``down()`` or at the end of its ``with`` block.

    Example::

        with Lab.load("teardown").up() as running:
            running.impair("right", from_node="router", delay="50ms")
            run = running.run("lost-final-ack")
    """

    def __init__(self, lab: Lab, engine: Engine, *, keep: bool = False, results: Path | None = None,
                 progress: Progress | None = None, instance: str = DEFAULT_INSTANCE):
        self.lab = lab
        self.instance = instance
        self.engine = engine
        self.keep = keep
        self.results = results
        self.progress = progress
        self.is_down = False

    @property
    def name(self) -> str:
        return self.lab.name

    def __enter__(self) -> "RunningLab":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.keep or self.is_down:
            return
        if exc is not None:
            _down_after(exc, self.down)
        else:
            self.down()

    def down(self) -> list[str]:
        """Remove the lab's containers and networks (found by their labels); returns their names."""
        removed = api.down(self.name, engine=self.engine, instance=self.instance)
        self.is_down = True
        return removed

    def exec(self, node: str, argv: str | Sequence[str]) -> ExecResult:
        """Run a command in a node and wait for it: ``exit_code``, ``stdout``, ``stderr``.
        A string is run by ``sh -c``.

        Example::

            running.exec("client", ["ping", "-c1", "server"]).exit_code
            # -> 0
        """
        command = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        return api.exec_in(self.name, node, command, engine=self.engine, instance=self.instance)

    def status(self) -> api.LabStatus:
        """What the engine and the nodes' agents say now: nodes, interfaces, routes, impairments in force."""
        [status] = api.status(self.name, engine=self.engine, instance=self.instance)
        return status

    def impair(self, link: str, from_node: str | None = None, *, clear: bool = False, **settings: Any) -> list[Direction]:
        """Impair a link now, in ``from_node``'s egress direction (every direction when omitted),
        with settings as a lab file writes them; they replace what was in force there.

        Example::

            running.impair("right", from_node="router", delay="50ms", loss="5%")
            running.impair("right", clear=True)
        """
        return api.impair(self.name, link, from_node, settings, clear, params=self.lab.params, engine=self.engine,
                          instance=self.instance)

    def loop(self, r1: str, r2: str, seconds: float | str | None = None, match: Mapping[str, Any] | None = None, *,
             heal: bool = False) -> LoopResult:
        """A transient forwarding loop between two routers for ``seconds``; it heals by itself (see ``api.loop``)."""
        return api.loop(self.name, r1, r2, seconds, match, heal=heal, params=self.lab.params, engine=self.engine,
                        instance=self.instance)

    def run(self, scenario: str, params: Params | None = None) -> "Run":
        """Run one scenario (a name in the lab, or a file) and return its ``Run``.

        A scenario with a matrix runs once per point: fix every axis with ``params``
        (``{"method": "kill"}``) to choose one, or use ``run_all``.

        Example::

            run = running.run("lost-final-ack")
            run.passed, [v.outcome for v in run.verdicts]
        """
        merged = {**self.lab.params, **(params or {})}
        points = load_scenarios(api.load(self.lab.ref, merged), [scenario], merged)
        if len(points) != 1:
            labels = ", ".join(one.label for one in points)
            raise UserError(f"scenario '{scenario}' has {len(points)} matrix points ({labels}); run() runs one",
                            hint="fix its axes with params=..., or use run_all() for every point")
        [run] = self.run_all([scenario], params)
        return run

    def run_all(self, scenarios: Sequence[str] = (), params: Params | None = None) -> list["Run"]:
        """Run scenarios (all of the lab's when none are named), one ``Run`` per matrix point.
        Every run is validated before the first starts."""
        merged = {**self.lab.params, **(params or {})}
        results = api.run(self.lab.ref, scenarios, merged, engine=self.engine, root=self.results, progress=self.progress,
                          instance=self.instance)
        return [Run(result.path, verdicts=result.verdicts, status=result.status) for result in results]

    def __repr__(self) -> str:
        instance = "" if self.instance == DEFAULT_INSTANCE else f", instance={self.instance!r}"
        return f"RunningLab({self.name!r}{instance}{', down' if self.is_down else ''}{', keep' if self.keep else ''})"


class Run:
    """One run of a scenario, read from its run directory: verdicts, segments, sockets, report.

    Everything is loaded on first use, by the same analysis the report uses.

    Example::

        run = Run.open("results/teardown/20261201-101500-lost-final-ack-1a2b")
        run.passed, run.exit_status
        # -> (True, 0)
        [(v.outcome, v.description) for v in run.verdicts if not v.passed]
        # -> []
        [s.summary() for s in run.find_segments(from_="server", flags="F", retransmission=True)]
    """

    def __init__(self, path: str | Path, *, verdicts: list[Verdict] | None = None, status: str | None = None):
        self.path = Path(path)
        if not (self.path / "run.json").is_file():
            raise UserError(f"{self.path} is not a run directory (no run.json)", hint="give results/LAB/RUN-ID")
        self._verdicts = verdicts
        self._status = status

    @classmethod
    def open(cls, run_dir: str | Path) -> "Run":
        """A run directory already on disk (no engine needed)."""
        return cls(run_dir)

    @classmethod
    def latest(cls, lab: str, root: Path | None = None) -> "Run":
        """The newest run of a lab under ``root`` (default ``./results`` or ``$LABCTL_RESULTS``)."""
        found = latest_run(lab, root)
        if found is None:
            raise UserError(f"lab '{lab}' has no runs under {root or 'the results directory'}")
        return cls(found)

    @cached_property
    def info(self) -> dict[str, Any]:
        """run.json as written: lab, scenario, params, observers, nodes, links, steps, expectations
        (a field that is damaged is left out: ``damage`` says which)."""
        return read_run(self.path, self._damage)

    @cached_property
    def _damage(self) -> list:
        return []

    @property
    def damage(self) -> list:
        """What is wrong with the run directory's files (``rundir.Damage``: file, problem), as far as read."""
        return list(dict.fromkeys(self._damage + (self._view.damage if "_view" in self.__dict__ else [])))

    @property
    def lab(self) -> str:
        return str(self.info.get("lab") or "?")

    @property
    def scenario(self) -> str:
        """Its label: the scenario's name, with the matrix point (``fin-to-closed[method=kill]``)."""
        return str(self.info.get("label") or self.info.get("scenario"))

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.info.get("params") or {})

    @property
    def status(self) -> str:
        """``complete``, or ``incomplete`` (cut short; ``info["reason"]`` says why)."""
        return self._status or str(self.info.get("status"))

    @cached_property
    def _view(self):  # analyze.verdicts.RunView: the directory, loaded once
        from .analyze.verdicts import RunView

        return RunView(self.path)

    @property
    def verdicts(self) -> list[Verdict]:
        """One per expectation (and one per check the run adds: a failed step, an incomplete run):
        ``outcome`` pass | fail | undecided, ``reason``, ``expected``, ``observed``, typed ``evidence``.
        As recorded in verdicts.json; judged now from the directory when it has none."""
        if self._verdicts is None:
            recorded = self.path / "verdicts.json"
            data = load_json(recorded, self._damage)
            items = data.get("verdicts") if data is not None else None
            if isinstance(items, list):
                problems: list[str] = []
                self._verdicts = [v for v in (Verdict.read(item, i, problems) for i, item in enumerate(items)) if v is not None]
                self._damage.extend(Damage("verdicts.json", p) for p in problems)
            else:
                from .analyze.verdicts import judge

                self._verdicts = judge(self.path, self._view)
        return self._verdicts

    @property
    def passed(self) -> bool:
        """The run completed and every verdict passed (an undecided one is not a pass)."""
        return self.status == "complete" and all(v.passed for v in self.verdicts)

    @property
    def exit_status(self) -> int:
        """What ``labctl run`` exits with for this run: 0 passed, 1 failed or incomplete, 3 undecided."""
        return exit_status(self.verdicts, self.status == "complete")

    def explain(self) -> str:
        """The verdicts that did not pass, one a line, with what was observed (for assert messages)."""
        lines = [f"{v.outcome}: {v.name or v.description}: observed {v.observed}" + (f" ({v.reason})" if v.reason else "")
                 for v in self.verdicts if not v.passed]
        if self.status != "complete":
            lines.insert(0, f"run {self.status}: {self.info.get('reason')}")
        return f"{self.path}: " + ("; ".join(lines) if lines else "every verdict passed")

    @property
    def segments(self) -> list[Segment]:
        """Every TCP segment at every capture point, in time order, classified (``transmission``,
        ``connection``, ``incarnation``, ``rel_seq``/``rel_ack``, ``retransmission``, ``dup_ack``...).
        One transmission seen at three captures is three segments with one ``transmission``."""
        return self._view.segments

    @property
    def connections(self) -> list[Connection]:
        return self._view.connections

    @property
    def sockets(self) -> list[SocketTimeline]:
        """Each socket's TCP state timeline (``transitions``, ``states``, ``durations()``, and the
        ``disagreements`` between tracepoints, sampling and captures)."""
        return self._view.timelines

    @cached_property
    def timeline(self) -> Timeline:
        """The whole run in time order, as the report's ladder reads it: transmissions with their
        fate (delivered, dropped where), rule actions, steps, kernel events."""
        from .analyze.timeline import build

        return build(self._view)

    @property
    def transmissions(self) -> list[Transmission]:
        return self.timeline.transmissions

    def find_segments(self, *, from_: str | None = None, to: str | None = None, flags: str | None = None,
                      at: str | None = None, retransmission: bool | None = None, after: Mapping[str, Any] | None = None,
                      **match: Any) -> list[Segment]:
        """The segments a ``segments:`` expectation with these keys would count: each transmission
        once, at ``at``'s capture (default: the sender's). ``from_`` is the file's ``from``; nodes or
        addresses; ``flags`` as in scenarios ("F", "=A"); ``match`` takes sport, dport, seq, ack, payload.

        Example::

            [fin] = run.find_segments(from_="server", flags="F", retransmission=True)
            fin.retransmission
            # -> True
        """
        from .analyze.verdicts import segments_seen
        from .expectations import SegmentsExpect

        given = {"from": from_, "to": to, "flags": flags, "at": at, "retransmission": retransmission, "after": after, **match}
        try:
            parsed = SegmentsExpect.model_validate({k: v for k, v in given.items() if v is not None})
        except ValueError as exc:
            raise UserError(f"find_segments: {exc}") from None
        return segments_seen(self._view, parsed.model_dump(mode="python", by_alias=True, exclude_none=True))

    def report(self, format: str = "html", *, path: str | Path | None = None, fold: bool = True) -> str:
        """The run's report as text: ``html`` (one self-contained file), ``md``, ``json`` or ``term``;
        with ``path`` it is also written there.

        Example::

            run.report("html", path="lost-final-ack.html")
        """
        text = api.report([self.path], format=format, fold=fold)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def __repr__(self) -> str:
        verdicts = self._verdicts
        summary = "not judged yet" if verdicts is None else ("passed" if self.passed else f"exit status {self.exit_status}")
        return f"Run({self.scenario!r}, {summary}, {str(self.path)!r})"

