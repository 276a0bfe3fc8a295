"""Steps on a node as a whole: its sysctls, its sockets as `ss -K` sees them, a program."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from ..units import Duration, ExitStatus, Port, SsState, SysctlName, SysctlValue
from .base import Names, StepKind, Strict, register


class KillSocket(Strict):
    """Destroy sockets as `ss -K` does (INET_DIAG_DESTROY); TIME_WAIT ones included."""

    local_port: Port | None = None
    remote_port: Port | None = None
    remote: str | None = Field(None, description="A node name or IPv4 address.")
    state: SsState | None = Field(None, description="Only sockets in this state, as ss names it: time-wait, established, ...")


class Exec(Strict):
    cmd: list[str] | str = Field(description="Argument list, or a shell command line.")
    background: bool = Field(False, description="Start it and go on; it is stopped when the scenario ends.")
    timeout: Duration = 30.0
    expect_exit: ExitStatus | None = Field(0, description="The exit status that makes the step pass (null: any).")


@register
class SysctlStep(StepKind):
    """Set sysctls now; the values from before the run come back when it ends."""

    key, model = "sysctl", dict[SysctlName, SysctlValue]

    def perform(self, action: dict, step: Any, run) -> dict:
        started = time.time()
        previous = run.changes.set_sysctls(step.node, {k: str(v) for k, v in action.items()})
        return {"ok": True, "t_start": started, "t_end": time.time(), "result": {"previous": previous}}

    def reads_fields(self, args: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in args.items())


@register
class KillSocketStep(StepKind):
    key, model = "kill_socket", KillSocket

    def check(self, action: KillSocket, step: Any, here: tuple, names: Names) -> None:
        names.endpoint(action.remote, self.where(here, "remote"))

    def perform(self, action: KillSocket, step: Any, run) -> dict:
        args = action.model_dump()
        if action.remote:
            args["remote"] = run.address(step.node, action.remote)
        return run.call(step, "kill_socket", args, 10)

    def reads_fields(self, args: dict) -> str:
        return ", ".join(f"{k}={v}" for k, v in args.items() if v is not None)


@register
class ExecStep(StepKind):
    key, model = "exec", Exec | str

    def perform(self, action: Exec | str, step: Any, run) -> dict:
        spec = {"cmd": action} if isinstance(action, str) else action.model_dump()
        return run.call(step, "exec", {**spec, "name": step.as_}, spec.get("timeout", Exec.model_fields["timeout"].default))
