"""A lab plan into Docker objects and back: reconcile, create, roll back, remove.

``deploy`` makes the engine hold exactly the plan's objects, all or nothing:
objects whose spec changed (by the hash in their labels) are replaced, the
rest kept, and whatever one call made goes again if it fails or is
interrupted. Each new node is shaped by its agent (``labctl.nodes.setup``)
before the deploy counts it as made.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import docker.errors
import docker.types

from ... import nodes as agent
from ...errors import EngineError, UserError
from ...plan import LabPlan, LinkPlan, NodePlan
from .. import DeployReport, Progress, reconcile, state_digest
from ..reconcile import Held
from . import hostlinks
from .client import PARALLEL, reason
from ...instances import describe, flag
from .labels import (LABEL_DEPLOY, LABEL_LINK, LABEL_NODE, LABEL_ROLE, LABEL_SOURCE, LABEL_SPEC, LABEL_STATE, LABEL_WIRING, bridge_name,
                     container_name, identity, network_name, of_lab, record_name, veth_name)

if TYPE_CHECKING:
    from . import DockerEngine

# What nodes may do: configure their own network and craft packets. Not --privileged.
CAPABILITIES = ["NET_ADMIN", "NET_RAW"]
Remember = Callable[[str, str], None]


def deploy(engine: "DockerEngine", plan: LabPlan, image: str, progress: Progress,
           after: Callable[[DeployReport], None] | None = None) -> DeployReport:
    _check_identity(engine, plan)
    # The work runs in a thread of its own, and while it does, Ctrl-C only asks it to stop at its
    # next step (and waits for its rollback): it never lands inside an engine call, leaving an
    # object the engine made but this call never heard of. (Not a KeyboardInterrupt caught around
    # Thread.join: Python 3.11 then takes the running thread for stopped and exits under it.)
    cancel = threading.Event()
    interrupted = threading.Event()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["report"] = _deploy(engine, plan, image, progress, cancel, after)
        except BaseException as exc:  # KeyboardInterrupt from a progress callback too
            outcome["error"] = exc

    def on_sigint(signum, frame) -> None:
        if not interrupted.is_set():
            progress("interrupted: undoing this up (Ctrl-C again changes nothing, wait for it)")
        interrupted.set()
        cancel.set()

    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        worker = threading.Thread(target=work, name="labctl-deploy")
        worker.start()
        worker.join()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome["report"]


def _check_identity(engine: "DockerEngine", plan: LabPlan) -> None:
    """A lab is its name and its source (and instance): another file of the same name is another lab."""
    others = sorted(s for s in engine.inventory.sources(plan.key) if s != plan.source)
    if others:
        raise UserError(f"lab '{describe(plan.lab, plan.instance)}' is up from {others[0]}, not from {plan.source or 'this text'}: "
                        "two lab files have the same name",
                        hint=f"take it down first (labctl down {plan.lab}{flag(plan.instance)}), or rename one of them")


class _Cancelled(KeyboardInterrupt):
    """The user pressed Ctrl-C: the deploy stops at its next step and rolls back."""


def _deploy(engine: "DockerEngine", plan: LabPlan, image: str, progress: Progress, cancel: threading.Event,
            after: Callable[[DeployReport], None] | None) -> DeployReport:
    report = DeployReport()
    created: list[tuple[str, str]] = []  # (kind, id) made by this call, for rollback
    token = secrets.token_hex(6)
    lock = threading.Lock()

    def remember(kind: str, ident: str) -> None:
        with lock:
            created.append((kind, ident))

    def step(message: str) -> None:
        if cancel.is_set():
            raise _Cancelled
        progress(message)

    try:
        _reconcile(engine, plan, image, step, report, remember, token, cancel)
        if after is not None:
            after(report)  # the nodes' files and startup: their failure undoes this deploy too
        if cancel.is_set():
            raise _Cancelled
        _record(engine, plan, image, token, remember)
    except BaseException:
        # All or nothing: whatever this call made goes, whether the engine failed,
        # a node's setup failed or the user pressed Ctrl-C.
        progress("rolling back what this run created")
        try:
            remove_objects(engine, created + _made_by(engine, plan.key, token))
        except docker.errors.APIError:
            if not report.removed:
                raise
        if report.removed:
            # A reconcile that had removed what it replaces cannot bring it back: the lab goes
            # whole rather than stay half (`up` makes it again from its file).
            progress(f"removing the rest of lab {describe(plan.lab, plan.instance)}: this reconcile had already replaced part of it")
            destroy(engine, plan.key)
        raise
    return report


def _made_by(engine: "DockerEngine", lab: str, token: str) -> list[tuple[str, str]]:
    label = {"label": [*of_lab(lab), f"{LABEL_DEPLOY}={token}"]}
    return ([("container", c.id) for c in engine.client.containers.list(all=True, filters=label, ignore_removed=True)]
            + [("network", n.id) for n in engine.client.networks.list(filters=label)]
            + [("volume", v.name) for v in engine.client.volumes.list(filters=label)]
            + [(link.kind, link.name) for link in engine.inventory.host_links(lab) if link.meta.get("deploy") == token])


def _labels(plan: LabPlan, token: str, **more: str) -> dict[str, str]:
    return {**identity(plan.key), LABEL_SOURCE: plan.source, LABEL_DEPLOY: token, **more}


def plan_digest(plan: LabPlan, image: str) -> str:
    return state_digest({n.name: n.spec_hash(image) for n in plan.nodes}, {l.name: l.spec_hash() for l in plan.links})


def _record(engine: "DockerEngine", plan: LabPlan, image: str, token: str, remember: Remember) -> None:
    """The lab is whole: say so on the engine, with the digest of what it holds (see ``recorded``)."""
    digest = plan_digest(plan, image)
    old = engine.inventory.records(plan.key)
    if not any((v.attrs.get("Labels") or {}).get(LABEL_STATE) == digest for v in old):
        volume = engine.client.volumes.create(record_name(plan.key, digest), driver="local",
                                              labels=_labels(plan, token, **{LABEL_STATE: digest}))
        remember("volume", volume.name)
    remove_objects(engine, [("volume", v.name) for v in old if (v.attrs.get("Labels") or {}).get(LABEL_STATE) != digest])


def _health(engine: "DockerEngine", lab: str, node: str, spec: str, pid: int = 0) -> str | None:
    """Why a running node with the right spec is not configured; None when its agent says it is.
    ``pid``: the PID 1 of a node wired from the host, whose marker the host reads itself (the
    agent's own test, without starting a process in each node)."""
    try:
        reply = hostlinks.health(pid) if pid else agent.health(engine, lab, node)
    except UserError as exc:
        return f"its agent does not answer ({exc.message[:120]})"
    if not reply.configured:
        return reply.detail or "not configured"
    if reply.spec != spec:
        return "it was configured for another spec"
    return None


@dataclass(frozen=True)
class _LinkObject:
    """What holds a link on the engine: a Docker network, or a bridge wired from the host."""

    kind: str  # "network" | "bridge"
    ident: str  # what remove_objects takes: the network's id, the bridge's name
    name: str
    spec: str


def host_pid(container) -> int:
    """The host PID of a running container wired from the host (0 for any other)."""
    if container.labels.get(LABEL_WIRING) != "host" or container.status != "running":
        return 0
    return int(((container.attrs.get("State") or {}).get("Pid")) or 0)


def lab_wiring(engine: "DockerEngine", networks: bool, bridges: bool) -> str:
    """How this deploy wires the lab: as it is wired now, when it is wholly one way and this engine can
    (a lab brought up on Docker networks, by an older labctl or docker-compose, is reconciled as it
    is, not rebuilt); else the engine's way (a new lab, or one this labctl cannot keep as it is)."""
    if networks and not bridges:
        return "docker"
    if bridges and not networks and engine.wiring == "host":
        return "host"
    return engine.wiring


def _held(engine: "DockerEngine", plan: LabPlan, image: str) -> tuple[str, dict, dict, dict, dict, dict]:
    """The lab's wiring (``lab_wiring``); (link objects, containers) by link and node name, the same
    as ``reconcile.Held``, and why each unconfigured node is (asked of its agent: present is not
    healthy). Objects of another wiring than that count as changed: they are replaced."""
    objects: dict[str, list[_LinkObject]] = {}
    for net in engine.inventory.networks(plan.key):
        labels = net.attrs.get("Labels") or {}
        objects.setdefault(labels.get(LABEL_LINK), []).append(_LinkObject("network", net.id, net.name, labels.get(LABEL_SPEC, "")))
    ports: dict[str, set[str]] = {}  # node -> links it has an interface on (host wiring)
    for link in engine.inventory.host_links(plan.key):
        if link.kind == "bridge":
            objects.setdefault(link.meta.get("link"), []).append(_LinkObject("bridge", link.name, link.name, link.meta.get("spec", "")))
        elif link.meta.get("node"):
            ports.setdefault(link.meta["node"], set()).add(link.meta.get("link", ""))
    kinds = {o.kind for held in objects.values() for o in held}
    wiring = lab_wiring(engine, "network" in kinds, "bridge" in kinds)
    kind = "bridge" if wiring == "host" else "network"
    links = {name: Held(held[0].spec if len(held) == 1 and held[0].kind == kind else "") for name, held in objects.items()}
    containers = {c.labels.get(LABEL_NODE): c for c in engine.inventory.containers(plan.key)}
    network_link = {o.name: name for name, held in objects.items() for o in held if o.kind == "network"}
    wanted = {node.name: node.spec_hash(image) for node in plan.nodes}
    # A container of the other wiring is changed whatever its spec says.
    spec = {name: ctr.labels.get(LABEL_SPEC, "") if ctr.labels.get(LABEL_WIRING, "docker") == wiring else ""
            for name, ctr in containers.items()}
    # Only nodes that would be kept are asked: the rest go anyway.
    asked = [name for name, ctr in containers.items() if ctr.status == "running" and name in wanted and spec[name] == wanted[name]]
    problems: dict[str, str] = {}
    if asked:
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(asked))) as pool:
            found = pool.map(lambda name: _health(engine, plan.key, name, wanted[name], host_pid(containers[name])), asked)
            problems = {name: why for name, why in zip(asked, found) if why}
    nodes = {}
    for name, ctr in containers.items():
        attached = {network_link[n] for n in ((ctr.attrs.get("NetworkSettings") or {}).get("Networks") or {}) if n in network_link}
        nodes[name] = Held(spec[name], ctr.status == "running", frozenset(attached | ports.get(name, set())),
                           configured=name not in problems)
    return wiring, objects, containers, links, nodes, problems


def _reconcile(engine: "DockerEngine", plan: LabPlan, image: str, progress: Progress, report: DeployReport,
               remember: Remember, token: str, cancel: threading.Event) -> None:
    wiring, objects, containers, held_links, held_nodes, problems = _held(engine, plan, image)
    todo = reconcile.changes(plan, image, held_links, held_nodes)
    for name in todo.stale_nodes:
        why = problems.get(name) or ("not running" if not held_nodes[name].running else "changed")
        progress(f"removing node {name} ({why})")
        remove_objects(engine, [("container", containers[name].id)])
        report.removed.append(containers[name].name)
    for name in todo.stale_links:
        progress(f"removing link {name} (changed)")
        remove_objects(engine, [(o.kind, o.ident) for o in objects[name]])
        report.removed.extend(o.name for o in objects[name])

    report.kept.extend(link_object_name(wiring, plan.key, link.name) for link in todo.kept_links)

    def create_link(link: LinkPlan) -> None:
        if wiring == "host":
            _create_bridge(engine, plan, link, remember, token)
        else:
            _create_network(engine, plan, link, remember, token)

    # Said as each is made, in the lab's order, like nodes: links are made several at once.
    _in_parallel(create_link, todo.new_links, cancel, lambda link: progress(f"link {link.name} {link.subnet} made"))
    report.created.extend(link_object_name(wiring, plan.key, link.name) for link in todo.new_links)
    if todo.new_links or todo.new_nodes:
        # Once the networks exist: Docker has put their isolation drops on top (see hostfw).
        engine.allow_bridged_frames(image, progress)
    report.kept.extend(container_name(plan.key, node.name) for node in todo.kept_nodes)
    if todo.new_nodes:
        _create_nodes(engine, plan, list(todo.new_nodes), image, progress, remember, token, cancel, wiring)
        report.created.extend(container_name(plan.key, node.name) for node in todo.new_nodes)
        report.fresh.update(node.name for node in todo.new_nodes)
    if report.changed and todo.kept_nodes:
        # Nodes that stay learn the names of the new ones.
        agent.refresh_hosts(engine, plan.key, todo.kept_nodes)


def link_object_name(wiring: str, key: str, link: str) -> str:
    """What holds a link: its bridge (wired from the host) or its Docker network."""
    return bridge_name(network_name(key, link)) if wiring == "host" else network_name(key, link)


def _host_meta(plan: LabPlan, token: str, **more: str) -> dict[str, str]:
    """A host link's record (its ifalias): the labels a Docker object would carry, the source left out (too long)."""
    return {"lab": plan.lab, "instance": plan.instance, **more, "deploy": token}


def _create_bridge(engine: "DockerEngine", plan: LabPlan, link: LinkPlan, remember: Remember, token: str) -> None:
    name = bridge_name(network_name(plan.key, link.name))
    remember("bridge", name)  # before it exists: a rollback skips what is not there, never misses what is
    engine.hostlinks.create_bridge(name, _host_meta(plan, token, link=link.name, spec=link.spec_hash(), subnet=str(link.subnet),
                                                    reserved=str(link.reserved)))


def _create_network(engine: "DockerEngine", plan: LabPlan, link: LinkPlan, remember: Remember, token: str) -> None:
    name = network_name(plan.key, link.name)
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(link.subnet), gateway=str(link.reserved))])
    labels = _labels(plan, token, **{LABEL_LINK: link.name, LABEL_SPEC: link.spec_hash()})
    try:
        # internal: Docker adds no route or NAT out of this network, so no lab packet leaves the host.
        net = engine.client.networks.create(name, driver="bridge", internal=True, ipam=ipam, labels=labels, check_duplicate=True,
                                            options={"com.docker.network.bridge.name": bridge_name(name)})
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot create network {name} ({link.subnet}): {reason(exc)}") from None
    remember("network", net.id)


def _create_nodes(engine: "DockerEngine", plan: LabPlan, todo: list[NodePlan], image: str, progress: Progress,
                  remember: Remember, token: str, cancel: threading.Event, wiring: str) -> None:
    _in_parallel(lambda node: _create_node(engine, plan, node, image, remember, token, cancel, wiring), todo, cancel,
                 lambda node: progress(f"node {node.name} up"))


def _in_parallel(work: Callable, items: Sequence, cancel: threading.Event | None = None,
                 done: Callable | None = None) -> None:
    """``work`` on each item, PARALLEL at once; ``done(item)`` in order as each finishes. On the first
    failure (or Ctrl-C) nothing new starts, and calls in flight finish, so rollback sees all they made."""
    if not items:
        return
    pool = ThreadPoolExecutor(max_workers=min(PARALLEL, len(items)), thread_name_prefix="labctl-deploy")

    def guarded(item):
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        return work(item)

    futures = [pool.submit(guarded, item) for item in items]
    try:
        for item, future in zip(items, futures):
            future.result()
            if done is not None:
                done(item)
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)  # let calls in flight finish, so rollback sees them all
        raise
    finally:
        pool.shutdown(wait=True)


def _create_node(engine: "DockerEngine", plan: LabPlan, node: NodePlan, image: str, remember: Remember, token: str,
                 cancel: threading.Event, wiring: str) -> None:
    if cancel.is_set():
        raise _Cancelled
    api = engine.api
    first, *rest = node.interfaces
    host = wiring == "host"
    labels = _labels(plan, token, **{LABEL_NODE: node.name, LABEL_SPEC: node.spec_hash(image), LABEL_ROLE: node.role,
                                     LABEL_WIRING: wiring})
    first_network = network_name(plan.key, first.link)
    # Wired from the host: the node starts with a network namespace of its own holding only lo.
    host_config = api.create_host_config(cap_add=CAPABILITIES, init=True, network_mode="none" if host else first_network,
                                         sysctls=dict(node.sysctls))
    networking = None if host else api.create_networking_config(
        {first_network: api.create_endpoint_config(ipv4_address=str(first.address.ip))})
    try:
        ident = api.create_container(node.image or image, name=container_name(plan.key, node.name), hostname=node.name,
                                     labels=labels, host_config=host_config, networking_config=networking, detach=True,
                                     stop_signal="SIGKILL")["Id"]
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot create node {node.name}: {reason(exc)}") from None
    remember("container", ident)
    try:
        if not host:
            for iface in rest:
                api.connect_container_to_network(ident, network_name(plan.key, iface.link), ipv4_address=str(iface.address.ip))
        if node.image:
            agent.install_agent(engine, plan.key, node.name)
        api.start(ident)
        pid = api.inspect_container(ident)["State"]["Pid"] if host else 0
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot start node {node.name}: {reason(exc)}") from None
    for iface in node.interfaces if host else ():
        host_end = veth_name(plan.key, node.name, iface.link)
        remember("veth", host_end)
        engine.hostlinks.plug(pid, iface.name, host_end, bridge_name(network_name(plan.key, iface.link)),
                              _host_meta(plan, token, node=node.name, link=iface.link), str(iface.address.ip))
    if cancel.is_set():
        raise _Cancelled
    if host and not node.image:
        # On the node image, shaped from the host: no agent process per node. A node on an image
        # of its own is set up by its agent, which also says what that image lacks.
        engine.hostlinks.shape(pid, node.setup(image))
    else:
        agent.setup(engine, plan.key, node.name, node.setup(image), node.image or image)


def _wait_gone(api, ident: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api.inspect_container(ident)
        except docker.errors.NotFound:
            return
        time.sleep(0.1)


def destroy(engine: "DockerEngine", lab: str | None) -> list[str]:
    containers = engine.inventory.containers(lab)
    networks = engine.inventory.networks(lab)
    records = engine.inventory.records(lab)
    host_links = engine.inventory.host_links(lab)
    bridges = [link for link in host_links if link.kind == "bridge"]
    names = [c.name for c in containers] + [n.name for n in networks] + [b.name for b in bridges]
    # Bridges alongside containers; a veth goes with its node's network namespace, and what is left
    # after (the kernel tears namespaces down in the background) goes by name.
    remove_objects(engine, [("container", c.id) for c in containers] + [("network", n.id) for n in networks]
                   + [("volume", v.name) for v in records] + [(link.kind, link.name) for link in host_links])
    return names


def remove_objects(engine: "DockerEngine", objects: list[tuple[str, str]]) -> None:
    api = engine.api
    objects = list(dict.fromkeys(objects))  # rollback may name an object twice (by id and by its deploy label)
    containers = [ident for kind, ident in objects if kind == "container"]
    networks = [ident for kind, ident in objects if kind == "network"]
    host_links = [ident for kind, ident in objects if kind == "veth"]

    def remove_container(ident: str) -> None:
        try:
            api.remove_container(ident, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise
            _wait_gone(api, ident)  # another removal of it is under way: done when it is

    if host_links and engine.hostlinks is None:
        raise EngineError(f"cannot remove {len(host_links)} host link(s) of labctl ({host_links[0]}, ...) from here",
                          hint="run labctl as root on the engine's host")
    bridges = [ident for kind, ident in objects if kind == "bridge"]
    with ThreadPoolExecutor(max_workers=PARALLEL + 1) as pool:
        # The kernel takes ~30 ms a bridge, the engine ~0.3 s a container: both at once. A bridge may
        # go before its ports; they go with their nodes' namespaces.
        unbridged = pool.submit(engine.hostlinks.remove, bridges) if bridges else None
        list(pool.map(remove_container, containers))
        if unbridged is not None:
            unbridged.result()
    if host_links:
        engine.hostlinks.remove(host_links)  # veth host ends whose namespace is still being torn down

    def remove_network(ident: str) -> None:
        try:
            api.remove_network(ident)
        except docker.errors.NotFound:
            pass

    if networks:
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(networks))) as pool:
            list(pool.map(remove_network, networks))
    for name in (ident for kind, ident in objects if kind == "volume"):
        try:
            api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
