"""What the engine holds for labctl, read from labels (and, for links wired from the host, from
the ifalias of labctl's bridges and veths): labs, their nodes and links.

A lab here is a lab instance's key (``labctl.instances.lab_key``): ``teardown``, ``teardown.a``.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Mapping

import docker

from ...errors import EngineError, UserError
from .. import LinkState, NodeState
from .hostlinks import HostLink, HostLinks
from .labels import LABEL_LINK, LABEL_NODE, LABEL_SOURCE, LABEL_SPEC, LABEL_STATE, key_of, of_lab


class Inventory:
    def __init__(self, client: docker.DockerClient, hostlinks: HostLinks | None = None):
        self.client = client
        self.hostlinks = hostlinks  # None: the engine is not on this host, links are Docker networks

    def host_links(self, lab: str | None) -> list[HostLink]:
        """labctl's bridges and veth host ends of lab instance ``lab`` (every lab's when None) on the host."""
        return self.hostlinks.listed(lab) if self.hostlinks is not None else []

    def bridges(self, lab: str | None) -> list[HostLink]:
        return [link for link in self.host_links(lab) if link.kind == "bridge"]

    def networks(self, lab: str | None) -> list:
        return self.client.networks.list(filters={"label": of_lab(lab)})

    def containers(self, lab: str | None) -> list:
        return self.client.containers.list(all=True, filters={"label": of_lab(lab)}, sparse=False, ignore_removed=True)

    def records(self, lab: str | None) -> list:
        """The lab's records (volumes holding no data, only labels): one per complete deploy, the last kept."""
        return self.client.volumes.list(filters={"label": of_lab(lab)})

    def recorded(self, lab: str) -> set[str]:
        return {(v.attrs.get("Labels") or {}).get(LABEL_STATE, "") for v in self.records(lab)}

    def sources(self, lab: str) -> set[str]:
        """The lab files this lab instance's objects say they came from."""
        labels = [c.labels or {} for c in self.containers(lab)]
        labels += [n.attrs.get("Labels") or {} for n in self.networks(lab)]
        labels += [v.attrs.get("Labels") or {} for v in self.records(lab)]
        return {l.get(LABEL_SOURCE, "") for l in labels}

    def subnets_in_use(self, exclude_lab: str | None = None) -> Mapping[IPv4Network, str]:
        used: dict[IPv4Network, str] = {}
        for net in self.client.networks.list():
            labels = net.attrs.get("Labels") or {}
            if exclude_lab and key_of(labels) == exclude_lab:
                continue
            for pool in (net.attrs.get("IPAM") or {}).get("Config") or []:
                subnet = pool.get("Subnet", "")
                if subnet and ":" not in subnet:
                    used[IPv4Network(subnet, strict=False)] = net.name
        for bridge in self.bridges(None):
            if (exclude_lab and bridge.key == exclude_lab) or not bridge.meta.get("subnet"):
                continue
            # The bridge's name alone says nothing to the user: say whose link it is.
            used[IPv4Network(bridge.meta["subnet"], strict=False)] = (
                f"{bridge.name} (lab {bridge.key}, link {bridge.meta.get('link', '?')})")
        return used

    def labs(self) -> list[str]:
        names = {key_of(c.labels or {}) for c in self.containers(None)}
        names |= {key_of(n.attrs.get("Labels") or {}) for n in self.networks(None)}
        names |= {key_of(v.attrs.get("Labels") or {}) for v in self.records(None)}
        names |= {link.key for link in self.host_links(None)}
        return sorted(n for n in names if n and not n.startswith("__"))

    def nodes(self, lab: str) -> list[NodeState]:
        return sorted((NodeState(lab, c.labels.get(LABEL_NODE, "?"), c.name, c.status,
                                 (c.attrs.get("Config") or {}).get("Image", ""), c.labels.get(LABEL_SPEC, ""),
                                 c.labels.get(LABEL_SOURCE, ""))
                       for c in self.containers(lab)), key=lambda n: n.node)

    def links(self, lab: str) -> list[LinkState]:
        result = []
        for net in self.networks(lab):
            config = ((net.attrs.get("IPAM") or {}).get("Config") or [{}])[0]
            labels = net.attrs.get("Labels") or {}
            result.append(LinkState(lab, labels.get(LABEL_LINK, "?"), net.name, config.get("Subnet", ""), config.get("Gateway", ""),
                                    labels.get(LABEL_SPEC, ""), labels.get(LABEL_SOURCE, "")))
        for bridge in self.bridges(lab):
            # No gateway: a bridge wired from the host holds no address (the reserved one stays unheld).
            result.append(LinkState(lab, bridge.meta.get("link", "?"), bridge.name, bridge.meta.get("subnet", ""), "",
                                    bridge.meta.get("spec", "")))
        return sorted(result, key=lambda l: l.link)

    def container_id(self, lab: str, node: str, running: bool = True) -> str:
        found = self.client.containers.list(all=True, filters={"label": [*of_lab(lab), f"{LABEL_NODE}={node}"]})
        if not found:
            raise UserError(f"lab '{lab}' has no node '{node}' up", hint=f"see `labctl status {lab}`")
        if running and found[0].status != "running":
            raise EngineError(f"node {node} of lab {lab} is {found[0].status}, not running", hint=f"run `labctl up {lab}` again")
        return found[0].id
