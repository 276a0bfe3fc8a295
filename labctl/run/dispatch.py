"""The scenario's steps, one by one, each performed by its kind and recorded in steps.jsonl.

A kind (``labctl.steps``) decides what its step does; this is what every kind
may use while it does it: the line to each node's actor, node names turned
into the addresses a node sees, the lab changes to undo later, and the names
(rules, background steps) earlier steps made.
"""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address
from typing import Any, Callable

from ..plan import LabPlan
from ..rundir import RunDir
from ..nodes import ActorSession, NodeLost
from ..steps import STEP_KINDS
from .changes import LabChanges

MARGIN = 15.0  # seconds beyond a step's own timeout before a node counts as unresponsive


def addresses_of(plan: LabPlan, target: str | None) -> list[str] | None:
    """Every address of a node (or the one address given); None for none given."""
    if target is None:
        return None
    try:
        return [str(IPv4Address(target))]
    except ValueError:
        return [str(i.address.ip) for i in plan.node(target).interfaces]


class StepDispatch:
    def __init__(self, plan: LabPlan, rundir: RunDir, sessions: dict[str, ActorSession], changes: LabChanges,
                 lost: threading.Event, progress: Callable[[str], None]):
        self.plan = plan
        self.rundir = rundir
        self.sessions = sessions  # node -> its actor, filled when the observers start
        self.changes = changes
        self.lost = lost  # set by any actor that goes away during the run
        self.progress = progress
        self.rule_nodes: dict[str, str] = {}  # rule name -> its node
        self.step_nodes: dict[str, str] = {}  # step `as` name -> its node
        self.step_index = 0  # the step being performed
        # The tracepoints' state changes recorded so far (None: tracepoints are not running); set by the runner.
        self.kernel_states: Callable[[], list[dict] | None] = lambda: None

    def run(self, index: int, step: Any) -> None:
        kind, action = step.kind, step.action
        record: dict[str, Any] = {"index": index, "kind": kind, "node": step.node, "as": step.as_, "note": step.note,
                                  "args": step.model_dump(mode="json", by_alias=True, exclude_none=True)}
        self.progress(f"step {index + 1}: {kind}" + (f" on {step.node}" if step.node else ""))
        if step.as_ and step.node:
            self.step_nodes[step.as_] = step.node
        self.step_index = index
        started = time.time()
        try:
            reply = STEP_KINDS[kind].perform(action, step, self)
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

    # --- what kinds use -------------------------------------------------------------

    def call(self, step: Any, op: str, args: dict, timeout: float, node: str | None = None) -> dict:
        """One call to the actor on ``node`` (default: the step's), as the step's reply."""
        return self.sessions[node or step.node].call(op, args, timeout=timeout + MARGIN, background=step.background,
                                                     name=step.as_)

    def address(self, node: str, target: str) -> str:
        """A node name as seen from ``node`` (the address on the path), or an address as is."""
        try:
            return str(IPv4Address(target))
        except ValueError:
            here = self.plan.node(node)
            return here.hosts_map()[target] if target != node else str(here.interfaces[0].address.ip)

    def addresses_of(self, target: str | None) -> list[str] | None:
        return addresses_of(self.plan, target)

    def sleep(self, seconds: float) -> dict:
        started = time.time()
        if self.lost.wait(seconds):  # a node that dies during a sleep ends the run at once
            lost = next((n for n, s in self.sessions.items() if s.closed), "a node")
            raise NodeLost(f"node {lost} went away during the run")
        return {"ok": True, "t_start": started, "t_end": time.time(), "result": {"slept": seconds}}
