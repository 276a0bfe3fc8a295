"""The observers around a run's steps: kernel tracepoints on the host, and one actor per node.

Each node's actor captures every lab interface (tcpdump) and samples its TCP
sockets from the moment it is ready; it is also the node's end of the step
calls. Everything an observer sees is written to the run directory as it
comes (tracepoints) or copied out at the end (``collect``).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..engine import Engine
from ..observe.tracing import KernelEvents
from ..plan import LabPlan
from ..rundir import RunDir
from ..nodes import ActorSession, NodeLost
from ..steps import STEP_KINDS
from .dispatch import addresses_of

PARALLEL = 8  # nodes started, stopped and cleaned at once


class Observers:
    def __init__(self, engine: Engine, plan: LabPlan, steps: list, rundir: RunDir, node_dir: str,
                 progress: Callable[[str], None]):
        self.engine = engine
        self.plan = plan
        self.steps = steps
        self.rundir = rundir
        self.node_dir = node_dir
        self.progress = progress
        self.addresses = {str(i.address.ip): node.name for node in plan.nodes for i in node.interfaces}
        self.kernel = KernelEvents(engine.host_observers(), self.addresses, self._kernel_event)
        self.sessions: dict[str, ActorSession] = {}
        self.lost = threading.Event()  # set by any actor that goes away during the run
        self.traced_states: list[dict] = []  # what the tracepoints said so far (steps may wait on it)
        self.tracing = False

    def _kernel_event(self, record: dict) -> None:
        if record["event"] == "inet_sock_set_state":
            self.traced_states.append(record)
        self.rundir.append("states.jsonl" if record["event"] == "inet_sock_set_state" else "events.jsonl", record)

    def kernel_states(self) -> list[dict] | None:
        """The tracepoints' state changes so far; None when tracepoints are not running."""
        return list(self.traced_states) if self.tracing else None

    def _actor_event(self, node: str, message: dict) -> None:
        self.rundir.append("steps.jsonl", {"event": "background-done", "node": node, **message})

    # --- start -----------------------------------------------------------------------

    def start(self, observed: dict) -> dict[str, dict]:
        """Start everything, noting in ``observed`` (run.json's ``observers``) what runs; the actors' ready replies."""
        observed["tracepoints"] = self.tracing = self.kernel.start()
        if self.kernel.mounted_here:
            observed["made_available"] = [f"tracefs mounted at {self.kernel.tracefs.root}"]
        if not observed["tracepoints"]:
            observed["tracepoints_unavailable"] = self.kernel.unavailable
            observed["unavailable"] = {"tracepoints": self.kernel.unavailable}
            # Said once per run, here and in run.json; the verdicts that needed them say "undecided".
            self.progress(f"not observed: kernel tracepoints ({self.kernel.unavailable}); "
                          "TCP states from sampling and the captures only")
        ready = self._start_actors()
        observed["nodes"] = {name: info.get("observers") for name, info in ready.items()}
        observed["sysctls"] = {name: info.get("sysctls") or {} for name, info in ready.items()}
        return ready

    def _clean_slate(self) -> None:
        """Sockets of an earlier run (TIME_WAIT ones included) would meet this run's connections
        on the same 4-tuples. Destroyed on every node before any capture starts, since
        destroying a connection sends an RST that the peer's capture would otherwise record."""
        def reset(node) -> None:
            self.engine.exec(self.plan.key, node.name, ["ss", "-K", "-t", "state", "all"])

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            list(pool.map(reset, self.plan.nodes))
        time.sleep(0.05)  # let the RSTs cross the lab before captures start

    def actor_config(self, node: Any) -> dict:
        config = {"node": node.name, "run_dir": self.node_dir, "interfaces": [i.name for i in node.interfaces],
                  "addresses": self.addresses}
        def resolve(target: str | None) -> list[str] | None:
            return addresses_of(self.plan, target)

        for step in self.steps:  # what a step kind needs in place before the first step (rules: the engine)
            if step.node == node.name:
                for key, value in STEP_KINDS[step.kind].actor_config(step.action, step, resolve).items():
                    # Lists add up over steps (every rule's flows); anything else is set.
                    if isinstance(value, list):
                        config[key] = config.get(key, []) + [v for v in value if v not in config.get(key, [])]
                    else:
                        config[key] = value
        return config

    def _start_actors(self) -> dict[str, dict]:
        self._clean_slate()

        def start(node) -> tuple[str, dict]:
            session = ActorSession(self.engine, self.plan.key, node.name, self.actor_config(node),
                                   self.rundir.path / "logs" / f"{node.name}-actor.log", self._actor_event, self.lost)
            self.sessions[node.name] = session
            return node.name, session.wait_ready()

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            ready = dict(pool.map(start, self.plan.nodes))
        self.progress(f"observers running on {len(ready)} nodes")
        return ready

    # --- stop ------------------------------------------------------------------------

    def stop(self, observed: dict) -> None:
        def stop(session: ActorSession) -> None:
            session.stopping = True
            try:
                session.call("stop", timeout=20)
            except NodeLost:
                pass
            session.close()

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            list(pool.map(stop, list(self.sessions.values())))
        self.kernel.stop()
        observed["kernel_events"] = self.kernel.count
