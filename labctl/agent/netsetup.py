"""Shape a node's network after its container starts.

The engine attaches one interface per link, either with the planned address
(Docker networks) or already named after its link (links wired from the host);
here each gets its link's name and its address, segmentation offloads go off,
and the lab's routes replace the engine's.
"""

from __future__ import annotations

import json
import os
import shutil

from .protocol import SETUP_MARKER, REQUIRED_TOOLS, HealthReply, Hosts, HostsReply, Inspection, Setup, SetupReply
from .system import run, write_json


def ip_json(*argv: str) -> list[dict]:
    return json.loads(run(["ip", "-j", *argv]).stdout or "[]")


def ip_batch(commands: list[str]) -> None:
    if commands:
        run(["ip", "-batch", "-"], input="\n".join(commands) + "\n")


def missing_tools() -> dict[str, str]:
    """What this node's image lacks of what the agent needs: program -> its Debian package."""
    return {tool: package for tool, package in REQUIRED_TOOLS.items() if shutil.which(tool) is None}


def apply(config: Setup) -> SetupReply:
    missing = missing_tools()
    if missing:
        return SetupReply(ok=False, node=config.node, missing=missing,
                          error=f"the image lacks {', '.join(missing)} (Debian: {', '.join(sorted(set(missing.values())))})")
    actions: list[str] = []
    by_address = {}
    names = set()
    for link in ip_json("addr", "show"):
        names.add(link["ifname"])
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                by_address[f"{addr['local']}/{addr['prefixlen']}"] = link["ifname"]
    wanted = {i.address: i.name for i in config.interfaces}
    # Interfaces wired from the host come named after their link, with no address yet; the
    # engine's own (Docker networks) hold their address under a name of the engine's.
    to_address = [a for a, name in wanted.items() if a not in by_address and name in names]
    missing = [a for a in wanted if a not in by_address and a not in to_address]
    if missing:
        raise RuntimeError(f"no interface holds {', '.join(missing)}; have {sorted(by_address)}")
    ip_batch([f"addr add {a} dev {wanted[a]}" for a in to_address])
    by_address.update({a: wanted[a] for a in to_address})
    actions.extend(f"address {a} on {wanted[a]}" for a in to_address)
    # Rename in two passes so a link called e.g. 'eth1' cannot collide with the engine's eth1.
    renames = [(by_address[a], name) for a, name in wanted.items() if by_address[a] != name]
    batch = [f"link set dev {current} down" for current, _ in renames]
    batch += [f"link set dev {current} name lctmp{k}" for k, (current, _) in enumerate(renames)]
    batch += [f"link set dev lctmp{k} name {name}" for k, (_, name) in enumerate(renames)]
    ip_batch(batch)
    actions.extend(f"renamed interface {current} to {name}" for current, name in renames)
    # Without this, captures show super-segments merged by GSO/GRO that never crossed a wire.
    for name in wanted.values():
        run(["ethtool", "-K", name, "gso", "off", "tso", "off", "gro", "off"], check=False)
    # One `ip -batch` for the rest: a process per command would dominate a node's start-up.
    batch = [f"link set dev {name} up" for name in wanted.values()]
    # The engine's default route leads out of the lab: no lab packet may take it.
    if any(route.get("dst") == "default" for route in ip_json("route", "show")):
        batch.append("route del default")
        actions.append("removed the engine's default route")
    for route in config.routes:
        batch.append(f"route replace {route.to} via {route.via} dev {route.dev}")
        actions.append(f"route {route.to} via {route.via} dev {route.dev}")
    # The bridge address of each link is the host's: after the lab's own routes, so none of them
    # can lead there. A /32 wins over every shorter route, the connected one included; the kernel
    # answers a node's packet to it with "prohibited" and sends nothing.
    for address in config.blocked:
        batch.append(f"route replace prohibit {address}/32")
        actions.append(f"no route to the host at {address}")
    ip_batch(batch)
    write_hosts(Hosts(config.hosts))
    # Last: a node counts as configured only once everything above is in place.
    mark_configured(config.spec)
    return SetupReply(node=config.node, actions=tuple(actions))


def mark_configured(spec: str, root: str = "", netns: str | None = None) -> None:
    """The marker ``health`` reads: setup finished, for this spec, in this network namespace. ``root``
    and ``netns``: written from outside the node (the engine shaped it from the host)."""
    write_json(root + SETUP_MARKER, {"spec": spec, "netns": netns or _netns()})


def _netns(ns: str = "/proc/self/ns/net", init: str = "/proc/1") -> str:
    """This container's life: its network namespace and when its PID 1 started (a namespace's
    number can be reused by the next one; a restarted container's PID 1 starts anew). From the
    host: ``ns`` and ``init`` are those of the container's PID 1 as the host sees it."""
    with open(f"{init}/stat") as fh:
        started = fh.read().rsplit(")", 1)[1].split()[19]  # field 22, starttime, counted after the name
    return f"{os.readlink(ns)} pid1@{started}"


def netns_of(pid: int) -> str:
    """What ``_netns`` says inside the container whose PID 1 is host process ``pid``."""
    return _netns(f"/proc/{pid}/ns/net", f"/proc/{pid}")


def health(root: str = "", netns: str | None = None) -> HealthReply:
    """Whether setup finished here: its marker, written in this very network namespace. ``root`` and
    ``netns``: asked from outside the node (its root as the host sees it, and ``netns_of`` its PID 1)."""
    try:
        with open(root + SETUP_MARKER) as fh:
            marker = json.load(fh)
    except FileNotFoundError:
        return HealthReply(configured=False, detail="its setup never finished")
    except (OSError, ValueError) as exc:
        return HealthReply(configured=False, detail=f"its setup marker is unreadable ({exc})")
    if not isinstance(marker, dict) or marker.get("netns") != (netns or _netns()):
        return HealthReply(configured=False, spec=str(marker.get("spec", "")) if isinstance(marker, dict) else "",
                           detail="it was restarted since its setup (a new network namespace, without the lab's setup)")
    return HealthReply(configured=True, spec=str(marker.get("spec", "")))


HOSTS_FILE = "/etc/hosts"
BEGIN, END = "# labctl: lab nodes (begin)", "# labctl: lab nodes (end)"


def write_hosts(request: Hosts, path: str = HOSTS_FILE) -> HostsReply:
    """Every other node by name, at its address on the path from this node.

    A block of our own in /etc/hosts, rewritten in place when the lab changes
    (the engine bind-mounts this file, so it cannot be replaced, only rewritten).
    """
    with open(path) as fh:
        lines = fh.read().splitlines()
    if BEGIN in lines and END in lines:
        lines = lines[:lines.index(BEGIN)] + lines[lines.index(END) + 1:]
    block = [BEGIN, *(f"{address}\t{name}" for name, address in request.hosts.items()), END]
    with open(path, "w") as fh:
        fh.write("\n".join(lines + block) + "\n")
    return HostsReply(hosts=len(request.hosts))


def inspect() -> Inspection:
    interfaces = []
    for link in ip_json("addr", "show"):
        if link["ifname"] == "lo":
            continue
        interfaces.append({
            "name": link["ifname"],
            "state": link.get("operstate"),
            "mac": link.get("address"),
            "addresses": [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("family") == "inet"],
        })
    shown = ip_json("route", "show")
    routes = [
        {"to": r.get("dst"), "via": r.get("gateway"), "dev": r.get("dev"), "scope": r.get("scope")}
        for r in shown if r.get("type", "unicast") == "unicast"
    ]
    blocked = [r.get("dst") for r in shown if r.get("type") == "prohibit"]
    from . import impair, loop, startup

    return Inspection(interfaces=tuple(interfaces), routes=tuple(routes), impairments=tuple(impair.in_force()),
                      loop=loop.status().state or None, blocked=tuple(blocked), health=health(),
                      services=tuple(startup.services().services))
