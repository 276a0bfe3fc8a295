"""What a step kind is, and the one registry every part of labctl finds kinds in.

A step kind owns everything about one scenario action (a socket call, a
packet rule, a sysctl, a wait): the model of what a user writes, the check
of its names against the lab, what it does during a run (usually one call
to a node's actor), and how it reads in the timeline and on the ladder.
The scenario model, the loader, the runner, the analysis and the report
look kinds up here and know no kind by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ..model import Lab
    from ..run.dispatch import StepDispatch

FieldPath = tuple  # ("steps", 3, "connect", "to"): where in the scenario file

TCP_STATES = ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSED",
              "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV")
TcpState = Literal["ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSED",
                   "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class Names:
    """What a check sees: the lab, and the names the steps before this one made."""

    lab: "Lab"
    error: Callable[..., Exception]  # (path, message, hint=None) -> the error pointing at that field
    sockets: dict[str, str] = field(default_factory=dict)  # socket name -> its node
    rules: dict[str, tuple[str, str]] = field(default_factory=dict)  # rule name -> (node, action)
    steps: dict[str, Any] = field(default_factory=dict)  # `as` name -> step

    def endpoint(self, value: str | None, where: FieldPath) -> None:
        """``value`` is a node of the lab or an IPv4 address (or not given)."""
        if value is None or value in self.lab.nodes:
            return
        try:
            IPv4Address(value)
        except ValueError:
            raise self.error(where, f"'{value}' is neither a node of lab '{self.lab.name}' nor an IPv4 address",
                             hint=f"nodes: {', '.join(self.lab.nodes)}") from None

    def socket(self, name: str, node: str | None, where: FieldPath) -> None:
        """An earlier step on ``node`` made a socket called ``name``."""
        if name not in self.sockets:
            raise self.error(where, f"no socket named '{name}' was made by an earlier step",
                             hint="name it with `as:` on listen, connect or accept")
        if self.sockets[name] != node:
            raise self.error(where, f"socket '{name}' belongs to node '{self.sockets[name]}', not '{node}'")


class StepKind:
    """One kind of step. Subclass it in a module of this package and decorate it with ``@register``.

    ``key`` is the step's YAML key (``close: c``) and the ``kind`` of its record in
    steps.jsonl; ``model`` the type of what follows the key.
    """

    key: ClassVar[str]
    model: ClassVar[Any]
    description: ClassVar[str | None] = None  # for the JSON Schema, when the model has none
    on_node: ClassVar[bool] = True  # the step needs `node:`
    makes_socket: ClassVar[bool] = False  # its `as:` names a socket (and is required)
    on_ladder: ClassVar[bool] = True  # drawn as a call on the ladder (waits and sleeps are bookkeeping)

    def where(self, step_path: FieldPath, *rest: str | int) -> FieldPath:
        return (*step_path, self.key, *rest)

    def check(self, action: Any, step: Any, here: FieldPath, names: Names) -> None:
        """Refuse, before anything runs, what cannot work in this lab (``here``: the step's path)."""

    def actor_config(self, action: Any, step: Any, addresses_of: Callable[[str | None], list[str] | None]) -> dict:
        """What the actor on the step's node must set up before any step runs.

        ``addresses_of``: a node name (or address) as the addresses it stands for, None for None.
        A list value adds to the same key's list from other steps."""
        return {}

    def perform(self, action: Any, step: Any, run: "StepDispatch") -> dict:
        """Do the step; the reply is recorded in steps.jsonl (ok, errno, result, t_start, t_end)."""
        raise NotImplementedError(self.key)

    def reads(self, args: Any) -> str:
        """What goes between the parentheses of ``close(c)``; ``args``: the action as steps.jsonl keeps it."""
        if isinstance(args, dict):
            return self.reads_fields(args)
        return "" if args is None or isinstance(args, bool) else str(args)

    def reads_fields(self, args: dict) -> str:
        return ""


STEP_KINDS: dict[str, StepKind] = {}  # in the order of the scenario file format's fields


def register(cls: type[StepKind]) -> type[StepKind]:
    if cls.key in STEP_KINDS:
        raise ValueError(f"step kind '{cls.key}' registered twice")
    STEP_KINDS[cls.key] = cls()
    return cls


def step_kind(key: str) -> StepKind:
    """The kind registered as ``key``; an unknown one (a run directory from another version) reads plainly."""
    return STEP_KINDS.get(key) or _UNKNOWN


_UNKNOWN = StepKind()
