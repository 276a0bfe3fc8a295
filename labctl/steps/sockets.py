"""Socket steps: the calls of a TCP program, one actor call each, on sockets named by `as:`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..units import Bytes, Duration, Port, PortOrAny, SockOptValue
from .base import Names, StepKind, Strict, register

SOCKET_TIMEOUT = 5.0  # seconds, for calls that have no timeout of their own


class Listen(Strict):
    port: Port
    address: str = Field("0.0.0.0", description="Local address to bind.")
    backlog: int = Field(16, ge=0, le=65535)
    reuseaddr: bool = Field(False, description="Set SO_REUSEADDR before bind.")
    reuseport: bool = False


class Accept(Strict):
    sock: str = Field(description="The listening socket's name.")
    timeout: Duration = 10.0


class Bind(Strict):
    address: str = "0.0.0.0"
    port: PortOrAny = 0


class Connect(Strict):
    to: str = Field(description="A node name or IPv4 address.")
    port: Port
    bind: Bind | None = Field(None, description="Local address and port to bind first.")
    reuseaddr: bool = Field(False, description="Set SO_REUSEADDR before bind/connect.")
    timeout: Duration = 10.0


class Send(Strict):
    sock: str
    data: str = Field("", description="Text to send (UTF-8).")
    size: Bytes | None = Field(None, description="Send this many bytes of a repeating pattern instead of data.")


class Recv(Strict):
    sock: str
    size: Bytes = 65536
    expect: str | None = Field(None, description="The text that must arrive; the step fails otherwise.")
    timeout: Duration = 5.0
    all: bool = Field(False, description="Keep reading until `size` bytes or end of stream.")


class Shutdown(Strict):
    sock: str
    how: Literal["rd", "wr", "rdwr"] = "wr"


class Linger(Strict):
    onoff: int = Field(1, ge=0, le=1)
    linger: int = Field(0, ge=0, le=3600, description="Seconds close() waits for unsent data (at most an hour).")


class SetSockOpt(Strict):
    sock: str
    option: Literal["SO_LINGER", "SO_REUSEADDR", "SO_REUSEPORT", "TCP_NODELAY", "SO_RCVBUF", "SO_SNDBUF", "SO_KEEPALIVE"]
    value: SockOptValue | Linger


@register
class ListenStep(StepKind):
    key, model, makes_socket = "listen", Listen, True

    def perform(self, action: Listen, step: Any, run) -> dict:
        return run.call(step, "listen", {"name": step.as_, **action.model_dump()}, SOCKET_TIMEOUT)

    def reads_fields(self, args: dict) -> str:
        return f":{args.get('port')}"


@register
class AcceptStep(StepKind):
    key, model, makes_socket = "accept", str | Accept, True

    def check(self, action: str | Accept, step: Any, here: tuple, names: Names) -> None:
        names.socket(action if isinstance(action, str) else action.sock, step.node, self.where(here))

    def perform(self, action: str | Accept, step: Any, run) -> dict:
        sock, timeout = (action, Accept.model_fields["timeout"].default) if isinstance(action, str) else (action.sock, action.timeout)
        return run.call(step, "accept", {"name": step.as_, "sock": sock, "timeout": timeout}, timeout)


@register
class ConnectStep(StepKind):
    key, model, makes_socket = "connect", Connect, True

    def check(self, action: Connect, step: Any, here: tuple, names: Names) -> None:
        names.endpoint(action.to, self.where(here, "to"))

    def perform(self, action: Connect, step: Any, run) -> dict:
        args = {"name": step.as_, "address": run.address(step.node, action.to), "port": action.port,
                "reuseaddr": action.reuseaddr, "timeout": action.timeout,
                "bind": action.bind.model_dump() if action.bind else None}
        return run.call(step, "connect", args, action.timeout)

    def reads_fields(self, args: dict) -> str:
        return f"{args.get('to')}:{args.get('port')}"


class OnSocket(StepKind):
    """A call on a socket an earlier step made: its arguments go to the actor as they are."""

    def check(self, action: Any, step: Any, here: tuple, names: Names) -> None:
        names.socket(action.sock, step.node, self.where(here, "sock"))

    def perform(self, action: Any, step: Any, run) -> dict:
        return run.call(step, self.key, action.model_dump(mode="python"), getattr(action, "timeout", SOCKET_TIMEOUT))

    def reads_fields(self, args: dict) -> str:
        return str(args.get("sock") or "")


@register
class SendStep(OnSocket):
    key, model = "send", Send

    def reads_fields(self, args: dict) -> str:
        size = len(str(args.get("data") or "")) if args.get("size") is None else args["size"]
        return f"{super().reads_fields(args)}, {size} bytes"


@register
class RecvStep(OnSocket):
    key, model = "recv", Recv


@register
class ShutdownStep(OnSocket):
    key, model = "shutdown", Shutdown


@register
class CloseStep(StepKind):
    key, model, description = "close", str, "The socket to close."

    def check(self, action: str, step: Any, here: tuple, names: Names) -> None:
        names.socket(action, step.node, self.where(here))

    def perform(self, action: str, step: Any, run) -> dict:
        # With SO_LINGER {1, N} close blocks for up to N seconds: the actor measures it.
        return run.call(step, "close", {"sock": action}, 600)


@register
class SetSockOptStep(OnSocket):
    key, model = "setsockopt", SetSockOpt

    def reads_fields(self, args: dict) -> str:
        return f"{super().reads_fields(args)}, {args.get('option')}, {args.get('value')}"
