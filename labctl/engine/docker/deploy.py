"""A lab plan into Docker objects and back: reconcile, create, roll back, remove.

``deploy`` makes the engine hold exactly the plan's objects, all or nothing:
objects whose spec changed (by the hash in their labels) are replaced, the
rest kept, and whatever one call made goes again if it fails or is
interrupted. Each new node is shaped by its agent (``labctl.nodes.setup``)
before the deploy counts it as made.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Callable

import docker.errors
import docker.types

from ... import nodes as agent
from ...errors import EngineError
from ...plan import LabPlan, LinkPlan, NodePlan
from .. import DeployReport, Progress, reconcile
from ..reconcile import Held
from . import hostfw
from .client import PARALLEL, reason
from .labels import (LABEL_LAB, LABEL_LINK, LABEL_NODE, LABEL_OWNER, LABEL_ROLE, LABEL_SOURCE, LABEL_SPEC, OWNER,
                     bridge_name, container_name, network_name)

if TYPE_CHECKING:
    from . import DockerEngine

# What nodes may do: configure their own network and craft packets. Not --privileged.
CAPABILITIES = ["NET_ADMIN", "NET_RAW"]
Remember = Callable[[str, str], None]


def deploy(engine: "DockerEngine", plan: LabPlan, image: str, progress: Progress,
           after: Callable[[DeployReport], None] | None = None) -> DeployReport:
    report = DeployReport()
    created: list[tuple[str, str]] = []  # (kind, id) made by this call, for rollback
    lock = threading.Lock()

    def remember(kind: str, ident: str) -> None:
        with lock:
            created.append((kind, ident))

    try:
        _reconcile(engine, plan, image, progress, report, remember)
        if after is not None:
            after(report)  # the nodes' files and startup: their failure undoes this deploy too
    except BaseException:
        # All or nothing: whatever this call made goes, whether the engine failed,
        # a node's setup failed or the user pressed Ctrl-C.
        progress("rolling back what this run created")
        remove_objects(engine.api, created)
        raise
    return report


def _held(engine: "DockerEngine", plan: LabPlan) -> tuple[dict, dict, dict, dict]:
    """(networks, containers) by link and node name, and the same as ``reconcile.Held``."""
    networks = {(n.attrs.get("Labels") or {}).get(LABEL_LINK): n for n in engine.inventory.networks(plan.lab)}
    containers = {c.labels.get(LABEL_NODE): c for c in engine.inventory.containers(plan.lab)}
    link_of = {net.name: name for name, net in networks.items()}
    links = {name: Held((net.attrs.get("Labels") or {}).get(LABEL_SPEC, "")) for name, net in networks.items()}
    nodes = {}
    for name, ctr in containers.items():
        attached = ((ctr.attrs.get("NetworkSettings") or {}).get("Networks") or {}).keys()
        nodes[name] = Held(ctr.labels.get(LABEL_SPEC, ""), ctr.status == "running",
                           frozenset(link_of[n] for n in attached if n in link_of))
    return networks, containers, links, nodes


def _reconcile(engine: "DockerEngine", plan: LabPlan, image: str, progress: Progress, report: DeployReport,
               remember: Remember) -> None:
    networks, containers, held_links, held_nodes = _held(engine, plan)
    todo = reconcile.changes(plan, image, held_links, held_nodes)
    for name in todo.stale_nodes:
        progress(f"removing node {name} (changed or not running)")
        containers[name].remove(force=True)
        report.removed.append(containers[name].name)
    for name in todo.stale_links:
        progress(f"removing link {name} (changed)")
        networks[name].remove()
        report.removed.append(networks[name].name)

    if todo.new_links:
        engine.allow_bridged_frames(image, progress)
    report.kept.extend(network_name(plan.lab, link.name) for link in todo.kept_links)
    for link in todo.new_links:
        progress(f"creating link {link.name} {link.subnet}")
        _create_network(engine, plan, link, remember)
        report.created.append(network_name(plan.lab, link.name))

    report.kept.extend(container_name(plan.lab, node.name) for node in todo.kept_nodes)
    if todo.new_nodes:
        _create_nodes(engine, plan, list(todo.new_nodes), image, progress, remember)
        report.created.extend(container_name(plan.lab, node.name) for node in todo.new_nodes)
        report.fresh.update(node.name for node in todo.new_nodes)
    if report.changed and todo.kept_nodes:
        # Nodes that stay learn the names of the new ones.
        agent.refresh_hosts(engine, plan.lab, todo.kept_nodes)


def _create_network(engine: "DockerEngine", plan: LabPlan, link: LinkPlan, remember: Remember) -> None:
    name = network_name(plan.lab, link.name)
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(link.subnet), gateway=str(link.reserved))])
    labels = {LABEL_OWNER: OWNER, LABEL_LAB: plan.lab, LABEL_LINK: link.name, LABEL_SPEC: link.spec_hash()}
    try:
        # internal: Docker adds no route or NAT out of this network, so no lab packet leaves the host.
        net = engine.client.networks.create(name, driver="bridge", internal=True, ipam=ipam, labels=labels, check_duplicate=True,
                                            options={"com.docker.network.bridge.name": bridge_name(name)})
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot create network {name} ({link.subnet}): {reason(exc)}") from None
    remember("network", net.id)


def _create_nodes(engine: "DockerEngine", plan: LabPlan, todo: list[NodePlan], image: str, progress: Progress,
                  remember: Remember) -> None:
    pool = ThreadPoolExecutor(max_workers=min(PARALLEL, len(todo)), thread_name_prefix="labctl-node")
    futures = [pool.submit(_create_node, engine, plan, node, image, remember) for node in todo]
    try:
        for node, future in zip(todo, futures):
            future.result()
            progress(f"node {node.name} up")
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)  # let creations in flight finish, so rollback sees them all
        raise
    finally:
        pool.shutdown(wait=True)


def _create_node(engine: "DockerEngine", plan: LabPlan, node: NodePlan, image: str, remember: Remember) -> None:
    api = engine.api
    first, *rest = node.interfaces
    labels = {LABEL_OWNER: OWNER, LABEL_LAB: plan.lab, LABEL_NODE: node.name, LABEL_SPEC: node.spec_hash(image),
              LABEL_SOURCE: plan.source, LABEL_ROLE: node.role}
    first_network = network_name(plan.lab, first.link)
    host_config = api.create_host_config(cap_add=CAPABILITIES, init=True, network_mode=first_network, sysctls=dict(node.sysctls))
    networking = api.create_networking_config({first_network: api.create_endpoint_config(ipv4_address=str(first.address.ip))})
    try:
        ident = api.create_container(node.image or image, name=container_name(plan.lab, node.name), hostname=node.name,
                                     labels=labels, host_config=host_config, networking_config=networking, detach=True,
                                     stop_signal="SIGKILL")["Id"]
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot create node {node.name}: {reason(exc)}") from None
    remember("container", ident)
    try:
        for iface in rest:
            api.connect_container_to_network(ident, network_name(plan.lab, iface.link), ipv4_address=str(iface.address.ip))
        if node.image:
            agent.install_agent(engine, plan.lab, node.name)
        api.start(ident)
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot start node {node.name}: {reason(exc)}") from None
    agent.setup(engine, plan.lab, node.name, node.setup(), node.image or image)


def destroy(engine: "DockerEngine", lab: str | None) -> list[str]:
    containers = engine.inventory.containers(lab)
    networks = engine.inventory.networks(lab)
    names = [c.name for c in containers] + [n.name for n in networks]
    remove_objects(engine.api, [("container", c.id) for c in containers] + [("network", n.id) for n in networks])
    return names


def remove_objects(api, objects: list[tuple[str, str]]) -> None:
    containers = [ident for kind, ident in objects if kind == "container"]
    networks = [ident for kind, ident in objects if kind == "network"]

    def remove_container(ident: str) -> None:
        try:
            api.remove_container(ident, force=True, v=True)
        except docker.errors.NotFound:
            pass

    if containers:
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(containers))) as pool:
            list(pool.map(remove_container, containers))
    for ident in networks:
        try:
            api.remove_network(ident)
        except docker.errors.NotFound:
            pass
