"""Link impairments and routing loops on a lab that is up: from a plan to agent commands.

One code path for all three ways to impair a link (the lab file at ``up``, ``labctl impair``,
a scenario step): settings are validated as an ``Impairment`` (the lab file's model), turned
into the agent's settings, and each direction is applied on the node that sends onto the
link (``labctl/agent/impair.py`` picks netem or the fallback there and records which ran).
Routing loops are set up in both routers at one instant and heal themselves
(``labctl/agent/loop.py``).
"""

from __future__ import annotations

import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address
from typing import Any, Mapping

from pydantic import ValidationError

from . import nodes as agent
from .agent.protocol import MECHANISM_ENV, MECHANISMS, Impair, InterfaceWish, Loop
from .engine import Engine
from .errors import UserError
from .model import Impairment, LoopMatch, describe_settings
from .plan import LabPlan
# Both routers hook their loop rules in at one instant this far ahead: time for two execs to start.
LOOP_LEAD = 0.6
MAX_LOOP = 3600.0


@dataclass(frozen=True)
class Direction:
    """What is in force on one direction of a link: the egress of ``node`` onto it."""

    link: str
    node: str
    settings: dict
    mechanism: str | None
    parts: dict = field(default_factory=dict)
    origin: str | None = None
    since: float | None = None
    netem_error: str | None = None
    changed: bool = False  # this call changed it (a lab file's wish already in force is left alone)

    @property
    def summary(self) -> str:
        if not self.settings:
            return f"{self.link} from {self.node}: none"
        how = ", ".join(f"{part} by {mechanism}" for part, mechanism in self.parts.items())
        return f"{self.link} from {self.node}: {describe_settings(self.settings)} [{self.mechanism}: {how}]"

    def to_json(self) -> dict:
        return {**asdict(self), "summary": self.summary, "description": describe_settings(self.settings)}


@dataclass(frozen=True)
class LoopResult:
    routers: tuple[str, str]
    link: str
    started: float
    heal_at: float
    match: dict | None
    id: str

    @property
    def summary(self) -> str:
        what = f" for {_describe_match(self.match)}" if self.match else ""
        return f"loop {self.routers[0]} <-> {self.routers[1]} over {self.link}{what} for {self.heal_at - self.started:.3g} s"

    def to_json(self) -> dict:
        return {**asdict(self), "routers": list(self.routers), "seconds": round(self.heal_at - self.started, 6), "summary": self.summary}


def requested_mechanism() -> str:
    """``$LABCTL_IMPAIR_MECHANISM``: auto (netem where the kernel has it), netem, or fallback."""
    mechanism = os.environ.get(MECHANISM_ENV) or "auto"
    if mechanism not in MECHANISMS:
        raise UserError(f"{MECHANISM_ENV}={mechanism!r} is not one of {', '.join(MECHANISMS)}")
    return mechanism


def parse_impairment(settings: Mapping[str, Any] | Impairment | None, from_node: str | None = None) -> Impairment:
    """Settings as a user writes them ({"delay": "50ms", "loss": "5%"}) -> a checked ``Impairment``."""
    if isinstance(settings, Impairment):
        imp = settings
    else:
        values = {k.replace("-", "_"): v for k, v in (settings or {}).items() if v is not None}
        try:
            imp = Impairment.model_validate({**values, **({"from": from_node} if from_node else {})})
        except ValidationError as exc:
            first = exc.errors()[0]
            name = ".".join(str(p) for p in first["loc"] if not isinstance(p, int)) or "settings"
            message = str(first["ctx"]["error"]) if first["type"] == "value_error" and "ctx" in first else first["msg"]
            if first["type"] == "extra_forbidden":
                message = f"unknown setting '{name}'; known: {', '.join(f for f in Impairment.model_fields if f != 'from_')}"
            raise UserError(f"impairment {name}: {message}") from None
    problem = imp.problem()
    if problem is not None:
        raise UserError(f"impairment {problem[0]}: {problem[1]}")
    return imp


def _link(plan: LabPlan, link: str):
    try:
        return plan.link(link)
    except KeyError:
        raise UserError(f"lab '{plan.lab}' has no link '{link}'", hint=f"links: {', '.join(l.name for l in plan.links)}") from None


def senders(plan: LabPlan, link: str, from_node: str | None) -> list[str]:
    """The nodes whose egress onto ``link`` a change touches: ``from_node``, or every endpoint."""
    endpoints = list(_link(plan, link).endpoints)
    if from_node is None:
        return endpoints
    if from_node not in endpoints:
        raise UserError(f"'{from_node}' is not an endpoint of link '{link}'", hint=f"endpoints: {', '.join(endpoints)}")
    return [from_node]


def address_on(plan: LabPlan, node: str, link: str) -> str:
    return next(str(i.address.ip) for i in plan.node(node).interfaces if i.link == link)


def peer_address(plan: LabPlan, link: str, node: str) -> str | None:
    """On a link with two endpoints, the other one's address: where every packet ``node`` sends onto it goes."""
    endpoints = _link(plan, link).endpoints
    if len(endpoints) != 2:
        return None
    return address_on(plan, endpoints[1] if endpoints[0] == node else endpoints[0], link)


def apply(engine: Engine, plan: LabPlan, wanted: Mapping[str, Mapping[str, dict]], origin: str,
          force: bool = False) -> list[Direction]:
    """``wanted``: node -> {link: agent settings ({} clears)}; one agent call per node, in parallel.

    ``origin``: lab (the lab file: applied only where its wish changed, unless ``force``), runtime or scenario."""
    mechanism = requested_mechanism()

    def one(node: str) -> list[Direction]:
        interfaces = {link: InterfaceWish(settings, peer_address(plan, link, node)) for link, settings in wanted[node].items()}
        reply = agent.impair(engine, plan.key, node, Impair(interfaces, origin, mechanism, force))
        return [_direction(node, state) for state in reply.interfaces.values()]

    nodes = [n for n in wanted if wanted[n]]
    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
        return [d for found in pool.map(one, nodes) for d in found]


def _direction(node: str, state: dict) -> Direction:
    return Direction(state.get("interface", "?"), node, state.get("settings") or {}, state.get("mechanism"),
                     state.get("parts") or {}, state.get("origin"), state.get("since"), state.get("netem_error"),
                     bool(state.get("changed")))


def set_link(engine: Engine, plan: LabPlan, link: str, from_node: str | None, imp: Impairment | None,
             origin: str = "runtime") -> list[Direction]:
    """Set (or with ``imp`` None, clear) the impairment of one link, in one direction or all."""
    nodes = senders(plan, link, from_node)
    settings = imp.settings() if imp is not None else {}
    return apply(engine, plan, {node: {link: settings} for node in nodes}, origin)


def restore(engine: Engine, plan: LabPlan, previous: list[Direction]) -> list[Direction]:
    """Put directions back as they were (settings and origin), e.g. after a scenario changed them."""
    by_origin: dict[str, dict[str, dict[str, dict]]] = {}
    for d in previous:
        by_origin.setdefault(d.origin or "runtime", {}).setdefault(d.node, {})[d.link] = d.settings
    result = []
    for origin, wanted in by_origin.items():
        result += apply(engine, plan, wanted, origin, force=True)
    return result


def apply_lab(engine: Engine, plan: LabPlan, fresh: set[str] = frozenset()) -> list[Direction]:
    """What the lab file asks, on every node (``fresh``: nodes just created, which have nothing in force).

    Each interface is changed only where the file's wish changed since it was last applied,
    so `up` twice changes nothing and a runtime change stays until the file changes.
    """
    wanted: dict[str, dict[str, dict]] = {}
    for node in plan.nodes:
        asked = {i.link: i.as_dict() for i in node.impairments}
        if node.name in fresh and not asked:
            continue
        wanted[node.name] = {i.link: asked.get(i.link, {}) for i in node.interfaces}
    return [d for d in apply(engine, plan, wanted, "lab") if d.settings]


def in_force(inspected: Mapping[str, dict]) -> list[Direction]:
    """Directions with an impairment in force, from each node's ``inspect``."""
    return [_direction(node, state) for node, data in inspected.items() for state in data.get("impairments") or []]


def read_in_force(engine: Engine, plan: LabPlan, nodes: list[str] | None = None) -> list[Direction]:
    names = nodes or [n.name for n in plan.nodes]

    def one(node: str) -> tuple[str, dict]:
        return node, agent.inspect(engine, plan.key, node).to_json()

    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        return in_force(dict(pool.map(one, names)))


# --- routing loops ------------------------------------------------------------------------------

def parse_match(match: Mapping[str, Any] | LoopMatch | None) -> LoopMatch | None:
    if match is None or isinstance(match, LoopMatch):
        return match
    values = {k: v for k, v in match.items() if v is not None}
    if not values:
        return None
    try:
        return LoopMatch.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "match"
        raise UserError(f"loop match {name}: {first['msg']}") from None


def _addresses(plan: LabPlan, who: str | None, what: str) -> list[str] | None:
    if who is None:
        return None
    try:
        return [str(IPv4Address(who))]
    except ValueError:
        pass
    try:
        return [str(i.address.ip) for i in plan.node(who).interfaces]
    except KeyError:
        raise UserError(f"loop match {what}: '{who}' is neither a node of lab '{plan.lab}' nor an IPv4 address",
                        hint=f"nodes: {', '.join(n.name for n in plan.nodes)}") from None


def loop_link(plan: LabPlan, r1: str, r2: str) -> str:
    """The link two routers share (the first in the lab file's order); user errors for the rest."""
    names = [n.name for n in plan.nodes]
    for router in (r1, r2):
        if router not in names:
            raise UserError(f"lab '{plan.lab}' has no node '{router}'", hint=f"nodes: {', '.join(names)}")
        if plan.node(router).role != "router":
            raise UserError(f"'{router}' is a host, and only routers forward: a loop needs two routers",
                            hint=f"routers: {', '.join(n.name for n in plan.nodes if n.role == 'router') or 'none'}")
    if r1 == r2:
        raise UserError("a loop needs two different routers")
    for link in plan.links:
        if r1 in link.endpoints and r2 in link.endpoints:
            return link.name
    raise UserError(f"routers '{r1}' and '{r2}' share no link, so they cannot send packets back and forth")


def _match_payload(plan: LabPlan, match: LoopMatch | None) -> dict | None:
    if match is None:
        return None
    data = match.model_dump(by_alias=True, exclude_none=True)
    data["from"] = _addresses(plan, match.from_, "from")
    data["to"] = _addresses(plan, match.to, "to")
    return {k: v for k, v in data.items() if v is not None}


def _describe_match(match: dict | None) -> str:
    if not match:
        return "every packet"
    return " ".join(f"{k} {v}" for k, v in match.items())


def start_loop(engine: Engine, plan: LabPlan, r1: str, r2: str, seconds: float,
               match: Mapping[str, Any] | LoopMatch | None = None) -> LoopResult:
    """Make ``r1`` and ``r2`` send matching packets to each other for ``seconds``; both heal by themselves."""
    link = loop_link(plan, r1, r2)
    if not 0 < seconds <= MAX_LOOP:
        raise UserError(f"a loop lasts more than 0 s and at most {MAX_LOOP:g} s, not {seconds:g} s")
    parsed = parse_match(match)
    payload_match = _match_payload(plan, parsed)
    subnets = [str(l.subnet) for l in plan.links if l.name != link]
    ident = secrets.token_hex(4)
    start_at = time.time() + LOOP_LEAD
    heal_at = start_at + seconds

    def one(pair: tuple[str, str]):
        me, other = pair
        request = Loop("start", ident, link, address_on(plan, other, link), tuple(str(i.address.ip) for i in plan.node(other).interfaces),
                       tuple(subnets), payload_match, start_at, heal_at)
        return agent.loop(engine, plan.key, me, request)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(one, pair) for pair in [(r1, r2), (r2, r1)]]
        failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        # Half a loop is no loop: the router that did start heals now, not at heal_at.
        try:
            heal_loop(engine, plan, [r1, r2])
        finally:
            raise failed[0]
    replies = [f.result() for f in futures]
    started = max(reply.started for reply in replies)
    return LoopResult((r1, r2), link, started, heal_at, parsed.model_dump(by_alias=True, exclude_none=True) if parsed else None, ident)


def heal_loop(engine: Engine, plan: LabPlan, routers: list[str] | None = None) -> dict[str, dict]:
    """Heal any loop in force on these routers (every router by default), now."""
    names = routers or [n.name for n in plan.nodes if n.role == "router"]

    def one(router: str) -> tuple[str, dict]:
        return router, agent.loop(engine, plan.key, router, Loop("heal")).to_json()

    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        return dict(pool.map(one, names))


def loop_states(engine: Engine, plan: LabPlan, routers: list[str]) -> dict[str, dict]:
    def one(router: str) -> tuple[str, dict]:
        return router, agent.loop(engine, plan.key, router, Loop("status")).state or {}

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(routers)))) as pool:
        return dict(pool.map(one, routers))
