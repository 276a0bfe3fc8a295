"""The Docker engine: labctl's lab on containers, bridges and labels.

One job per module: ``client`` reaches the engine, ``labels`` names and
labels its objects, ``inventory`` reads them back, ``deploy`` reconciles a
plan into them, ``hostlinks`` wires links from the host (bridges and veths,
where labctl runs as root beside the engine; else links are Docker networks),
``hostfw`` lets frames cross lab bridges on filtering hosts,
``execs`` runs commands in containers, ``netns`` the helper in a node's
network namespace, ``tty`` the terminal of ``labctl shell``, ``image`` the
node image.
"""

from __future__ import annotations

import hashlib
import json
import sys
from ipaddress import IPv4Network
from typing import Callable, Mapping, Sequence

import docker
import docker.errors

from ...errors import EngineError
from ...plan import LabPlan
from .. import DeployReport, Engine, ExecResult, ImageEntry, LinkState, NodeState, Progress
from ..tracefs import Tracefs
from . import client as engine_client
from . import deploy as deployment
from . import execs, hostfw, hostlinks, netns, tty
from . import image as node_image
from .hostlinks import HostLinks
from .inventory import Inventory
from .labels import HELPER_LABS, LABEL_LAB, LABEL_NODE, LABEL_OWNER, OWNER, helper

__all__ = ["DockerEngine"]


def _quiet(_: str) -> None:
    pass


class DockerEngine(Engine):
    name = "docker"

    def __init__(self, client: docker.DockerClient):
        self.client = client
        self.api = client.api
        # Links wired from the host (hostlinks.py) where labctl may, else Docker networks; the host's
        # links are read wherever the engine is local, so a lab wired either way is seen and removed.
        local = engine_client.engine_is_local()
        self.wiring_unavailable = hostlinks.available() if local else "the engine is not on this host"
        self.wiring = "host" if self.wiring_unavailable is None else "docker"
        self.hostlinks = HostLinks() if local and hostlinks.importable() else None
        self.inventory = Inventory(client, self.hostlinks)

    @classmethod
    def connect(cls) -> "DockerEngine":
        return cls(engine_client.connect())

    def version(self) -> str:
        info = self.client.version()
        return f"Docker Engine {info.get('Version', '?')} (API {info.get('ApiVersion', '?')})"

    def ensure_image(self, *, offline: bool = False, rebuild: bool = False, progress: Progress | None = None):
        return node_image.ensure_node_image(self.client, offline=offline, rebuild=rebuild, progress=progress or _quiet)

    def ensure_variant(self, base: str, packages: Sequence[str], *, rebuild: bool = False, progress: Progress | None = None) -> str:
        return node_image.ensure_variant(self.client, base, list(packages), rebuild=rebuild, progress=progress or _quiet)

    def image_present(self) -> str | None:
        tag = node_image.expected_tag()
        return tag if node_image.has_image(self.client, tag) else None

    def image_wanted(self) -> str:
        return node_image.expected_tag()

    def images(self) -> list[ImageEntry]:
        users: dict[str, list[str]] = {}
        # One list call, no inspect per container: containers come and go while we look.
        for ctr in self.api.containers(all=True, filters={"label": f"{LABEL_OWNER}={OWNER}"}):
            labels = ctr.get("Labels") or {}
            if labels.get(LABEL_LAB) in HELPER_LABS.values():
                continue
            users.setdefault(ctr.get("ImageID", ""), []).append(f"{labels.get(LABEL_LAB, '?')}/{labels.get(LABEL_NODE, '?')}")
        return node_image.list_images(self.client, users)

    def remove_image(self, tag: str) -> None:
        node_image.remove_image(self.client, tag)

    # --- the lab's objects --------------------------------------------------------------------

    def subnets_in_use(self, exclude_lab: str | None = None) -> Mapping[IPv4Network, str]:
        return self.inventory.subnets_in_use(exclude_lab)

    @property
    def ident(self) -> str:
        return "docker-" + hashlib.sha256(engine_client.engine_host().encode()).hexdigest()[:8]

    def labs(self) -> list[str]:
        return self.inventory.labs()

    def recorded(self, lab: str) -> set[str]:
        return self.inventory.recorded(lab)

    def nodes(self, lab: str) -> list[NodeState]:
        return self.inventory.nodes(lab)

    def links(self, lab: str) -> list[LinkState]:
        return self.inventory.links(lab)

    def deploy(self, plan: LabPlan, image: str, progress: Progress | None = None,
               after: Callable[[DeployReport], None] | None = None) -> DeployReport:
        return deployment.deploy(self, plan, image, progress or _quiet, after)

    def destroy(self, lab: str | None) -> list[str]:
        return deployment.destroy(self, lab)

    def allow_bridged_frames(self, image: str, progress: Progress) -> None:
        """See hostfw: without this, hosts that filter bridged frames drop routed lab traffic."""
        actions = hostfw.run_here() if hostfw.can_run_here(engine_client.engine_is_local()) else None
        if actions is None:
            try:
                output = self.client.containers.run(image, ["sh", "-c", hostfw.script()], network_mode="host",
                                                    cap_add=["NET_ADMIN"], labels=helper("host-firewall"), remove=True,
                                                    stdout=True, stderr=True)
            except docker.errors.ContainerError as exc:
                raise EngineError(f"cannot let lab frames through the host's bridge filter: {engine_client.reason(exc)}") from None
            actions = output.decode(errors="replace").splitlines()
        hostfw.report(actions, progress)

    # --- talking to nodes ---------------------------------------------------------------------

    def exec(self, lab: str, node: str, argv: Sequence[str], *, stdin: bytes | None = None,
             stream: Callable[[bytes, bool], None] | None = None) -> ExecResult:
        return execs.run(self.api, self.inventory.container_id(lab, node), argv, stream=stream)

    def attach(self, lab: str, node: str, argv: Sequence[str]) -> execs.DockerStream:
        return execs.attach(self.api, self.inventory.container_id(lab, node), argv)

    def put(self, lab: str, node: str, path: str, archive: bytes) -> None:
        ident = self.inventory.container_id(lab, node, running=False)
        try:
            self.api.put_archive(ident, path, archive)
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot copy into node {node} at {path}: {engine_client.reason(exc)}") from None

    def fetch(self, lab: str, node: str, path: str) -> bytes | None:
        ident = self.inventory.container_id(lab, node, running=False)
        try:
            chunks, _ = self.api.get_archive(ident, path)
            return b"".join(chunks)
        except docker.errors.NotFound:
            return None

    def exec_in_netns(self, lab: str, node: str, argv: Sequence[str]) -> ExecResult:
        # On the node image, which has the agent, whatever image the node itself runs.
        ident = self.inventory.container_id(lab, node)
        return netns.run(self.api, ident, self.image_present() or self.client.containers.get(ident).attrs["Config"]["Image"], argv)

    def shell(self, lab: str, node: str, argv: Sequence[str]) -> int:
        if not sys.stdin.isatty():
            return super().shell(lab, node, argv)  # no terminal to hand over (a script, CI)
        return tty.shell(self.api, self.inventory.container_id(lab, node), argv)

    def probe(self, image: str, argv: Sequence[str]) -> ExecResult:
        ctr = self.client.containers.run(image, detach=True, network_mode="none", cap_add=deployment.CAPABILITIES, init=True,
                                         labels=helper("probe"), stop_signal="SIGKILL")
        try:
            return execs.run(self.api, ctr.id, argv)
        finally:
            ctr.remove(force=True)

    def host_observers(self) -> Tracefs | None:
        # Tracepoints see every namespace of the kernel they run on: the nodes' only when it is this one.
        return Tracefs() if engine_client.engine_is_local() else None
