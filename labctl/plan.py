"""Lab model -> a plan: every subnet, address, route and name a lab needs.

Pure: the only outside fact it takes is the set of subnets already in use
(so allocation skips them). The same lab and the same subnets in use give
the same plan, which is what makes ``up`` idempotent. It speaks of the lab
(nodes, links, addresses); what an engine calls its objects is the engine's.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Mapping

from .agent import protocol
from .instances import DEFAULT_INSTANCE, lab_key
from .loader import LoadedLab, forwarding_paths, gateway_address
from .model import Lab
from .nodefiles import FileSource, resolve_source
from .remap import SubnetRemap, allocate, fixed_subnets, remap_lab

DEFAULT_POOL = IPv4Network("10.250.0.0/16")
POOL_PREFIX = 24


@dataclass(frozen=True)
class Interface:
    link: str
    name: str  # interface name inside the node: the link's name
    address: IPv4Interface


@dataclass(frozen=True)
class RoutePlan:
    to: str  # "default" or CIDR
    via: IPv4Address
    dev: str


@dataclass(frozen=True)
class InterfaceImpairment:
    """What a node's egress onto one link should suffer (agent settings: delay_ms, loss_pct, ...)."""

    link: str
    interface: str
    settings: tuple[tuple[str, float | int | str], ...]

    def as_dict(self) -> dict:
        return dict(self.settings)


@dataclass(frozen=True)
class StartupPlan:
    cmd: str
    service: bool = False
    timeout: float = 60.0

    def to_json(self) -> dict:
        return {"cmd": self.cmd, "service": self.service, "timeout": self.timeout}


@dataclass(frozen=True)
class NodePlan:
    name: str
    role: str
    image: str | None  # an image of the lab's own; None: the node image
    interfaces: tuple[Interface, ...]
    routes: tuple[RoutePlan, ...]
    hosts: tuple[tuple[str, IPv4Address], ...]  # name -> address, as /etc/hosts will say
    sysctls: tuple[tuple[str, str], ...]
    # Not part of setup() nor of the spec hash: impairments change in running nodes, never by a new container.
    impairments: tuple[InterfaceImpairment, ...] = ()
    # Nor are files and startup commands: they are refreshed in place (see labctl/provision.py).
    files: tuple[FileSource, ...] = ()
    startup: tuple[StartupPlan, ...] = ()
    packages: tuple[str, ...] = ()  # Debian packages beyond the node image: the node runs a lab image variant
    blocked: tuple[IPv4Address, ...] = ()  # the bridge addresses of its links: the host, never routed to

    def setup(self, image: str | None = None) -> protocol.Setup:
        """What the in-node agent applies after start; with the node image, the spec hash it records when done."""
        return protocol.Setup(self.name, self.role, tuple(protocol.Interface(i.name, str(i.address)) for i in self.interfaces),
                              tuple(protocol.Route(r.to, str(r.via), r.dev) for r in self.routes), dict(self.sysctls),
                              self.hosts_map(), tuple(str(a) for a in self.blocked),
                              self.spec_hash(image) if image is not None else "")

    def hosts_map(self) -> dict[str, str]:
        return {name: str(address) for name, address in self.hosts}

    def spec_hash(self, image: str) -> str:
        """Changes whenever something that needs a new node changes; ``image``: the node image,
        whose tag is a hash of the agent (a node on an image of its own carries a copy of it).

        Name entries are left out: they are rewritten in running nodes, so adding
        a node to a lab does not recreate all the others.
        """
        setup = {k: v for k, v in self.setup().to_json().items() if k not in ("hosts", "spec")}
        blob = json.dumps({"setup": setup, "image": self.image or image, "agent": image}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LinkPlan:
    name: str
    subnet: IPv4Network
    reserved: IPv4Address  # the address the engine's own end of the link takes (no node's)
    endpoints: tuple[str, ...]

    def spec_hash(self) -> str:
        return hashlib.sha256(f"{self.subnet}|{self.reserved}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LabPlan:
    lab: str
    source: str
    links: tuple[LinkPlan, ...]
    nodes: tuple[NodePlan, ...]
    params: Mapping[str, str] = field(default_factory=dict)
    instance: str = DEFAULT_INSTANCE  # one lab up several times at once: which copy (its identity: lab, source, instance)
    remap: SubnetRemap = SubnetRemap()  # where this instance holds the lab file's fixed subnets (none for the default)

    @property
    def key(self) -> str:
        """What the engine knows this lab instance by (``labctl.instances.lab_key``)."""
        return lab_key(self.lab, self.instance)

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def link(self, name: str) -> LinkPlan:
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(name)

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def subnet_pool(lab: Lab) -> IPv4Network:
    if lab.subnet_pool is not None:
        return lab.subnet_pool
    return IPv4Network(os.environ.get("LABCTL_SUBNET_POOL", str(DEFAULT_POOL)))


def plan_lab(loaded: LoadedLab, in_use: Mapping[IPv4Network, str] | None = None,
             current: Mapping[str, IPv4Network] | None = None, instance: str = DEFAULT_INSTANCE) -> LabPlan:
    """``in_use`` maps subnets other engine networks hold to their names (this lab instance's own excluded).

    ``current``: the subnets this lab's links hold now. A link without a fixed subnet keeps its
    own while it is free, so the plan of a running lab says what its nodes really have, even
    after the networks that shaped its allocation are gone.

    ``instance``: any but the default has the lab file's fixed subnets moved to free ones of
    its own, and every address in them with them (``labctl.remap``): the plan then speaks of
    the moved ones only, and says where each went (``remap``).
    """
    in_use = dict(in_use or {})
    remap = _remap(loaded, instance, in_use, current or {})
    loaded = remap_lab(loaded, remap)
    lab = loaded.lab
    subnets = _assign_subnets(loaded, in_use, current or {})
    addresses = _assign_addresses(loaded, subnets)
    links = tuple(
        LinkPlan(link.name, subnets[link.name], gateway_address(subnets[link.name]), tuple(link.endpoints))
        for link in lab.links
    )
    _check_no_route_to_bridges(loaded, links)
    nodes = tuple(_plan_node(lab, name, subnets, addresses, _node_files(loaded, name)) for name in lab.nodes)
    # The source is part of the lab's identity on the engine: the same file from any directory.
    return LabPlan(lab.name, str(loaded.path.resolve()) if loaded.path else "", links, nodes, dict(loaded.params), instance, remap)


def _remap(loaded: LoadedLab, instance: str, in_use: Mapping[IPv4Network, str], current: Mapping[str, IPv4Network]) -> SubnetRemap:
    """Where a non-default instance holds the lab file's fixed subnets: never on another network's,
    nor on the lab file's own (they stay free for the default instance)."""
    fixed = fixed_subnets(loaded.lab)
    held = {link.subnet: current[link.name] for link in loaded.lab.links if link.subnet is not None and link.name in current}
    try:
        return allocate(instance, fixed, [*in_use, *fixed], subnet_pool(loaded.lab), held)
    except LookupError as exc:
        raise loaded.error(("links",), f"instance '{instance}': {exc}",
                           hint="set subnet_pool: in the lab or LABCTL_SUBNET_POOL, or take instances down") from None


def _check_no_route_to_bridges(loaded: LoadedLab, links: tuple[LinkPlan, ...]) -> None:
    """A route via a bridge address would lead out of the lab to the host (pool subnets are only known here)."""
    bridges = {str(link.reserved): link.name for link in links}
    for name, node in loaded.lab.nodes.items():
        for k, route in enumerate(node.routes or []):
            if route.via in bridges:
                raise loaded.error(("nodes", name, "routes", k, "via"),
                                   f"next hop {route.via} is the bridge address of link '{bridges[route.via]}': the host, outside the lab",
                                   hint="route via a lab node (a role: router) instead")


def _assign_subnets(loaded: LoadedLab, in_use: Mapping[IPv4Network, str],
                    current: Mapping[str, IPv4Network]) -> dict[str, IPv4Network]:
    lab = loaded.lab
    taken = dict(in_use)
    subnets: dict[str, IPv4Network] = {}
    for i, link in enumerate(lab.links):
        if link.subnet is None:
            continue
        for other, owner in in_use.items():
            if link.subnet.overlaps(other):
                raise loaded.error(("links", i, "subnet"), f"subnet {link.subnet} overlaps {other} of the existing network '{owner}'",
                                   hint="choose another subnet, or remove it to allocate one from the pool")
        subnets[link.name] = link.subnet
        taken[link.subnet] = f"link {link.name}"
    pool = subnet_pool(lab)
    for link in lab.links:
        held = current.get(link.name)
        if (link.subnet is None and held is not None and held.prefixlen == max(pool.prefixlen, POOL_PREFIX)
                and held.subnet_of(pool) and not any(held.overlaps(t) for t in taken)):
            subnets[link.name] = held
            taken[held] = f"link {link.name}"
    # From the top of the pool down: built-in labs write fixed subnets near its bottom
    # (10.250.1.0/24, ...), so a pool lab up at the same time does not take them.
    candidates = reversed(list(pool.subnets(new_prefix=POOL_PREFIX))) if pool.prefixlen <= POOL_PREFIX else iter([pool])
    for i, link in enumerate(lab.links):
        if link.subnet is not None or link.name in subnets:
            continue
        for candidate in candidates:
            if not any(candidate.overlaps(t) for t in taken):
                subnets[link.name] = candidate
                taken[candidate] = f"link {link.name}"
                break
        else:
            raise loaded.error(("links", i), f"no free /{POOL_PREFIX} left in the subnet pool {pool}",
                               hint="set subnet_pool: in the lab or LABCTL_SUBNET_POOL, or take labs down")
    return subnets


def _assign_addresses(loaded: LoadedLab, subnets: Mapping[str, IPv4Network]) -> dict[tuple[str, str], IPv4Interface]:
    """(link, node) -> address. Fixed ones first; the rest numbered from .1 in endpoint order."""
    lab = loaded.lab
    result: dict[tuple[str, str], IPv4Interface] = {}
    for link in lab.links:
        subnet = subnets[link.name]
        used = set(link.addresses.values()) | {gateway_address(subnet)}
        free = (a for a in subnet.hosts() if a not in used)
        for node in link.endpoints:
            address = link.addresses.get(node) or next(free, None)
            if address is None:
                raise loaded.error(("links", lab.links.index(link)), f"subnet {subnet} has too few addresses for {len(link.endpoints)} endpoints",
                                   hint="one address per endpoint plus one for the bridge: use a larger subnet_pool prefix")
            result[(link.name, node)] = IPv4Interface(f"{address}/{subnet.prefixlen}")
    return result


def _node_files(loaded: LoadedLab, name: str) -> tuple[FileSource, ...]:
    # The loader checked every entry; resolving again gives the absolute paths.
    return tuple(FileSource(resolve_source(f.src, loaded.path, loaded.params), f.dst, f.mode) for f in loaded.lab.node_files(name))


def _plan_node(lab: Lab, name: str, subnets: Mapping[str, IPv4Network], addresses: Mapping[tuple[str, str], IPv4Interface],
               files: tuple[FileSource, ...] = ()) -> NodePlan:
    node = lab.nodes[name]
    interfaces = tuple(Interface(link.name, link.name, addresses[(link.name, name)]) for link in lab.links if name in link.endpoints)
    paths = forwarding_paths(lab, name)
    if node.routes is not None:
        routes = tuple(_explicit_route(lab, name, r.to, r.via, subnets, addresses) for r in node.routes)
    else:
        routes = _computed_routes(lab, name, paths, subnets, addresses)
    hosts = tuple((other, _address_toward(lab, name, other, paths, addresses)) for other in lab.nodes if other != name)
    # Lab links carry IPv4 only; IPv6 would fill captures with router solicitations and MLD.
    sysctls: dict[str, object] = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
    # Hosts do not forward, whatever the engine's namespace inherited: only routers carry packets on.
    sysctls["net.ipv4.ip_forward"] = "0"
    sysctls.update(node.sysctls)
    if node.role == "router":
        # Routers forward, and asymmetric paths must not be dropped by reverse-path filtering.
        # No ICMP redirects: a routing loop sends packets back out the interface they came
        # in by, and a redirect would tell the previous hop to route around it. (The kernel ORs
        # `all` with each interface's own setting, which interfaces attached before these are
        # written keep: the loop itself also drops redirects, see agent/loop.py.)
        sysctls = {**sysctls, "net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0",
                   "net.ipv4.conf.all.send_redirects": "0", "net.ipv4.conf.default.send_redirects": "0", **node.sysctls}
    return NodePlan(
        name=name, role=node.role, image=node.image, interfaces=interfaces,
        routes=routes, hosts=hosts, sysctls=tuple((k, str(v)) for k, v in sorted(sysctls.items())),
        impairments=_node_impairments(lab, name), files=files,
        startup=tuple(StartupPlan(c.cmd, c.service, c.timeout) for c in node.startup), packages=lab.node_packages(name),
        blocked=tuple(gateway_address(subnets[i.link]) for i in interfaces),
    )


def _node_impairments(lab: Lab, name: str) -> tuple[InterfaceImpairment, ...]:
    """The node's egress onto each of its links: an entry `from` it, or one without `from`."""
    result = []
    for link in lab.links:
        if name not in link.endpoints:
            continue
        for entry in link.impairments():
            if entry.from_ in (None, name) and not entry.is_empty():
                result.append(InterfaceImpairment(link.name, link.name, tuple(sorted(entry.settings().items()))))
                break
    return tuple(result)


def _shared_link(lab: Lab, a: str, b: str) -> str:
    for link in lab.links:
        if a in link.endpoints and b in link.endpoints:
            return link.name
    raise KeyError((a, b))


def _computed_routes(lab, name, paths, subnets, addresses) -> tuple[RoutePlan, ...]:
    """A route to every subnet not directly attached, via the first router on a shortest path."""
    attached = {link.name for link in lab.links if name in link.endpoints}
    routes = []
    for link in lab.links:
        if link.name in attached:
            continue
        # Only a router on that link can deliver onto it: take the nearest one
        # (paths already transit routers only; ties keep endpoint order).
        best: list[str] | None = None
        for end in link.endpoints:
            path = paths.get(end)
            if lab.nodes[end].role == "router" and path is not None and (best is None or len(path) < len(best)):
                best = path
        if best is None:
            continue
        hop = best[1]
        via_link = _shared_link(lab, name, hop)
        routes.append(RoutePlan(str(subnets[link.name]), addresses[(via_link, hop)].ip, via_link))
    return tuple(routes)


def _explicit_route(lab, name, to, via, subnets, addresses) -> RoutePlan:
    if via in lab.nodes:
        link = _shared_link(lab, name, via)
        return RoutePlan(to, addresses[(link, via)].ip, link)
    via_ip = IPv4Address(via)
    for link in lab.links:
        if name in link.endpoints and via_ip in subnets[link.name]:
            return RoutePlan(to, via_ip, link.name)
    # The loader checked the form; on-link reachability is the kernel's to judge.
    first = next(link.name for link in lab.links if name in link.endpoints)
    return RoutePlan(to, via_ip, first)


def _address_toward(lab, name, other, paths, addresses) -> IPv4Address:
    """The address of ``other`` on the link a packet from ``name`` arrives by."""
    path = paths.get(other)
    if path is not None and len(path) >= 2:
        return addresses[(_shared_link(lab, path[-2], other), other)].ip
    first = next(link.name for link in lab.links if other in link.endpoints)
    return addresses[(first, other)].ip
