"""What a run's steps change in the lab beyond the run, recorded, and put back when it ends.

Sysctls, link impairments and routing loops outlive the scenario that set
them: each change is written to events.jsonl (and run.json) as it happens,
and ``undo`` restores what was in force before the run's first change.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..engine import Engine
from ..errors import UserError
from ..impairments import Direction, LoopResult, heal_loop, loop_states, read_in_force, restore, senders, set_link, start_loop
from ..model import describe_settings
from ..plan import LabPlan
from ..rundir import RunDir


class LabChanges:
    def __init__(self, engine: Engine, plan: LabPlan, rundir: RunDir, progress: Callable[[str], None]):
        self.engine = engine
        self.plan = plan
        self.rundir = rundir
        self.progress = progress
        self.sysctls_before: dict[str, dict[str, str]] = {}  # node -> key -> value before the run
        self.impaired_before: dict[tuple[str, str], Direction] = {}  # (node, link) -> before the run's first change
        self.loops: list[LoopResult] = []
        self.records: list[dict] = []  # every impairment and loop event, as run.json keeps them

    # --- sysctls ---------------------------------------------------------------------

    def set_sysctls(self, node: str, values: dict[str, str]) -> dict[str, str]:
        previous = self.engine.set_sysctls(self.plan.key, node, values)
        saved = self.sysctls_before.setdefault(node, {})
        for key, value in previous.items():
            saved.setdefault(key, value)  # restore the value from before the run, not an intermediate one
        return previous

    # --- impairments and loops ---------------------------------------------------------

    def record_impairment(self, direction: Direction, why: str, t: float, step: int | None = None) -> None:
        record = {"event": "impair", "t": t, "link": direction.link, "node": direction.node, "from": direction.node,
                  "settings": direction.settings, "description": describe_settings(direction.settings),
                  "mechanism": direction.mechanism, "parts": direction.parts, "origin": direction.origin, "why": why,
                  "summary": f"{why}: {direction.summary}", **({"step": step} if step is not None else {})}
        self._record(record)

    def _record(self, record: dict) -> None:
        self.records.append(record)
        self.rundir.append("events.jsonl", record)

    def impair(self, step: int, action: Any) -> dict:
        """An impair step (``action``: its settings, or ``clear``), as a step reply."""
        started = time.time()
        try:
            nodes = senders(self.plan, action.link, action.from_)
            untouched = [n for n in nodes if (n, action.link) not in self.impaired_before]
            if untouched:
                current = {(d.node, d.link): d for d in read_in_force(self.engine, self.plan, untouched)}
                for node in untouched:
                    self.impaired_before[(node, action.link)] = current.get(
                        (node, action.link), Direction(action.link, node, {}, None, origin="runtime"))
            directions = set_link(self.engine, self.plan, action.link, action.from_, None if action.clear else action, "scenario")
        except UserError as exc:
            return {"ok": False, "t_start": started, "t_end": time.time(), "errno": None, "error": exc.message}
        ended = time.time()
        for direction in directions:
            self.record_impairment(direction, "cleared by the scenario" if action.clear else "set by the scenario", ended, step)
        return {"ok": True, "t_start": started, "t_end": ended, "result": {"directions": [d.to_json() for d in directions]}}

    def loop(self, step: int, action: Any) -> dict:
        """A loop step, as a step reply: the loop runs on and heals by itself."""
        started = time.time()
        try:
            result = start_loop(self.engine, self.plan, action.routers[0], action.routers[1], action.for_, action.match)
        except UserError as exc:
            return {"ok": False, "t_start": started, "t_end": time.time(), "errno": None, "error": exc.message}
        self.loops.append(result)
        self._record({"event": "loop", "t": result.started, **result.to_json(), "step": step})
        return {"ok": True, "t_start": started, "t_end": time.time(), "result": result.to_json()}

    # --- the end of the run ------------------------------------------------------------

    def undo(self) -> None:
        self._heal_loops()
        if self.impaired_before:
            try:
                for direction in restore(self.engine, self.plan, list(self.impaired_before.values())):
                    self.record_impairment(direction, "restored after the run", time.time())
            except Exception as exc:  # a dead node has nothing to restore
                self.progress(f"could not restore impairments: {exc}")
        for node, previous in self.sysctls_before.items():
            try:
                self.engine.set_sysctls(self.plan.key, node, previous)
            except Exception as exc:  # a dead node has nothing to restore
                self.progress(f"could not restore sysctls on {node}: {exc}")

    def _heal_loops(self) -> None:
        """Heal loops still in force, and record when each healed."""
        for result in self.loops:
            try:
                states = loop_states(self.engine, self.plan, list(result.routers))
                if any(state.get("active") and state.get("id") == result.id for state in states.values()):
                    states = {router: reply.get("state") or {} for router, reply in heal_loop(self.engine, self.plan, list(result.routers)).items()}
                for router, state in states.items():
                    if state.get("id") == result.id and state.get("healed"):
                        self._record({"event": "loop-healed", "t": state["healed"], "router": router, "id": result.id,
                                      "summary": f"loop {result.routers[0]} <-> {result.routers[1]} healed on {router}"})
            except Exception as exc:  # a dead router has no loop left to heal
                self.progress(f"could not check the loop on {', '.join(result.routers)}: {exc}")
