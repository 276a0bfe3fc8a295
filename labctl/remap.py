"""Fixed subnets of a lab file, moved for an instance: one lab up several times at once.

A lab file may fix a link's subnet (``subnet: 10.250.2.0/24``) and addresses in it; a
second instance of that lab cannot have the same ones on the same host. The planner
moves each fixed subnet of a non-default instance to a free one of the same size, and
``SubnetRemap`` carries every address of the lab and of its scenarios along, keeping
each one's offset in its subnet: node addresses, routes (their destination and next
hop), the names in /etc/hosts (made from the plan), expectations and step arguments
that name an address (``connect: {to: 10.250.2.10}``, a rule's ``to:``, an ``exec``
command line). This module is the only owner of that mapping; run.json records it,
so a report can say which address stood for which.

Pure: it takes the subnets in use and gives a mapping; the default instance has none.
What is *inside* files copied into nodes is not rewritten: name peers by node name there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Iterable, Mapping

from .instances import DEFAULT_INSTANCE

# A dotted quad, with a prefix length if it has one, not part of a longer run of digits and dots.
_ADDRESS = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?(?!\d|\.\d)")


@dataclass(frozen=True)
class SubnetRemap:
    """Which fixed subnet of the lab file an instance holds instead (empty: the lab's own)."""

    instance: str = DEFAULT_INSTANCE
    moves: tuple[tuple[IPv4Network, IPv4Network], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.moves)

    def address(self, address: IPv4Address) -> IPv4Address:
        for old, new in self.moves:
            if address in old:
                return IPv4Address(int(new.network_address) + int(address) - int(old.network_address))
        return address

    def network(self, network: IPv4Network) -> IPv4Network:
        """A network inside a moved subnet, moved with it; any other as it is."""
        for old, new in self.moves:
            if network.subnet_of(old):
                return IPv4Network((int(new.network_address) + int(network.network_address) - int(old.network_address),
                                    network.prefixlen))
        return network

    def text(self, text: str) -> str:
        """Every address (and network) in moved subnets within ``text``, moved; the rest unchanged."""
        if not self.moves or "." not in text:
            return text

        def moved(match: re.Match) -> str:
            try:
                address = IPv4Address(match.group(1))
            except ValueError:
                return match.group(0)
            if match.group(2) is None:
                return str(self.address(address))
            try:
                network = IPv4Network(f"{address}/{match.group(2)}", strict=False)
            except ValueError:
                return match.group(0)
            if not any(network.subnet_of(old) for old, _ in self.moves):
                return match.group(0)  # a wider network (a summary route, a pool): not one of the lab's subnets
            return f"{self.address(address)}/{match.group(2)}"

        return _ADDRESS.sub(moved, text)

    def value(self, data: Any) -> Any:
        """Every string in a JSON-like structure (dicts, lists), keys included, through ``text``."""
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {self.value(k): self.value(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.value(v) for v in data]
        return data

    def covering(self, network: IPv4Network) -> IPv4Network | None:
        """A moved subnet that ``network`` covers without being inside it (it cannot move with it)."""
        for old, _ in self.moves:
            if old.subnet_of(network) and old != network:
                return old
        return None

    def to_json(self) -> dict:
        return {"instance": self.instance, "subnets": {str(old): str(new) for old, new in self.moves}}


def allocate(instance: str, fixed: Iterable[IPv4Network], taken: Iterable[IPv4Network], pool: IPv4Network,
             current: Mapping[IPv4Network, IPv4Network] | None = None) -> SubnetRemap:
    """Where an instance's fixed subnets go: for the default instance, nowhere (the lab file's own).

    Any other takes, for each fixed subnet, the one it holds now (``current``: fixed -> held) while
    that is still free and of the same size, else the highest free one of the same size in
    ``pool`` (pool links are allocated from the top too, and built-in labs fix theirs near the
    bottom of the default pool). ``taken``: subnets other networks hold. Raises ``LookupError``
    naming the subnet that found no room.
    """
    fixed = list(dict.fromkeys(fixed))
    if instance == DEFAULT_INSTANCE or not fixed:
        return SubnetRemap(instance)
    taken = list(taken)
    moves: dict[IPv4Network, IPv4Network] = {}
    for old, held in (current or {}).items():
        if old in fixed and held.prefixlen == old.prefixlen and not any(held.overlaps(t) for t in taken):
            moves[old] = held
            taken.append(held)
    for old in fixed:
        if old in moves:
            continue
        if old.prefixlen < pool.prefixlen:
            raise LookupError(f"subnet {old} is larger than the subnet pool {pool}")
        for candidate in reversed(list(pool.subnets(new_prefix=old.prefixlen))):
            if not any(candidate.overlaps(t) for t in taken):
                moves[old] = candidate
                taken.append(candidate)
                break
        else:
            raise LookupError(f"no free /{old.prefixlen} left in the subnet pool {pool} for subnet {old}")
    return SubnetRemap(instance, tuple((old, moves[old]) for old in fixed))


# --- a lab and its scenarios, moved ------------------------------------------------------------

def fixed_subnets(lab) -> list[IPv4Network]:
    return [link.subnet for link in lab.links if link.subnet is not None]


def remap_lab(loaded, remap: SubnetRemap):
    """The lab (a ``LoadedLab``) with every address in a moved subnet moved; its lines stay the file's."""
    import dataclasses

    from .model import Lab

    if not remap:
        return loaded
    lab = loaded.lab
    for name, node in lab.nodes.items():
        for k, route in enumerate(node.routes or []):
            if route.to != "default" and (old := remap.covering(IPv4Network(route.to))) is not None:
                raise loaded.error(("nodes", name, "routes", k, "to"),
                                   f"route to {route.to} covers the fixed subnet {old}, which instance '{remap.instance}' "
                                   "moves to a subnet of its own: the route cannot move with it",
                                   hint="route to each of the lab's subnets instead")
    data = lab.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"subnet_pool"})
    moved = remap.value(data)
    if lab.subnet_pool is not None:
        moved["subnet_pool"] = str(lab.subnet_pool)
    return dataclasses.replace(loaded, lab=Lab.model_validate(moved))


def remap_scenario(one, remap: SubnetRemap):
    """A ``LoadedScenario`` with every address in a moved subnet moved (steps and expectations)."""
    import dataclasses

    from .scenario import Scenario

    if not remap:
        return one
    data = one.scenario.model_dump(mode="json", by_alias=True, exclude_none=True)
    return dataclasses.replace(one, scenario=Scenario.model_validate(remap.value(data)))
