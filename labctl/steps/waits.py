"""Steps that only pass time: a fixed sleep, or a wait until something has happened."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from ..units import MAX_COUNT, Duration, Port
from .base import Names, StepKind, Strict, TcpState, register


class Wait(Strict):
    node: str | None = None
    state: TcpState | None = Field(None, description="Wait until a socket on `node` is in this state.")
    local_port: Port | None = None
    remote_port: Port | None = None
    gone: bool = Field(False, description="Wait until no socket is in `state` any more.")
    step: str | None = Field(None, description="Wait until a background step has finished.")
    rule: str | None = Field(None, description="Wait until this rule has acted `count` times.")
    count: int = Field(1, ge=1, le=MAX_COUNT)
    timeout: Duration = 10.0


# States whose end the full socket's tracepoint shows as it happens. Not TIME_WAIT (a timewait
# socket's), nor FIN_WAIT2 (an orphan's FIN_WAIT2 -> CLOSE is its handoff to a timewait socket,
# which stays in FIN_WAIT2), nor SYN_RECV (a request socket's): those are waited for by sampling.
LEFT_BY_TRACEPOINT = ("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "CLOSE_WAIT", "CLOSING", "LAST_ACK")
POLL = 0.002  # seconds between looks at the tracepoints recorded so far


def _gone_by_tracepoints(action: Wait, run) -> dict:
    """Until a socket on the node has been in the state and none is any more, as the tracepoints
    recorded so far say: every change of it, so a state held for less than a sample is not missed."""
    def ours(record: dict) -> bool:
        return (record.get("node") == action.node
                and (action.local_port is None or str(record.get("local", "")).endswith(f":{action.local_port}"))
                and (action.remote_port is None or str(record.get("remote", "")).endswith(f":{action.remote_port}")))

    started = time.time()
    deadline = time.monotonic() + action.timeout
    while True:
        latest: dict[tuple, str] = {}
        left = None
        for record in run.kernel_states() or []:
            if ours(record):
                latest[(record.get("local"), record.get("remote"))] = record.get("newstate")
                if record.get("oldstate") == action.state:
                    left = record
        if left is not None and action.state not in latest.values():
            return {"ok": True, "t_start": started, "t_end": time.time(),
                    "result": {"left": {"t": left["t"], "local": left.get("local"), "remote": left.get("remote"),
                                        "to": left.get("newstate")}, "decided_by": "tracepoints"}}
        if time.monotonic() >= deadline:
            return {"ok": False, "errno": "TIMEOUT", "t_start": started, "t_end": time.time(),
                    "error": f"no socket left {action.state} within {action.timeout} s (by the kernel's tracepoints)"}
        run.sleep(POLL)


@register
class SleepStep(StepKind):
    key, model, on_node, on_ladder = "sleep", Duration, False, False

    def perform(self, action: float, step: Any, run) -> dict:
        return run.sleep(action)


@register
class WaitStep(StepKind):
    key, model, on_node, on_ladder = "wait", Wait, False, False

    def check(self, action: Wait, step: Any, here: tuple, names: Names) -> None:
        if sum(x is not None for x in (action.state, action.step, action.rule)) != 1:
            raise names.error(self.where(here), "wait for exactly one of: state, step, rule")
        if action.state and action.node not in names.lab.nodes:
            raise names.error(self.where(here, "node"), "waiting for a state needs `node:` (a node of the lab)")
        if action.step and action.step not in names.steps:
            raise names.error(self.where(here, "step"), f"no earlier step is named '{action.step}'")
        if action.rule and action.rule not in names.rules:
            raise names.error(self.where(here, "rule"), f"no earlier rule is named '{action.rule}'")

    def perform(self, action: Wait, step: Any, run) -> dict:
        if action.state:
            if action.gone and action.state in LEFT_BY_TRACEPOINT and run.kernel_states() is not None:
                return _gone_by_tracepoints(action, run)
            args = {"state": action.state, "local_port": action.local_port, "remote_port": action.remote_port,
                    "gone": action.gone, "timeout": action.timeout}
            return run.call(step, "wait_state", args, action.timeout, node=action.node)
        if action.step:
            return run.call(step, "wait_step", {"step": action.step, "timeout": action.timeout}, action.timeout,
                            node=run.step_nodes[action.step])
        return run.call(step, "wait_rule", {"rule": action.rule, "count": action.count, "timeout": action.timeout},
                        action.timeout, node=run.rule_nodes[action.rule])

    def reads_fields(self, args: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in args.items() if k in ("state", "step", "rule", "node") and v)
