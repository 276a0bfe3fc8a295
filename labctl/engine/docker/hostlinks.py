"""Lab links wired from the host, as containerlab does: a bridge per link, a veth per interface.

Docker's own networks cost most of a big lab's `up` and `down` (dockerd creates and removes
them one at a time, and every container start and removal on them goes through libnetwork):
on a 100-node lab, more than the containers themselves. When labctl runs as root beside the
engine, nodes are created without Docker networks (``network_mode: none``) and wired over
netlink instead: each link is a Linux bridge on the host (named ``bridge_name`` of the link's
network name, the ``lcbr-`` prefix the host firewall rules already cover), each interface a
veth pair whose node end is made directly in the node's network namespace under the link's
name, and whose host end (``lcve-`` and a hash) is a port of the link's bridge. The agent's
setup then gives the node end its address, as it does on Docker's interfaces.

The host holds no address on any of them (no IPv4, and IPv6 is disabled on each before it
comes up, so not even a link-local one): a node has nothing on the host to talk to, and the
host firewall still drops whatever a lab bridge sends the host or would have it route.

Veths and bridges carry no Docker labels: what marks them as labctl's is the name prefix and
an ``ifalias`` (``labctl`` and key=value words: lab, instance, link, node, spec, deploy, ...),
which the inventory reads back. A node end dies with its node's network namespace, and its
host end with it, so removing a node's container removes its interfaces; a bridge goes with
its link.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from dataclasses import dataclass
from typing import Iterable, Mapping
from urllib.parse import quote, unquote

from ...agent import netsetup
from ...agent.protocol import HealthReply, Hosts, Setup
from ...errors import EngineError
from .labels import BRIDGE_PREFIX, VETH_PREFIX

ALIAS_MARK = "labctl"
ALIAS_MAX = 255  # IFALIASZ - 1
MTU = 1500  # what Docker's bridge networks give their interfaces
NODE_END_PREFIX = "lcvn-"  # a veth's node end while it is on the host, for the moment it takes to move it
# gso and gro as ethtool -K names them; tso is every tx-tcp*-segmentation the kernel has (newer
# kernels add kinds, e.g. tx-tcp-accecn-segmentation), which `ethtool -K tso off` turns off together.
OFFLOADS = ("tx-generic-segmentation", "rx-gro")
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0


@dataclass(frozen=True)
class HostLink:
    """A bridge or a veth host end that labctl made: its name, index, what its ifalias says."""

    name: str
    index: int
    kind: str  # "bridge" | "veth"
    meta: Mapping[str, str]
    master: int | None = None  # for a veth: the index of the bridge it is a port of

    @property
    def lab(self) -> str:
        return self.meta.get("lab", "")

    @property
    def key(self) -> str:
        """The lab instance's key (``labctl.instances.lab_key``), as engine names and filters use it."""
        from ...instances import DEFAULT_INSTANCE, lab_key

        return lab_key(self.lab, self.meta.get("instance") or DEFAULT_INSTANCE)


def alias(meta: Mapping[str, str]) -> str:
    text = " ".join([ALIAS_MARK, *(f"{key}={quote(str(value), safe='')}" for key, value in meta.items())])
    if len(text.encode()) > ALIAS_MAX:
        raise EngineError(f"the record of a host link is too long for an interface alias ({len(text)} bytes): {text[:80]}...")
    return text


def parse_alias(text: str | None) -> dict[str, str] | None:
    """What a labctl ifalias says; None when it is not one of ours."""
    words = (text or "").split()
    if not words or words[0] != ALIAS_MARK:
        return None
    return {key: unquote(value) for key, _, value in (word.partition("=") for word in words[1:])}


def importable() -> bool:
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return False
    return True


def available() -> str | None:
    """Why links cannot be wired from here (None: they can), the engine being on this host."""
    if os.environ.get("LABCTL_WIRING", "host") == "docker":
        return "LABCTL_WIRING=docker"
    if os.geteuid() != 0:
        return "labctl is not root"
    if not importable():
        return "pyroute2 is not installed"
    return None


class HostLinks:
    """Netlink on the engine's host: one rtnetlink socket, used by one thread at a time."""

    def __init__(self) -> None:
        self._ipr = None
        self._lock = threading.Lock()

    def _route(self):
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        with self._lock:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

    # --- reading ---------------------------------------------------------------------------------

    def listed(self, lab: str | None = None) -> list[HostLink]:
        """labctl's bridges and veth host ends on the host (of the lab instance whose key is ``lab``;
        all when None): by prefix and ifalias."""
        with self._lock:
            links = self._route().get_links()
        found = []
        for link in links:
            name = link.get_attr("IFLA_IFNAME") or ""
            if not name.startswith((BRIDGE_PREFIX, VETH_PREFIX)):
                continue
            meta = parse_alias(link.get_attr("IFLA_IFALIAS"))
            if meta is None:
                continue  # Docker's own lcbr- bridges (labs wired by Docker networks) carry no alias of ours
            found.append(HostLink(name, link["index"], "bridge" if name.startswith(BRIDGE_PREFIX) else "veth", meta,
                                  link.get_attr("IFLA_MASTER")))
            if lab is not None and found[-1].key != lab:
                found.pop()
        return found

    # --- making ----------------------------------------------------------------------------------

    def create_bridge(self, name: str, meta: Mapping[str, str]) -> None:
        """A bridge with no address (IPv6 off before it comes up: no link-local either)."""
        text = alias(meta)
        with self._lock:
            ipr = self._route()
            try:
                ipr.link("add", ifname=name, kind="bridge", mtu=MTU)
            except Exception as exc:
                raise EngineError(f"cannot create bridge {name}: {_why(exc)}") from None
            index = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=index, ifalias=text)
            _no_ipv6(name)
            ipr.link("set", index=index, state="up")

    def plug(self, pid: int, inside: str, host_end: str, bridge: str, meta: Mapping[str, str], address: str) -> None:
        """A veth pair: ``inside`` moved into the network namespace of process ``pid`` under its link's
        name (down, no IPv4 address yet, its MAC address made from ``address``, see ``mac_for``), its
        segmentation offloads already off; ``host_end`` a port of ``bridge``, up, with no address of
        its own."""
        text = alias(meta)
        staged = NODE_END_PREFIX + host_end[len(VETH_PREFIX):]  # the node's end, while it is still on the host
        with self._lock:
            ipr = self._route()
            found = ipr.link_lookup(ifname=bridge)
            if not found:
                raise EngineError(f"bridge {bridge} is gone")
            in_the_way = ipr.link_lookup(ifname=host_end)
            for stale in ipr.get_links(*in_the_way) if in_the_way else ():
                # The host end of the node this one replaces: its namespace is still being torn down.
                if parse_alias(stale.get_attr("IFLA_IFALIAS")) is None:
                    raise EngineError(f"an interface named {host_end} that is not labctl's is in the way on the host")
                ipr.link("del", index=stale["index"])
            try:
                ipr.link("add", ifname=host_end, kind="veth", mtu=MTU, peer={"ifname": staged, "mtu": MTU, "address": mac_for(address)})
            except Exception as exc:
                raise EngineError(f"cannot make interface {inside} (host end {host_end}): {_why(exc)}") from None
            index = ipr.link_lookup(ifname=host_end)[0]
            ipr.link("set", index=index, ifalias=text)
            _no_ipv6(host_end)
            ipr.link("set", index=index, master=found[0], state="up")
            # Features stay with a device that changes namespace: set here, where no helper is needed.
            _offloads_off(staged)
            ipr.link("set", index=ipr.link_lookup(ifname=staged)[0], net_ns_pid=pid, ifname=inside)

    def shape(self, pid: int, setup: Setup) -> None:
        """What the agent's setup does (``labctl.agent.netsetup.apply``), done from the host for a node
        whose interfaces it plugged: addresses, links up, the lab's routes, a prohibit route to each
        bridge address, the lab's names in /etc/hosts, and last the marker ``health`` reads, saying
        which namespace it was done in. No process starts in the node for any of it."""
        from pyroute2 import IPRoute

        with IPRoute(use_socket=_netlink_in(pid)) as ns:
            index = {}
            for iface in setup.interfaces:
                found = ns.link_lookup(ifname=iface.name)
                if not found:
                    raise EngineError(f"node {setup.node} has no interface {iface.name}")
                index[iface.name] = found[0]
                address, _, prefix = iface.address.partition("/")
                ns.addr("add", index=found[0], address=address, prefixlen=int(prefix))
                ns.link("set", index=found[0], state="up")
            for route in setup.routes:
                dst = "0.0.0.0/0" if route.to == "default" else route.to
                ns.route("replace", dst=dst, gateway=route.via, oif=index[route.dev], proto="boot")
            # After the lab's own routes, so none can lead there (see netsetup.apply).
            for address in setup.blocked:
                ns.route("replace", dst=f"{address}/32", type="prohibit", proto="boot")
        root = f"/proc/{pid}/root"
        netsetup.write_hosts(Hosts(setup.hosts), root + netsetup.HOSTS_FILE)
        netsetup.mark_configured(setup.spec, root, netsetup.netns_of(pid))

    def remove(self, names: Iterable[str]) -> list[str]:
        """Delete links by name (a veth takes its peer with it); those already gone are skipped."""
        removed = []
        with self._lock:
            ipr = self._route()
            present = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
            for name in names:
                if name not in present:
                    continue
                try:
                    ipr.link("del", index=present[name])
                    removed.append(name)
                except Exception as exc:
                    if getattr(exc, "code", None) != errno.ENODEV:  # a veth whose peer's namespace just took it
                        raise EngineError(f"cannot remove host link {name}: {_why(exc)}") from None
        return removed


def mac_for(address: str) -> str:
    """The MAC address of the interface that holds IPv4 ``address``: 02:42 and the address's four bytes,
    as Docker gives its containers. Not random, because a node that ``up`` replaces (it died, or its
    spec changed) comes back with its addresses but new veths, and its neighbours keep its old MAC in
    their ARP caches, REACHABLE for up to 45 s: frames sent there are flooded to the new node, which
    drops them as not its own, and no connection to it opens until the entry ages out. Made from the
    address, the new interface has the MAC the neighbours already hold; the same lab wired from the
    host or by Docker networks also shows the same MACs in its captures."""
    octets = [int(part) for part in address.split("/")[0].split(".")]
    return "02:42:" + ":".join(f"{octet:02x}" for octet in octets)


def health(pid: int) -> HealthReply:
    """What the agent's ``health`` says in the node whose PID 1 is host process ``pid``, read from the host."""
    try:
        return netsetup.health(f"/proc/{pid}/root", netsetup.netns_of(pid))
    except OSError as exc:  # the node's process went away meanwhile
        return HealthReply(configured=False, detail=f"its namespace cannot be read ({exc.strerror})")


def _offloads_off(name: str) -> None:
    """What `ethtool -K NAME tso off gso off gro off` does: captures show the segments that crossed the wire."""
    from pyroute2.ethtool import Ethtool

    ethtool = Ethtool()
    try:
        features = ethtool.get_features(name)
        for feature, state in features.features.items():
            if feature in OFFLOADS or (feature.startswith("tx-tcp") and feature.endswith("segmentation")):
                state.enable = False
        ethtool.set_features(name, features)
    finally:
        ethtool.close()


def _netlink_in(pid: int) -> socket.socket:
    """An rtnetlink socket in the network namespace of process ``pid``. A namespace is a property of
    a thread: this one enters the node's just to open the socket (which stays bound there) and goes
    back at once; no other thread, and no child process, is involved."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    node = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if _libc().setns(node, CLONE_NEWNET) != 0:
            raise EngineError(f"cannot enter the network namespace of process {pid}: {os.strerror(ctypes.get_errno())}")
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
        finally:
            if _libc().setns(own, CLONE_NEWNET) != 0:  # never leave this thread in a node's namespace
                os.abort()
    finally:
        os.close(own)
        os.close(node)


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _no_ipv6(name: str) -> None:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as fh:
            fh.write("1")
    except FileNotFoundError:
        pass  # a kernel without IPv6: no link-local to fear


def _why(exc: Exception) -> str:
    return str(getattr(exc, "args", [exc])[-1] if getattr(exc, "args", None) else exc)
