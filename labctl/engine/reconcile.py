"""What an engine must change to hold exactly a plan: the same answer for every engine.

An object is kept when its spec hash (recorded by the engine beside it) is the plan's, and
(for a node) it runs, says it is configured, and is attached to no link that is replaced; everything else goes and
comes again. Engines only read what they hold and carry out the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..plan import LabPlan, LinkPlan, NodePlan


@dataclass(frozen=True)
class Held:
    """A lab object as the engine holds it: its recorded spec hash, whether it runs, its links."""

    spec: str
    running: bool = True
    links: frozenset[str] = frozenset()
    configured: bool = True  # its agent says its setup finished (a killed `up` leaves nodes that did not)


@dataclass(frozen=True)
class Changes:
    stale_links: tuple[str, ...]     # held, to remove (changed or no longer in the lab)
    stale_nodes: tuple[str, ...]
    new_links: tuple[LinkPlan, ...]  # to create (absent or stale)
    new_nodes: tuple[NodePlan, ...]
    kept_links: tuple[LinkPlan, ...]
    kept_nodes: tuple[NodePlan, ...]


def changes(plan: LabPlan, image: str, links: Mapping[str, Held], nodes: Mapping[str, Held]) -> Changes:
    wanted_links = {link.name: link for link in plan.links}
    wanted_nodes = {node.name: node for node in plan.nodes}
    stale_links = {name for name, held in links.items()
                   if name not in wanted_links or held.spec != wanted_links[name].spec_hash()}
    stale_nodes = {name for name, held in nodes.items()
                   if name not in wanted_nodes or held.spec != wanted_nodes[name].spec_hash(image)
                   or not held.running or not held.configured or held.links & stale_links}
    return Changes(
        stale_links=tuple(name for name in links if name in stale_links),
        stale_nodes=tuple(name for name in nodes if name in stale_nodes),
        new_links=tuple(link for link in plan.links if link.name not in links or link.name in stale_links),
        new_nodes=tuple(node for node in plan.nodes if node.name not in nodes or node.name in stale_nodes),
        kept_links=tuple(link for link in plan.links if link.name in links and link.name not in stale_links),
        kept_nodes=tuple(node for node in plan.nodes if node.name in nodes and node.name not in stale_nodes),
    )
