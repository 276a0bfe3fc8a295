"""The Docker engine, through docker-py (never the docker CLI).

Labels are the source of truth: every network and container carries the
owner, lab, node or link and a hash of its planned spec, so ``deploy`` can
reconcile, ``destroy`` removes exactly a lab's objects, and a crashed run is
cleaned up from what the engine itself says.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from ipaddress import IPv4Network
from typing import Callable, Mapping, Sequence

import docker
import docker.errors
import docker.types
import requests.exceptions

from ..errors import EngineError
from ..plan import (LABEL_LAB, LABEL_LINK, LABEL_NODE, LABEL_OWNER, LABEL_SOURCE, LABEL_SPEC, OWNER, LabPlan,
                    LinkPlan, NodePlan)
from . import DeployReport, Engine, ExecResult, LinkState, NodeState, Progress, Stream
from . import image as node_image

AGENT = ["python3", "-m", "labctl.agent"]
LABEL_ROLE = "org.labctl.role"
# What nodes may do: configure their own network and craft packets. Not --privileged.
CAPABILITIES = ["NET_ADMIN", "NET_RAW"]
PARALLEL = 8


def _quiet(_: str) -> None:
    pass


class DockerEngine(Engine):
    name = "docker"

    def __init__(self, client: docker.DockerClient):
        self.client = client
        self.api = client.api

    @classmethod
    def connect(cls) -> "DockerEngine":
        try:
            client = docker.from_env(timeout=120, max_pool_size=PARALLEL + 4)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
            raise EngineError(f"cannot reach the Docker engine at {host}: {_reason(exc)}",
                              hint="is dockerd running (systemctl start docker) and may you use its socket?") from None
        return cls(client)

    def version(self) -> str:
        info = self.client.version()
        return f"Docker Engine {info.get('Version', '?')} (API {info.get('ApiVersion', '?')})"

    def ensure_image(self, *, offline: bool = False, rebuild: bool = False, progress: Progress | None = None):
        return node_image.ensure_node_image(self.client, offline=offline, rebuild=rebuild, progress=progress or _quiet)

    def image_present(self) -> str | None:
        tag = node_image.expected_tag()
        try:
            self.client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            return None

    # --- inventory -----------------------------------------------------------

    def _networks(self, lab: str | None) -> list:
        label = f"{LABEL_LAB}={lab}" if lab else f"{LABEL_OWNER}={OWNER}"
        return self.client.networks.list(filters={"label": label})

    def _containers(self, lab: str | None) -> list:
        label = f"{LABEL_LAB}={lab}" if lab else f"{LABEL_OWNER}={OWNER}"
        return self.client.containers.list(all=True, filters={"label": label}, sparse=False, ignore_removed=True)

    def subnets_in_use(self, exclude_lab: str | None = None) -> Mapping[IPv4Network, str]:
        used: dict[IPv4Network, str] = {}
        for net in self.client.networks.list():
            labels = net.attrs.get("Labels") or {}
            if exclude_lab and labels.get(LABEL_LAB) == exclude_lab:
                continue
            for pool in (net.attrs.get("IPAM") or {}).get("Config") or []:
                subnet = pool.get("Subnet", "")
                if subnet and ":" not in subnet:
                    used[IPv4Network(subnet, strict=False)] = net.name
        return used

    def labs(self) -> list[str]:
        names = {c.labels.get(LABEL_LAB) for c in self._containers(None)}
        names |= {(n.attrs.get("Labels") or {}).get(LABEL_LAB) for n in self._networks(None)}
        return sorted(n for n in names if n and not n.startswith("__"))

    def nodes(self, lab: str) -> list[NodeState]:
        return sorted((NodeState(lab, c.labels.get(LABEL_NODE, "?"), c.name, c.status,
                                 (c.attrs.get("Config") or {}).get("Image", ""), c.labels.get(LABEL_SPEC, ""),
                                 c.labels.get(LABEL_SOURCE, ""))
                       for c in self._containers(lab)), key=lambda n: n.node)

    def links(self, lab: str) -> list[LinkState]:
        result = []
        for net in self._networks(lab):
            config = ((net.attrs.get("IPAM") or {}).get("Config") or [{}])[0]
            result.append(LinkState(lab, (net.attrs.get("Labels") or {}).get(LABEL_LINK, "?"), net.name,
                                    config.get("Subnet", ""), config.get("Gateway", "")))
        return sorted(result, key=lambda l: l.link)

    # --- deploy --------------------------------------------------------------

    def deploy(self, plan: LabPlan, image: str, progress: Progress | None = None) -> DeployReport:
        progress = progress or _quiet
        report = DeployReport()
        created: list[tuple[str, str]] = []  # (kind, id) made by this call, for rollback
        lock = threading.Lock()

        def remember(kind: str, ident: str) -> None:
            with lock:
                created.append((kind, ident))

        try:
            self._reconcile(plan, image, progress, report, remember)
        except BaseException:
            # All or nothing: whatever this call made goes, whether the engine failed,
            # a node's setup failed or the user pressed Ctrl-C.
            progress("rolling back what this run created")
            self._remove_objects(created)
            raise
        return report

    def _reconcile(self, plan: LabPlan, image: str, progress: Progress, report: DeployReport,
                   remember: Callable[[str, str], None]) -> None:
        wanted_links = {link.name: link for link in plan.links}
        wanted_nodes = {node.name: node for node in plan.nodes}
        networks = {(n.attrs.get("Labels") or {}).get(LABEL_LINK): n for n in self._networks(plan.lab)}
        containers = {c.labels.get(LABEL_NODE): c for c in self._containers(plan.lab)}

        stale_networks = {name: net for name, net in networks.items()
                          if name not in wanted_links or (net.attrs.get("Labels") or {}).get(LABEL_SPEC) != wanted_links[name].spec_hash()}
        stale_network_names = {net.name for net in stale_networks.values()}
        stale_containers = {}
        for name, ctr in containers.items():
            attached = set(((ctr.attrs.get("NetworkSettings") or {}).get("Networks") or {}).keys())
            if (name not in wanted_nodes or ctr.labels.get(LABEL_SPEC) != wanted_nodes[name].spec_hash(image)
                    or ctr.status != "running" or attached & stale_network_names):
                stale_containers[name] = ctr
        for name, ctr in stale_containers.items():
            progress(f"removing node {name} (changed or not running)")
            ctr.remove(force=True)
            report.removed.append(ctr.name)
        for name, net in stale_networks.items():
            progress(f"removing link {name} (changed)")
            net.remove()
            report.removed.append(net.name)

        if any(link.name not in networks or link.name in stale_networks for link in plan.links):
            self._allow_bridged_frames(image, progress)
        for link in plan.links:
            if link.name in networks and link.name not in stale_networks:
                report.kept.append(link.network)
                continue
            progress(f"creating link {link.name} {link.subnet}")
            self._create_network(plan, link, remember)
            report.created.append(link.network)

        todo = [node for node in plan.nodes if node.name not in containers or node.name in stale_containers]
        kept = [wanted_nodes[n] for n in containers if n in wanted_nodes and n not in stale_containers]
        report.kept.extend(node.container for node in kept)
        if todo:
            self._create_nodes(plan, todo, image, progress, remember)
            report.created.extend(node.container for node in todo)
        if report.changed and kept:
            # Nodes that stay learn the names of the new ones.
            self._refresh_hosts(plan.lab, kept)

    def _allow_bridged_frames(self, image: str, progress: Progress) -> None:
        """See labctl/agent/hostfw.py: without this, br_netfilter hosts drop routed lab traffic.

        As root on the engine's own host, the rule is checked in place (milliseconds);
        otherwise a short-lived helper on the host's network namespace does it.
        """
        if self._engine_is_local() and os.geteuid() == 0 and shutil.which("iptables"):
            from ..agent import hostfw

            try:
                actions = hostfw.ensure()["actions"]
            except (OSError, subprocess.CalledProcessError):
                actions = None
            if actions is not None:
                if any("added" in a for a in actions):
                    progress("allowed bridged frames on lab bridges in the host's DOCKER-USER chain")
                return
        labels = {LABEL_OWNER: OWNER, LABEL_LAB: "__host__", LABEL_ROLE: "host-firewall"}
        try:
            output = self.client.containers.run(image, [*AGENT, "host-bridge-accept"], network_mode="host", cap_add=["NET_ADMIN"],
                                                labels=labels, remove=True, stdout=True, stderr=True)
        except docker.errors.ContainerError as exc:
            raise EngineError(f"cannot let lab frames through the host's bridge filter: {_reason(exc)}") from None
        actions = json.loads(output).get("actions", [])
        if any("added" in a for a in actions):
            progress("allowed bridged frames on lab bridges in the host's DOCKER-USER chain")

    def _engine_is_local(self) -> bool:
        host = os.environ.get("DOCKER_HOST", "")
        return not host or host.startswith("unix://")

    def _create_network(self, plan: LabPlan, link: LinkPlan, remember: Callable[[str, str], None]) -> None:
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(link.subnet), gateway=str(link.gateway))])
        labels = {LABEL_OWNER: OWNER, LABEL_LAB: plan.lab, LABEL_LINK: link.name, LABEL_SPEC: link.spec_hash()}
        try:
            # internal: Docker adds no route or NAT out of this network, so no lab packet leaves the host.
            net = self.client.networks.create(link.network, driver="bridge", internal=True, ipam=ipam, labels=labels,
                                              check_duplicate=True, options={"com.docker.network.bridge.name": bridge_name(link.network)})
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot create network {link.network} ({link.subnet}): {_reason(exc)}") from None
        remember("network", net.id)

    def _create_nodes(self, plan: LabPlan, todo: list[NodePlan], image: str, progress: Progress,
                      remember: Callable[[str, str], None]) -> None:
        pool = ThreadPoolExecutor(max_workers=min(PARALLEL, len(todo)), thread_name_prefix="labctl-node")
        futures = [pool.submit(self._create_node, plan, node, image, remember) for node in todo]
        try:
            for future in futures:
                future.result()
                progress(f"node {todo[futures.index(future)].name} up")
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)  # let creations in flight finish, so rollback sees them all
            raise
        finally:
            pool.shutdown(wait=True)

    def _create_node(self, plan: LabPlan, node: NodePlan, image: str, remember: Callable[[str, str], None]) -> None:
        first, *rest = node.interfaces
        labels = {LABEL_OWNER: OWNER, LABEL_LAB: plan.lab, LABEL_NODE: node.name, LABEL_SPEC: node.spec_hash(image),
                  LABEL_SOURCE: plan.source, LABEL_ROLE: node.role}
        host_config = self.api.create_host_config(
            cap_add=CAPABILITIES, init=True, network_mode=plan.link(first.link).network,
            sysctls=dict(node.sysctls),
        )
        networking = self.api.create_networking_config(
            {plan.link(first.link).network: self.api.create_endpoint_config(ipv4_address=str(first.address.ip))})
        try:
            ident = self.api.create_container(node.image or image, name=node.container, hostname=node.name, labels=labels,
                                              host_config=host_config, networking_config=networking, detach=True,
                                              stop_signal="SIGKILL")["Id"]
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot create node {node.name}: {_reason(exc)}") from None
        remember("container", ident)
        try:
            for iface in rest:
                self.api.connect_container_to_network(ident, plan.link(iface.link).network, ipv4_address=str(iface.address.ip))
            if node.image:
                # A node on its own image gets the agent copied in; it needs python3 and iproute2.
                self.api.put_archive(ident, "/opt/labctl", _agent_archive())
            self.api.start(ident)
        except docker.errors.APIError as exc:
            raise EngineError(f"cannot start node {node.name}: {_reason(exc)}") from None
        result = self._exec_id(ident, [*_agent_argv(node.image), "setup", json.dumps(node.setup())])
        if result.exit_code != 0:
            raise EngineError(f"setting up node {node.name} failed: {(result.stderr or result.stdout).strip()[-800:]}")

    def _refresh_hosts(self, lab: str, nodes: list[NodePlan]) -> None:
        def refresh(node: NodePlan) -> None:
            result = self._exec_id(self._container_id(lab, node.name), [*_agent_argv(node.image), "hosts", json.dumps(node.hosts_map())])
            if result.exit_code != 0:
                raise EngineError(f"updating names in node {node.name} failed: {result.stderr.strip()[-400:]}")

        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(nodes))) as pool:
            list(pool.map(refresh, nodes))

    # --- teardown --------------------------------------------------------------

    def destroy(self, lab: str | None) -> list[str]:
        containers = self._containers(lab)
        networks = self._networks(lab)
        names = [c.name for c in containers] + [n.name for n in networks]
        self._remove_objects([("container", c.id) for c in containers] + [("network", n.id) for n in networks])
        return names

    def _remove_objects(self, objects: list[tuple[str, str]]) -> None:
        containers = [ident for kind, ident in objects if kind == "container"]
        networks = [ident for kind, ident in objects if kind == "network"]

        def remove_container(ident: str) -> None:
            try:
                self.api.remove_container(ident, force=True, v=True)
            except docker.errors.NotFound:
                pass

        if containers:
            with ThreadPoolExecutor(max_workers=min(PARALLEL, len(containers))) as pool:
                list(pool.map(remove_container, containers))
        for ident in networks:
            try:
                self.api.remove_network(ident)
            except docker.errors.NotFound:
                pass

    # --- running things in nodes ----------------------------------------------

    def _container_id(self, lab: str, node: str, running: bool = True) -> str:
        found = self.client.containers.list(all=True, filters={"label": [f"{LABEL_LAB}={lab}", f"{LABEL_NODE}={node}"]})
        if not found:
            from ..errors import UserError
            raise UserError(f"lab '{lab}' has no node '{node}' up", hint=f"see `labctl status {lab}`")
        if running and found[0].status != "running":
            raise EngineError(f"node {node} of lab {lab} is {found[0].status}, not running", hint=f"run `labctl up {lab}` again")
        return found[0].id

    def exec(self, lab: str, node: str, argv: Sequence[str], *, stdin: bytes | None = None,
             stream: Callable[[bytes, bool], None] | None = None) -> ExecResult:
        return self._exec_id(self._container_id(lab, node), argv, stream=stream)

    def _exec_id(self, ident: str, argv: Sequence[str], stream: Callable[[bytes, bool], None] | None = None) -> ExecResult:
        exec_id = self.api.exec_create(ident, list(argv), stdout=True, stderr=True)["Id"]
        out, err = io.BytesIO(), io.BytesIO()
        for chunk_out, chunk_err in self.api.exec_start(exec_id, stream=True, demux=True):
            if chunk_out:
                out.write(chunk_out)
                if stream:
                    stream(chunk_out, False)
            if chunk_err:
                err.write(chunk_err)
                if stream:
                    stream(chunk_err, True)
        code = self.api.exec_inspect(exec_id).get("ExitCode")
        return ExecResult(code if code is not None else -1, out.getvalue().decode(errors="replace"),
                          err.getvalue().decode(errors="replace"))

    def shell(self, lab: str, node: str, argv: Sequence[str]) -> int:
        ident = self._container_id(lab, node)
        if not sys.stdin.isatty():
            # No terminal to hand over (a script, CI): run it plainly and pass its output through.
            return self._exec_id(ident, argv, stream=lambda chunk, err: (sys.stderr if err else sys.stdout).buffer.write(chunk)).exit_code
        exec_id = self.api.exec_create(ident, list(argv), stdin=True, tty=True, environment={"TERM": os.environ.get("TERM", "xterm")})["Id"]
        sock = self.api.exec_start(exec_id, socket=True, tty=True)
        _pump_terminal(getattr(sock, "_sock", sock), True, lambda h, w: self.api.exec_resize(exec_id, height=h, width=w))
        code = self.api.exec_inspect(exec_id).get("ExitCode")
        return code if code is not None else 0

    def attach(self, lab: str, node: str, argv: Sequence[str]) -> "DockerStream":
        ident = self._container_id(lab, node)
        exec_id = self.api.exec_create(ident, list(argv), stdin=True, stdout=True, stderr=True, tty=False)["Id"]
        return DockerStream(self.api, exec_id, self.api.exec_start(exec_id, socket=True, tty=False))

    def fetch(self, lab: str, node: str, path: str) -> bytes | None:
        ident = self._container_id(lab, node, running=False)
        try:
            chunks, _ = self.api.get_archive(ident, path)
            return b"".join(chunks)
        except docker.errors.NotFound:
            return None

    def set_sysctls(self, lab: str, node: str, values: Mapping[str, str]) -> dict[str, str]:
        # /proc/sys is read-only in nodes, and making it writable there would let a node
        # change the host's kernel.* settings. A short-lived helper that shares only the
        # node's network namespace, and runs only labctl's own code, writes net.* there.
        ident = self._container_id(lab, node)
        image = self.client.containers.get(ident).attrs["Config"]["Image"]
        labels = {LABEL_OWNER: OWNER, LABEL_LAB: "__helper__", LABEL_ROLE: "sysctl"}
        host_config = self.api.create_host_config(network_mode=f"container:{ident}", cap_add=["NET_ADMIN"])
        # What `--security-opt systempaths=unconfined` means: no read-only /proc/sys in this helper.
        host_config["ReadonlyPaths"], host_config["MaskedPaths"] = [], []
        helper = None
        try:
            helper = self.api.create_container(image, [*AGENT, "sysctl", json.dumps(dict(values))], labels=labels,
                                               host_config=host_config)["Id"]
            self.api.start(helper)
            code = self.api.wait(helper, timeout=30)["StatusCode"]
            output = self.api.logs(helper, stdout=True, stderr=False)
            if code != 0:
                raise EngineError(f"setting {', '.join(values)} on {node} failed: {self.api.logs(helper, stdout=False, stderr=True).decode(errors='replace').strip()[-300:]}")
        except docker.errors.APIError as exc:
            raise EngineError(f"setting {', '.join(values)} on {node} failed: {_reason(exc)}") from None
        finally:
            if helper:
                self.api.remove_container(helper, force=True)
        return json.loads(output)["previous"]

    def probe(self, image: str, argv: Sequence[str]) -> ExecResult:
        labels = {LABEL_OWNER: OWNER, LABEL_LAB: "__probe__", LABEL_ROLE: "probe"}
        ctr = self.client.containers.run(image, detach=True, network_mode="none", cap_add=CAPABILITIES, init=True,
                                         labels=labels, stop_signal="SIGKILL")
        try:
            return self._exec_id(ctr.id, argv)
        finally:
            ctr.remove(force=True)


class DockerStream(Stream):
    """An exec with stdin attached. Without a TTY, Docker frames each chunk of output
    with an 8-byte header: stream (1 stdout, 2 stderr), three zero bytes, big-endian size."""

    def __init__(self, api, exec_id: str, sock):
        self.api = api
        self.exec_id = exec_id
        self.sock = sock
        self.raw = getattr(sock, "_sock", sock)

    def write(self, data: bytes) -> None:
        self.raw.sendall(data)

    def read(self) -> tuple[int, bytes] | None:
        header = self._exactly(8)
        if header is None:
            return None
        size = int.from_bytes(header[4:8], "big")
        body = self._exactly(size)
        return None if body is None else (header[0], body)

    def _exactly(self, size: int) -> bytes | None:
        data = bytearray()
        while len(data) < size:
            chunk = self.raw.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def close(self) -> None:
        try:
            self.raw.close()
        except OSError:
            pass

    def exit_code(self) -> int | None:
        return self.api.exec_inspect(self.exec_id).get("ExitCode")


def bridge_name(network: str) -> str:
    # Linux caps interface names at 15 bytes; the prefix lets one host rule cover every lab bridge.
    return "lcbr-" + hashlib.sha256(network.encode()).hexdigest()[:10]


def _agent_argv(custom_image: str | None) -> list[str]:
    return ["env", "PYTHONPATH=/opt/labctl", *AGENT] if custom_image else AGENT


def _agent_archive() -> bytes:
    files = {name: data for name, data in node_image.context_files().items() if name.startswith("labctl/")}
    return node_image.context_tar(files).getvalue()


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).strip()


def _pump_terminal(sock, tty: bool, resize: Callable[[int, int], None]) -> None:
    """Copy between this terminal (in raw mode) and an exec socket until the command ends."""
    import socket as socketmod
    import termios
    import tty as ttymod

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        size = os.get_terminal_size(fd)
        resize(size.lines, size.columns)
        ttymod.setraw(fd)
        inputs = [sock, fd]
        while True:
            readable, _, _ = select.select(inputs, [], [])
            if sock in readable:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if fd in readable:
                data = os.read(fd, 65536)
                if data:
                    sock.sendall(data)
                else:
                    sock.shutdown(socketmod.SHUT_WR)
                    inputs.remove(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
