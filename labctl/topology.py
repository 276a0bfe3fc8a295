"""The lab as a graph: who shares a link with whom, and where packets can go.

Pure functions of the lab model, linear (or nearly) in its size: a link is
one hyper-edge joining all its endpoints, so nothing here walks all pairs of
a link's endpoints except ``neighbours`` itself, whose answer has that size.
Hosts do not forward; routers do.
"""

from __future__ import annotations

from collections import deque

from .model import Lab, Link


def links_of(lab: Lab) -> dict[str, list[Link]]:
    """Each node's links, in the order the lab file lists them."""
    result: dict[str, list[Link]] = {name: [] for name in lab.nodes}
    for link in lab.links:
        for end in link.endpoints:
            if end in result:
                result[end].append(link)
    return result


def neighbours(lab: Lab) -> dict[str, list[str]]:
    """Each node's neighbours (nodes sharing a link with it), in link then endpoint order."""
    adjacent: dict[str, dict[str, None]] = {name: {} for name in lab.nodes}
    for link in lab.links:
        for a in link.endpoints:
            row = adjacent[a]
            for b in link.endpoints:
                if a != b:
                    row.setdefault(b)
    return {name: list(row) for name, row in adjacent.items()}


def share_link(lab: Lab, a: str, b: str, links: dict[str, list[Link]] | None = None) -> bool:
    links = links if links is not None else links_of(lab)
    return a != b and any(b in link.endpoints for link in links.get(a, ()))


def forwarding_paths(lab: Lab, start: str, links: dict[str, list[Link]] | None = None) -> dict[str, list[str]]:
    """Shortest paths from ``start`` to every node it can reach, transiting only routers.

    Ties break by the order nodes appear in links, so the result is stable. Each link is
    crossed once: when a node first expands it, every endpoint gets its path, so a later
    expansion of the same link could add nothing.
    """
    links = links if links is not None else links_of(lab)
    paths = {start: [start]}
    crossed: set[str] = set()
    queue = deque([start])
    while queue:
        here = queue.popleft()
        if here != start and lab.nodes[here].role != "router":
            continue  # hosts do not forward
        for link in links[here]:
            if link.name in crossed:
                continue
            crossed.add(link.name)
            for nxt in link.endpoints:
                if nxt not in paths:
                    paths[nxt] = [*paths[here], nxt]
                    queue.append(nxt)
    return paths


def unreachable_pair(lab: Lab) -> tuple[str, str] | None:
    """The first (in file order) pair of hosts with no path through routers, or None.

    Links joined by routers form routed regions; two hosts reach each other exactly when
    some link of one and some link of the other lie in one region. Hosts with the same set
    of regions behave alike, so the check is over distinct sets, not over pairs of hosts.
    """
    parent = {link.name: link.name for link in lab.links}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    links = links_of(lab)
    for name in lab.routers():
        mine = links[name]
        for link in mine[1:]:
            a, b = find(mine[0].name), find(link.name)
            if a != b:
                parent[b] = a
    hosts = lab.hosts()
    regions = {host: frozenset(find(link.name) for link in links[host]) for host in hosts}
    groups: dict[frozenset, list[int]] = {}
    for index, host in enumerate(hosts):
        groups.setdefault(regions[host], []).append(index)
    for index, host in enumerate(hosts):
        mine = regions[host]
        # The first host (other than itself: a host on no link shares no region even with itself)
        # of each group this host shares no region with.
        firsts = [next((m for m in members[:2] if m != index), None) for group, members in groups.items() if not (group & mine)]
        firsts = [m for m in firsts if m is not None]
        if firsts:
            return host, hosts[min(firsts)]
    return None
