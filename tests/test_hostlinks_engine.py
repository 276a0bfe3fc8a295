"""Links wired from the host (a bridge per link, a veth per interface) on the real engine.

What the host holds is read with iproute2 (`ip -j`), not with labctl's own inventory: an
independent look at every bridge and veth, their addresses, their IPv6 switch and their
alias. Containment is shown by routing tables and the host's rule counters; the only
packets sent go to the lab's own bridge (the host), where the host drops them.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from labctl import api
from labctl.engine.docker.labels import BRIDGE_PREFIX, VETH_PREFIX, bridge_name, network_name, veth_name

from .conftest import lab_objects

pytestmark = pytest.mark.engine

# A point-to-point link and a shared segment of three.
SEGMENT = """
nodes:
  client: {}
  router: {role: router}
  server: {}
  backup: {}
links:
  - {name: left, endpoints: [client, router]}
  - {name: right, endpoints: [router, server, backup]}
"""


@pytest.fixture(autouse=True)
def host_wired(engine):
    if engine.wiring != "host":
        pytest.fail(f"links are not wired from the host here ({engine.wiring_unavailable}); these tests need root beside the engine")


def host_links() -> list[dict]:
    return json.loads(subprocess.run(["ip", "-d", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout)


def of_lab(lab: str) -> list[dict]:
    return [l for l in host_links() if f"lab={lab} " in (l.get("ifalias") or "") + " "]


def addresses(ifname: str) -> list[dict]:
    shown = json.loads(subprocess.run(["ip", "-j", "addr", "show", "dev", ifname], capture_output=True, text=True, check=True).stdout)
    return shown[0].get("addr_info", [])


def run(engine, lab, node, *argv):
    return engine.exec(lab, node, list(argv))


def test_a_segment_and_a_point_to_point_link_are_bridges_and_veths_with_no_host_address(engine, node_image, make_lab):
    path = make_lab(SEGMENT)
    lab = path.name
    up = api.up(path, engine=engine)
    links = {l["ifname"]: l for l in of_lab(lab)}
    bridges = {bridge_name(network_name(lab, link)) for link in ("left", "right")}
    veths = {veth_name(lab, node.name, iface.link) for node in up.plan.nodes for iface in node.interfaces}
    assert set(links) == bridges | veths
    assert all(len(name) <= 15 for name in links)
    for name in veths:
        bridge = bridge_name(network_name(lab, links[name]["ifalias"].split("link=")[1].split()[0]))
        assert links[name]["master"] == bridge and links[name]["linkinfo"]["info_kind"] == "veth"
    for name in bridges | veths:
        # Nothing of the host is in the lab: no IPv4 address, and IPv6 off before the link came up (not even fe80::).
        assert addresses(name) == [], (name, addresses(name))
        assert open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").read().strip() == "1"
    # No Docker network for the lab at all: the nodes have their own namespace with lo and their links.
    assert engine.client.networks.list(filters={"label": f"org.labctl.lab={lab}"}) == []
    container = engine.client.containers.get(f"labctl-{lab}-router").attrs
    assert container["HostConfig"]["NetworkMode"] == "none"
    # Interfaces carry the links' names, addresses and MTU; offloads are off; the segment and the link carry traffic.
    shown = json.loads(run(engine, lab, "router", "ip", "-j", "addr", "show").stdout)
    by_name = {i["ifname"]: i for i in shown}
    assert set(by_name) == {"lo", "left", "right"}
    assert {a["local"] for a in by_name["right"]["addr_info"]} == {str(up.plan.node("router").interfaces[1].address.ip)}
    assert by_name["left"]["mtu"] == 1500
    offloads = run(engine, lab, "backup", "ethtool", "-k", "right").stdout
    for feature in ("tcp-segmentation-offload", "generic-segmentation-offload", "generic-receive-offload"):
        assert f"{feature}: off" in offloads, offloads
    for source, target in (("client", "backup"), ("server", "backup"), ("backup", "client")):
        ping = run(engine, lab, source, "ping", "-c", "1", "-W", "2", target)
        assert ping.exit_code == 0, (source, target, ping.stdout)
    removed = api.down(path, engine=engine)
    assert set(removed) == {f"labctl-{lab}-{n}" for n in ("client", "router", "server", "backup")} | bridges
    # Every host-side object is gone: by alias and by the names labctl gave them.
    left = [l["ifname"] for l in host_links() if l["ifname"] in bridges | veths or f"lab={lab} " in (l.get("ifalias") or "") + " "]
    assert left == [] and lab_objects(engine, lab) == []


def test_replacing_a_node_keeps_its_neighbours_interfaces(engine, node_image, make_lab):
    path = make_lab(SEGMENT)
    lab = path.name
    api.up(path, engine=engine)
    router_before = run(engine, lab, "router", "ip", "-j", "link", "show").stdout
    (path / "lab.yaml").write_text((path / "lab.yaml").read_text().replace("  server: {}", "  server: {sysctls: {net.ipv4.tcp_timestamps: 0}}"))
    again = api.up(path, engine=engine)
    assert again.report.created == [f"labctl-{lab}-server"] and sorted(again.report.removed) == [f"labctl-{lab}-server"]
    # The router's end of the segment is the same interface; the new server's host end is a port of the same bridge.
    assert json.loads(run(engine, lab, "router", "ip", "-j", "link", "show").stdout) == json.loads(router_before)
    ports = [l for l in of_lab(lab) if l["ifname"].startswith(VETH_PREFIX) and "link=right" in l["ifalias"]]
    assert len(ports) == 3 and {p["master"] for p in ports} == {bridge_name(network_name(lab, "right"))}
    assert run(engine, lab, "client", "ping", "-c", "1", "-W", "2", "server").exit_code == 0
    assert run(engine, lab, "server", "sysctl", "-n", "net.ipv4.tcp_timestamps").stdout.strip() == "0"


def test_a_node_that_dies_and_is_brought_back_is_reached_at_once_by_neighbours_that_knew_it(engine, node_image, make_lab):
    # The router learns the server's MAC; the server dies and `up` makes it again, with new veths.
    # Had they new MACs, the router's REACHABLE entry would send the next frames nowhere for up to 45 s.
    path = make_lab(SEGMENT)
    lab = path.name
    api.up(path, engine=engine)
    assert run(engine, lab, "router", "ping", "-c", "1", "-W", "2", "server").exit_code == 0
    neighbours = json.loads(run(engine, lab, "router", "ip", "-j", "neigh", "show", "dev", "right").stdout)
    engine.client.containers.get(f"labctl-{lab}-server").kill()
    again = api.up(path, engine=engine)
    assert again.report.created == [f"labctl-{lab}-server"]
    mac = run(engine, lab, "server", "cat", "/sys/class/net/right/address").stdout.strip()
    assert mac in {n.get("lladdr") for n in neighbours}, (mac, neighbours)
    after = json.loads(run(engine, lab, "router", "ip", "-j", "neigh", "show", "dev", "right").stdout)
    assert {n["dst"]: n.get("lladdr") for n in after} == {n["dst"]: n.get("lladdr") for n in neighbours}
    assert run(engine, lab, "router", "ping", "-c", "1", "-W", "2", "server").exit_code == 0
    assert run(engine, lab, "client", "ping", "-c", "1", "-W", "2", "server").exit_code == 0


def test_a_lab_on_docker_networks_is_reconciled_on_them_and_comes_back_wired_from_the_host(engine, node_image, make_lab,
                                                                                          monkeypatch):
    from labctl.engine.docker import DockerEngine

    path = make_lab(SEGMENT)
    lab = path.name
    monkeypatch.setenv("LABCTL_WIRING", "docker")
    docker_wired = DockerEngine.connect()
    assert docker_wired.wiring == "docker"
    api.up(path, engine=docker_wired)
    monkeypatch.delenv("LABCTL_WIRING")
    assert len(engine.client.networks.list(filters={"label": f"org.labctl.lab={lab}"})) == 2
    assert of_lab(lab) == []
    # Brought up by an older labctl (or docker-compose): reconciled as it is, a changed node on Docker's networks.
    (path / "lab.yaml").write_text((path / "lab.yaml").read_text().replace("  server: {}", "  server: {sysctls: {net.ipv4.tcp_timestamps: 0}}"))
    again = api.up(path, engine=engine)
    assert again.report.created == [f"labctl-{lab}-server"] and len(again.report.kept) == 5
    assert of_lab(lab) == [] and run(engine, lab, "client", "ping", "-c", "1", "-W", "2", "server").exit_code == 0
    # Down and up again: wired from the host.
    api.down(path, engine=engine)
    api.up(path, engine=engine)
    assert engine.client.networks.list(filters={"label": f"org.labctl.lab={lab}"}) == []
    assert {l["ifname"] for l in of_lab(lab) if l["ifname"].startswith(BRIDGE_PREFIX)} == {
        bridge_name(network_name(lab, link)) for link in ("left", "right")}
    assert run(engine, lab, "client", "ping", "-c", "1", "-W", "2", "backup").exit_code == 0


def rule_packets(chain: str, comment: str) -> int:
    listed = subprocess.run(["iptables-nft", "-w", "-L", chain, "-v", "-x", "-n"], capture_output=True, text=True).stdout
    return sum(int(line.split()[0]) for line in listed.splitlines() if comment in line)


def test_a_node_that_points_at_the_host_is_dropped_there(engine, node_image, make_lab):
    path = make_lab(SEGMENT)
    lab = path.name
    plan = api.up(path, engine=engine).plan
    client = plan.node("client")
    # Routing tables: no default route, the bridge's reserved address prohibited, nothing outside the lab.
    routes = json.loads(run(engine, lab, "client", "ip", "-j", "route", "show").stdout)
    assert not any(r.get("dst") == "default" for r in routes)
    assert {r["dst"] for r in routes if r.get("type") == "prohibit"} == {str(a) for a in client.blocked}
    # No host address to find on the link: ARP for the reserved address goes unanswered.
    bridge = bridge_name(network_name(lab, "left"))
    mac = next(l["address"] for l in host_links() if l["ifname"] == bridge)
    # A node that forces its packets onto the host (its own route undone, the bridge's MAC as next
    # hop) reaches nothing: the host drops them at its rules, counted, and nothing answers.
    reserved = str(client.blocked[0])
    routed_before = rule_packets("FORWARD", "labctl: nothing routed out of a lab") + rule_packets(
        "DOCKER-USER", "labctl: nothing routed out of a lab")
    input_before = rule_packets("INPUT", "labctl: nothing from a lab to the host")
    assert run(engine, lab, "client", "ip", "route", "del", "prohibit", f"{reserved}/32").exit_code == 0
    assert run(engine, lab, "client", "ip", "neigh", "replace", reserved, "lladdr", mac, "dev", "left", "nud", "permanent").exit_code == 0
    ping = run(engine, lab, "client", "ping", "-c", "3", "-i", "0.2", "-W", "1", reserved)
    assert ping.exit_code != 0 and " 0 received" in ping.stdout, ping.stdout
    routed_after = rule_packets("FORWARD", "labctl: nothing routed out of a lab") + rule_packets(
        "DOCKER-USER", "labctl: nothing routed out of a lab")
    dropped = (routed_after - routed_before) + (rule_packets("INPUT", "labctl: nothing from a lab to the host") - input_before)
    assert dropped >= 3, (routed_after - routed_before, dropped)
