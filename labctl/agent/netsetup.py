"""Shape a node's network after its container starts.

The engine attaches one interface per link with the planned address; here
we give each interface its link's name, turn off segmentation offloads and
replace the engine's routes with the lab's.
"""

from __future__ import annotations

import json
import shutil

from .protocol import REQUIRED_TOOLS, Hosts, HostsReply, Inspection, Setup, SetupReply
from .system import run


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
    for link in ip_json("addr", "show"):
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                by_address[f"{addr['local']}/{addr['prefixlen']}"] = link["ifname"]
    wanted = {i.address: i.name for i in config.interfaces}
    missing = [a for a in wanted if a not in by_address]
    if missing:
        raise RuntimeError(f"no interface holds {', '.join(missing)}; have {sorted(by_address)}")
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
    ip_batch(batch)
    write_hosts(Hosts(config.hosts))
    return SetupReply(node=config.node, actions=tuple(actions))


HOSTS_FILE = "/etc/hosts"
BEGIN, END = "# labctl: lab nodes (begin)", "# labctl: lab nodes (end)"


def write_hosts(request: Hosts) -> HostsReply:
    """Every other node by name, at its address on the path from this node.

    A block of our own in /etc/hosts, rewritten in place when the lab changes
    (the engine bind-mounts this file, so it cannot be replaced, only rewritten).
    """
    with open(HOSTS_FILE) as fh:
        lines = fh.read().splitlines()
    if BEGIN in lines and END in lines:
        lines = lines[:lines.index(BEGIN)] + lines[lines.index(END) + 1:]
    block = [BEGIN, *(f"{address}\t{name}" for name, address in request.hosts.items()), END]
    with open(HOSTS_FILE, "w") as fh:
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
    routes = [
        {"to": r.get("dst"), "via": r.get("gateway"), "dev": r.get("dev"), "scope": r.get("scope")}
        for r in ip_json("route", "show")
    ]
    from . import impair, loop

    return Inspection(interfaces=tuple(interfaces), routes=tuple(routes), impairments=tuple(impair.in_force()),
                      loop=loop.status().state or None)
