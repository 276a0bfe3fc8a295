"""Packet rules on a node: which packets (a match), what to do to them, and releasing held ones.

``Match`` is also what expectations on segments say, so the words are the same
in a rule and in the expectation that checks what it did.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal

from pydantic import ConfigDict, Field

from ..units import MAX_COUNT, Count, PortOrAny, Seq32, TcpFlags

from ..agent.rules import flows
from ..units import Duration
from .base import Names, StepKind, Strict, register

RULE_TIMEOUT = 10.0  # seconds for the actor to add, remove or release a rule


class Match(Strict):
    """Which packets a rule (or an `after` context) means. Every given field must match."""

    from_: str | None = Field(None, alias="from", description="Sender: a node name or IPv4 address.")
    to: str | None = Field(None, description="Receiver: a node name or IPv4 address.")
    flags: TcpFlags | None = None
    sport: PortOrAny | None = None
    dport: PortOrAny | None = None
    payload: bool | str | None = Field(None, description="true: has payload; false: none; text: payload contains it.")
    seq: Seq32 | None = Field(None, description="Relative sequence number (0 = the ISN of its connection).")
    ack: Seq32 | None = Field(None, description="Relative acknowledgment number (1 acknowledges the peer's SYN).")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Rule(Match):
    action: Literal["drop", "delay", "duplicate", "hold", "watch"]
    after: Match | None = Field(None, description="Only after a packet matching this has been seen (context).")
    count: Count = Field(1, description="How many packets the action applies to (0: all).")
    nth: int = Field(1, ge=1, le=MAX_COUNT, description="Start acting at the n-th matching packet.")
    delay: Duration | None = Field(None, description="For action delay: how long to hold each packet.")
    keep: Literal["packet", "copy"] = Field("packet", description="For hold: keep the packet (it is not delivered) or a copy (it is).")


class Rewrite(Strict):
    seq: Literal["shift"] | Annotated[int, Field(ge=-(2**32 - 1), le=2**32 - 1)] | None = Field(None, description="'shift': move seq/ack relative to the newest connection on the same 4-tuple; a number: add it.")
    strip_timestamps: bool = Field(False, description="Replace the TCP timestamps option with NOPs.")


class Release(Strict):
    rule: str = Field(description="The hold rule whose packets to send.")
    rewrite: Rewrite | None = None
    copy_: bool = Field(False, alias="copy", description="Send a copy and keep the held packet.")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def addressed_rule(rule: Rule, addresses_of: Callable[[str | None], list[str] | None]) -> dict:
    """The rule as the agent takes it: ``from``/``to`` (its own and its context's) as the addresses they stand for."""
    def addressed(match: Match) -> dict:
        spec = match.model_dump(by_alias=True)
        spec["from"], spec["to"] = addresses_of(match.from_), addresses_of(match.to)
        return spec

    spec = addressed(rule)
    if rule.after:
        spec["after"] = addressed(rule.after)
    return spec


def check_match(match: Match, names: Names, where: tuple) -> None:
    names.endpoint(match.from_, (*where, "from"))
    names.endpoint(match.to, (*where, "to"))


@register
class RuleStep(StepKind):
    key, model = "rule", Rule

    def check(self, action: Rule, step: Any, here: tuple, names: Names) -> None:
        check_match(action, names, self.where(here))
        if action.after:
            check_match(action.after, names, self.where(here, "after"))
        if action.action == "delay" and action.delay is None:
            raise names.error(self.where(here), "a delay rule needs `delay:`")
        if step.as_:
            names.rules[step.as_] = (step.node, action.action)

    def actor_config(self, action: Rule, step: Any, addresses_of) -> dict:
        # The rule engine starts with the actor, so it sees each connection's SYNs (it numbers
        # sequence spaces from them), and only the flows this rule names are diverted to it.
        return {"rules": True, "rule_flows": flows(addressed_rule(action, addresses_of))}

    def perform(self, action: Rule, step: Any, run) -> dict:
        rule = addressed_rule(action, run.addresses_of)
        name = step.as_ or f"rule{len(run.rule_nodes) + 1}"
        run.rule_nodes[name] = step.node
        return run.call(step, "rule", {"name": name, "rule": rule}, RULE_TIMEOUT)

    def reads_fields(self, args: dict) -> str:
        return str(args.get("action") or "")


def made_here(name: str, step: Any, names: Names, where: tuple, here: tuple) -> None:
    """``name`` is a rule an earlier step made on this step's node."""
    if name not in names.rules:
        raise names.error(where, f"no rule named '{name}' was made by an earlier step")
    if names.rules[name][0] != step.node:
        raise names.error((*here, "node"), f"rule '{name}' lives on node '{names.rules[name][0]}'")


@register
class UnruleStep(StepKind):
    key, model, description = "unrule", str, "Remove a rule by name."

    def check(self, action: str, step: Any, here: tuple, names: Names) -> None:
        made_here(action, step, names, self.where(here), here)

    def perform(self, action: str, step: Any, run) -> dict:
        return run.call(step, "unrule", {"name": action}, RULE_TIMEOUT)


@register
class ReleaseStep(StepKind):
    key, model = "release", Release

    def check(self, action: Release, step: Any, here: tuple, names: Names) -> None:
        if action.rule in names.rules and names.rules[action.rule][1] != "hold":
            raise names.error(self.where(here, "rule"),
                              f"rule '{action.rule}' is a {names.rules[action.rule][1]} rule; only hold rules keep packets")
        made_here(action.rule, step, names, self.where(here), here)

    def perform(self, action: Release, step: Any, run) -> dict:
        args = {"rule": action.rule, "rewrite": action.rewrite.model_dump() if action.rewrite else None, "copy": action.copy_}
        return run.call(step, "release", args, RULE_TIMEOUT)

    def reads_fields(self, args: dict) -> str:
        return str(args.get("rule") or "")
