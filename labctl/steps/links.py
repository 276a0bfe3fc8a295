"""Steps on links: change an impairment now, or make a transient forwarding loop between routers.

Both change the lab beyond the run; the run's ``LabChanges`` records every change
and puts the links back as they were when the run ends.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from ..model import Impairment, LinkName, LoopMatch, NodeName
from ..units import Duration
from .base import Names, StepKind, Strict, register

LONGEST_LOOP = 3600  # seconds


class ImpairStep(Impairment):
    """Change a link's impairment now: these settings replace what is in force in those directions
    (every endpoint's egress, or only `from`'s); `clear: true` removes it. Undone when the run ends."""

    link: LinkName = Field(description="The link to impair.")
    clear: bool = Field(False, description="Remove the impairment instead (in that direction, or every one).")


class LoopStep(Strict):
    """A transient forwarding loop between two routers; it heals by itself after `for`, while the steps go on."""

    routers: list[NodeName] = Field(min_length=2, max_length=2, description="Two routers that share a link.")
    for_: Duration = Field(alias="for", description="How long the loop lasts, e.g. 2s.")
    match: LoopMatch | None = Field(None, description="Only packets matching this circulate (default: every forwarded packet).")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@register
class ImpairKind(StepKind):
    key, model, on_node = "impair", ImpairStep, False

    def check(self, action: ImpairStep, step: Any, here: tuple, names: Names) -> None:
        lab, where = names.lab, self.where(here)
        links = {link.name: link for link in lab.links}
        if action.link not in links:
            raise names.error((*where, "link"), f"lab '{lab.name}' has no link '{action.link}'", hint=f"links: {', '.join(links)}")
        link = links[action.link]
        if action.from_ is not None and action.from_ not in link.endpoints:
            raise names.error((*where, "from"), f"'{action.from_}' is not an endpoint of link '{link.name}'",
                              hint=f"endpoints: {', '.join(link.endpoints)}")
        if action.clear and not action.is_empty():
            raise names.error((*where, "clear"), "clear removes the impairment: give settings or clear, not both")
        if not action.clear and action.is_empty():
            raise names.error(where, "an impair step needs settings (delay, loss, rate, ...) or clear: true")
        problem = action.problem()
        if problem is not None:
            raise names.error((*where, problem[0]), problem[1])

    def perform(self, action: ImpairStep, step: Any, run) -> dict:
        return run.changes.impair(run.step_index, action)


@register
class LoopKind(StepKind):
    key, model, on_node, on_ladder = "loop", LoopStep, False, False

    def check(self, action: LoopStep, step: Any, here: tuple, names: Names) -> None:
        lab, where = names.lab, self.where(here)
        for k, router in enumerate(action.routers):
            if router not in lab.nodes:
                raise names.error((*where, "routers", k), f"unknown node '{router}'", hint=f"nodes: {', '.join(lab.nodes)}")
            if lab.nodes[router].role != "router":
                raise names.error((*where, "routers", k), f"'{router}' is a host, and only routers forward: a loop needs two routers",
                                  hint=f"routers: {', '.join(lab.routers()) or 'none'}")
        a, b = action.routers
        if a == b:
            raise names.error((*where, "routers"), "a loop needs two different routers")
        if not any(a in link.endpoints and b in link.endpoints for link in lab.links):
            raise names.error((*where, "routers"), f"routers '{a}' and '{b}' share no link, so they cannot send packets back and forth")
        if not 0 < action.for_ <= LONGEST_LOOP:
            raise names.error((*where, "for"), "a loop lasts more than 0 s and at most an hour")
        if action.match:
            names.endpoint(action.match.from_, (*where, "match", "from"))
            names.endpoint(action.match.to, (*where, "match", "to"))

    def perform(self, action: LoopStep, step: Any, run) -> dict:
        return run.changes.loop(run.step_index, action)
