"""Run one scenario on a lab that is up, and record everything in a run directory.

Order: make the run directory, start the observers (kernel tracepoints on
the host; captures and state sampling in every node, via its actor), run
the steps one by one, stop the observers, copy what the nodes recorded into
the run directory, then judge the expectations from the directory alone.
A run cut short (Ctrl-C, a node dying, an engine error) is marked
incomplete and keeps all it collected.
"""

from __future__ import annotations

import io
import json
import platform
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .analyze.results import Verdict
from .analyze.verdicts import judge
from .engine import Engine
from .errors import UserError
from .impairments import (Direction, LoopResult, heal_loop, in_force, loop_states, read_in_force, restore, senders,
                          set_link, start_loop)
from .loader import LoadedLab, LoadedScenario
from .model import describe_settings
from .observe.tracing import KernelEvents
from .plan import LabPlan
from .rundir import RUN_SCHEMA_VERSION, RunDir
from .scenario import Step
from .nodes import ActorSession, NodeLost

Progress = Callable[[str], None]
NODE_RUN_ROOT = "/run/labctl"
MARGIN = 15.0  # seconds beyond a step's own timeout before a node counts as unresponsive


@dataclass(frozen=True)
class RunResult:
    path: Path
    scenario: str
    status: str  # complete | incomplete
    verdicts: list[Verdict]

    @property
    def passed(self) -> bool:
        return self.status == "complete" and all(v.passed for v in self.verdicts)


class ScenarioRun:
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
        self.sessions: dict[str, ActorSession] = {}
        self.sysctl_restore: dict[str, dict[str, str]] = {}
        self.rule_nodes: dict[str, str] = {}
        self.step_nodes: dict[str, str] = {}
        self.addresses = {str(i.address.ip): node.name for node in plan.nodes for i in node.interfaces}
        self.kernel = KernelEvents(self.addresses, self._kernel_event)
        self.lost = threading.Event()  # set by any actor that goes away during the run
        # Impairments and loops: what was in force before the run's first change (restored at the
        # end), every change as recorded in run.json, and the loops started.
        self.impaired_before: dict[tuple[str, str], Direction] = {}
        self.impairment_records: list[dict] = []
        self.loops: list[LoopResult] = []

    # --- records -----------------------------------------------------------------

    def _kernel_event(self, record: dict) -> None:
        if record["event"] == "inet_sock_set_state":
            self.rundir.append("states.jsonl", record)
        else:
            self.rundir.append("events.jsonl", record)

    def _actor_event(self, node: str, message: dict) -> None:
        self.rundir.append("steps.jsonl", {"event": "background-done", "node": node, **message})

    def _metadata(self, status: str, started: float, ended: float | None, reason: str | None, observers: dict) -> dict:
        return {
            "schema_version": RUN_SCHEMA_VERSION,
            "labctl_version": __version__,
            "lab": self.plan.lab,
            "lab_source": self.plan.source,
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
            "impairments": self.impairment_records,
        }

    # --- the run ---------------------------------------------------------------------

    def execute(self) -> RunResult:
        started = time.time()
        observers: dict[str, Any] = {}
        self.rundir.write("run.json", self._metadata("running", started, None, None, observers))
        status, reason = "complete", None
        try:
            observers["tracepoints"] = self.kernel.start()
            if not observers["tracepoints"]:
                observers["tracepoints_unavailable"] = self.kernel.unavailable
            observers["nodes"] = self._start_actors()
            for index, step in enumerate(self.one.scenario.steps):
                self._run_step(index, step)
        except KeyboardInterrupt:
            status, reason = "incomplete", "interrupted (Ctrl-C)"
        except NodeLost as exc:
            status, reason = "incomplete", str(exc)
        except Exception as exc:
            status, reason = "incomplete", f"{type(exc).__name__}: {exc}"
            self._finish(observers)
            self.rundir.write("run.json", self._metadata(status, started, time.time(), reason, observers))
            raise
        try:
            self._finish(observers)
        except KeyboardInterrupt:
            status, reason = "incomplete", "interrupted (Ctrl-C) while collecting"
        self.rundir.write("run.json", self._metadata(status, started, time.time(), reason, observers))
        self.rundir.close()
        verdicts = judge(self.rundir.path)
        self.rundir.write("verdicts.json", {"schema_version": RUN_SCHEMA_VERSION, "verdicts": [v.to_json() for v in verdicts]})
        return RunResult(self.rundir.path, self.one.label, status, verdicts)

    def _clean_slate(self) -> None:
        """Sockets of an earlier run (TIME_WAIT ones included) would meet this run's connections
        on the same 4-tuples. Destroyed on every node before any capture starts, since
        destroying a connection sends an RST that the peer's capture would otherwise record."""
        def reset(node) -> None:
            self.engine.exec(self.plan.lab, node.name, ["ss", "-K", "-t", "state", "all"])

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(reset, self.plan.nodes))
        time.sleep(0.05)  # let the RSTs cross the lab before captures start

    def _start_actors(self) -> dict:
        self._clean_slate()

        def start(node) -> tuple[str, dict]:
            config = {"node": node.name, "run_dir": self.node_dir, "interfaces": [i.name for i in node.interfaces],
                      "addresses": self.addresses,
                      # Rules need to see each connection's SYNs to number its sequence space.
                      "rules": any(step.kind == "rule" and step.node == node.name for step in self.one.scenario.steps)}
            session = ActorSession(self.engine, self.plan.lab, node.name, config,
                                   self.rundir.path / "logs" / f"{node.name}-actor.log", self._actor_event, self.lost)
            self.sessions[node.name] = session
            return node.name, session.wait_ready()

        with ThreadPoolExecutor(max_workers=8) as pool:
            ready = dict(pool.map(start, self.plan.nodes))
        for direction in in_force(ready):
            self._record_impairment(direction, "in force at start", time.time())
        self.progress(f"observers running on {len(ready)} nodes")
        return {name: info.get("observers") for name, info in ready.items()}

    def _finish(self, observers: dict) -> None:
        def stop(item) -> None:
            name, session = item
            session.stopping = True
            try:
                session.call("stop", timeout=20)
            except NodeLost:
                pass
            session.close()

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(stop, list(self.sessions.items())))
        self.kernel.stop()
        observers["kernel_events"] = self.kernel.count
        self._undo_links()
        for node, previous in self.sysctl_restore.items():
            try:
                self.engine.set_sysctls(self.plan.lab, node, previous)
            except Exception as exc:  # a dead node has nothing to restore
                self.progress(f"could not restore sysctls on {node}: {exc}")
        for node in self.plan.nodes:
            try:
                self._collect(node.name)
            except Exception as exc:  # a removed node has nothing to give; the others still do
                observers.setdefault("not_collected", {})[node.name] = str(exc)
                self.progress(f"could not collect from {node.name}: {exc}")

    def _collect(self, node: str) -> None:
        """Copy what a node recorded into the run directory (works on a stopped node too)."""
        archive = self.engine.fetch(self.plan.lab, node, self.node_dir)
        if archive is None:
            return
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                name = member.name.split("/", 1)[1] if "/" in member.name else member.name
                data = tar.extractfile(member).read()
                if name.startswith("pcaps/"):
                    (self.rundir.path / name).write_bytes(data)
                elif name == "states.jsonl":
                    for line in data.decode().splitlines():
                        if line.strip():
                            self.rundir.append(name, {**json.loads(line), "node": node, "source": "sample"})
                elif name == "rules.jsonl":
                    for line in data.decode().splitlines():
                        if line.strip():
                            self.rundir.append(name, {**json.loads(line), "node": node})
                else:
                    (self.rundir.path / "logs" / f"{node}-{Path(name).name}").write_bytes(data)
        try:
            self.engine.exec(self.plan.lab, node, ["rm", "-rf", self.node_dir])
        except Exception:
            pass

    # --- steps -----------------------------------------------------------------------

    def _address(self, node: str, target: str) -> str:
        """A node name as seen from ``node`` (the address on the path), or an address as is."""
        try:
            return str(IPv4Address(target))
        except ValueError:
            return self.plan.node(node).hosts_map()[target] if target != node else str(self.plan.node(node).interfaces[0].address.ip)

    def _addresses_of(self, target: str | None) -> list[str] | None:
        if target is None:
            return None
        try:
            return [str(IPv4Address(target))]
        except ValueError:
            return [str(i.address.ip) for i in self.plan.node(target).interfaces]

    def _run_step(self, index: int, step: Step) -> None:
        kind, action = step.kind, step.action
        record: dict[str, Any] = {"index": index, "kind": kind, "node": step.node, "as": step.as_, "note": step.note,
                                  "args": step.model_dump(mode="json", by_alias=True, exclude_none=True)}
        self.progress(f"step {index + 1}: {kind}" + (f" on {step.node}" if step.node else ""))
        if step.as_ and step.node:
            self.step_nodes[step.as_] = step.node
        started = time.time()
        try:
            reply = self._perform(step, kind, action)
        except NodeLost as exc:
            record.update(t_start=started, t_end=time.time(), ok=False, errno="ENODE", error=str(exc))
            self.rundir.append("steps.jsonl", record)
            raise
        record.update({"t_start": reply.get("t_start", started), "t_end": reply.get("t_end", time.time()),
                       "ok": reply.get("ok", False), "errno": reply.get("errno"), "result": reply.get("result"),
                       "error": reply.get("error"), "background": reply.get("background", False)})
        if "trace" in reply:
            record["trace"] = reply["trace"]
        self.rundir.append("steps.jsonl", record)

    def _call(self, node: str, op: str, args: dict, timeout: float, step: Step) -> dict:
        return self.sessions[node].call(op, args, timeout=timeout + MARGIN, background=step.background, name=step.as_)

    def _perform(self, step: Step, kind: str, action: Any) -> dict:
        node = step.node
        if kind == "listen":
            return self._call(node, "listen", {"name": step.as_, **action.model_dump()}, 5, step)
        if kind == "accept":
            sock, timeout = (action, 10.0) if isinstance(action, str) else (action.sock, action.timeout)
            return self._call(node, "accept", {"name": step.as_, "sock": sock, "timeout": timeout}, timeout, step)
        if kind == "connect":
            args = {"name": step.as_, "address": self._address(node, action.to), "port": action.port,
                    "reuseaddr": action.reuseaddr, "timeout": action.timeout,
                    "bind": action.bind.model_dump() if action.bind else None}
            return self._call(node, "connect", args, action.timeout, step)
        if kind in ("send", "recv", "shutdown", "setsockopt"):
            args = action.model_dump(mode="python")
            if kind == "setsockopt" and not isinstance(action.value, int):
                args["value"] = action.value.model_dump()
            return self._call(node, kind, args, getattr(action, "timeout", 5.0), step)
        if kind == "close":
            return self._call(node, "close", {"sock": action}, 600, step)
        if kind == "sysctl":
            started = time.time()
            values = {k: str(v) for k, v in action.items()}
            previous = self.engine.set_sysctls(self.plan.lab, node, values)
            saved = self.sysctl_restore.setdefault(node, {})
            for key, value in previous.items():
                saved.setdefault(key, value)  # restore the value from before the run, not an intermediate one
            return {"ok": True, "t_start": started, "t_end": time.time(), "result": {"previous": previous}}
        if kind == "kill_socket":
            args = action.model_dump()
            if action.remote:
                args["remote"] = self._address(node, action.remote)
            return self._call(node, "kill_socket", args, 10, step)
        if kind == "exec":
            spec = {"cmd": action} if isinstance(action, str) else action.model_dump()
            return self._call(node, "exec", {**spec, "name": step.as_}, spec.get("timeout", 30.0), step)
        if kind == "rule":
            rule = action.model_dump(by_alias=True)
            rule["from"] = self._addresses_of(action.from_)
            rule["to"] = self._addresses_of(action.to)
            if action.after:
                after = action.after.model_dump(by_alias=True)
                after["from"], after["to"] = self._addresses_of(action.after.from_), self._addresses_of(action.after.to)
                rule["after"] = after
            name = step.as_ or f"rule{len(self.rule_nodes) + 1}"
            self.rule_nodes[name] = node
            return self._call(node, "rule", {"name": name, "rule": rule}, 10, step)
        if kind == "unrule":
            return self._call(node, "unrule", {"name": action}, 10, step)
        if kind == "release":
            args = {"rule": action.rule, "rewrite": action.rewrite.model_dump() if action.rewrite else None, "copy": action.copy_}
            return self._call(node, "release", args, 10, step)
        if kind == "sleep":
            started = time.time()
            if self.lost.wait(action):  # a node that dies during a sleep ends the run at once
                lost = next((n for n, s in self.sessions.items() if s.closed), "a node")
                raise NodeLost(f"node {lost} went away during the run")
            return {"ok": True, "t_start": started, "t_end": time.time(), "result": {"slept": action}}
        if kind == "wait":
            if action.state:
                args = {"state": action.state, "local_port": action.local_port, "remote_port": action.remote_port,
                        "gone": action.gone, "timeout": action.timeout}
                return self._call(action.node, "wait_state", args, action.timeout, step)
            if action.step:
                return self._call(self.step_nodes[action.step], "wait_step", {"step": action.step, "timeout": action.timeout}, action.timeout, step)
            return self._call(self.rule_nodes[action.rule], "wait_rule", {"rule": action.rule, "count": action.count, "timeout": action.timeout},
                              action.timeout, step)
        if kind == "impair":
            return self._impair(step, action)
        if kind == "loop":
            return self._loop(step, action)
        started = time.time()
        return {"ok": False, "t_start": started, "t_end": started, "errno": None, "error": f"unknown step kind '{kind}'"}

    # --- links: impairments and loops ----------------------------------------------------

    def _record_impairment(self, direction: Direction, why: str, t: float, step: int | None = None) -> None:
        record = {"event": "impair", "t": t, "link": direction.link, "node": direction.node, "from": direction.node,
                  "settings": direction.settings, "description": describe_settings(direction.settings),
                  "mechanism": direction.mechanism, "parts": direction.parts, "origin": direction.origin, "why": why,
                  "summary": f"{why}: {direction.summary}", **({"step": step} if step is not None else {})}
        self.impairment_records.append(record)
        self.rundir.append("events.jsonl", record)

    def _impair(self, step: Step, action: Any) -> dict:
        started = time.time()
        index = self.one.scenario.steps.index(step)
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
            self._record_impairment(direction, "cleared by the scenario" if action.clear else "set by the scenario", ended, index)
        return {"ok": True, "t_start": started, "t_end": ended, "result": {"directions": [d.to_json() for d in directions]}}

    def _loop(self, step: Step, action: Any) -> dict:
        started = time.time()
        try:
            result = start_loop(self.engine, self.plan, action.routers[0], action.routers[1], action.for_, action.match)
        except UserError as exc:
            return {"ok": False, "t_start": started, "t_end": time.time(), "errno": None, "error": exc.message}
        self.loops.append(result)
        record = {"event": "loop", "t": result.started, **result.to_json(), "step": self.one.scenario.steps.index(step)}
        self.impairment_records.append(record)
        self.rundir.append("events.jsonl", record)
        return {"ok": True, "t_start": started, "t_end": time.time(), "result": result.to_json()}

    def _undo_links(self) -> None:
        """Heal loops still in force and put every impairment the scenario changed back as it was."""
        for result in self.loops:
            try:
                states = loop_states(self.engine, self.plan, list(result.routers))
                if any(state.get("active") and state.get("id") == result.id for state in states.values()):
                    states = {router: reply.get("state") or {} for router, reply in heal_loop(self.engine, self.plan, list(result.routers)).items()}
                for router, state in states.items():
                    if state.get("id") == result.id and state.get("healed"):
                        record = {"event": "loop-healed", "t": state["healed"], "router": router, "id": result.id,
                                  "summary": f"loop {result.routers[0]} <-> {result.routers[1]} healed on {router}"}
                        self.impairment_records.append(record)
                        self.rundir.append("events.jsonl", record)
            except Exception as exc:  # a dead router has no loop left to heal
                self.progress(f"could not check the loop on {', '.join(result.routers)}: {exc}")
        if self.impaired_before:
            try:
                for direction in restore(self.engine, self.plan, list(self.impaired_before.values())):
                    self._record_impairment(direction, "restored after the run", time.time())
            except Exception as exc:  # a dead node has nothing to restore
                self.progress(f"could not restore impairments: {exc}")
