"""The API above the engine, on the in-memory engine: up and reconcile bookkeeping, status,
impairment and loop routing, refusals. Fast, no Docker; what the kernel does is the
integration tests' (on the real engine)."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from labctl import api
from labctl.agent import protocol
from labctl.engine.memory import MemoryEngine
from labctl.errors import EngineError, UserError
from tests.conftest import THREE_NODES


@pytest.fixture
def engine() -> MemoryEngine:
    return MemoryEngine()


@pytest.fixture
def lab(tmp_path):
    def write(body: str = THREE_NODES, name: str = "mem"):
        path = tmp_path / name / "lab.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"name: {name}\n{body}")
        return path
    return write


def commands(engine: MemoryEngine, lab: str, node: str) -> list[str]:
    return [command for command, _ in engine.node(lab, node).calls]


def test_up_sets_every_node_up_through_its_agent(engine, lab):
    result = api.up(lab(), engine=engine)
    assert sorted(result.report.created) == ["client", "left", "right", "router", "server"]
    assert result.report.fresh == {"client", "router", "server"}
    client = engine.node("mem", "client")
    assert commands(engine, "mem", "client") == ["setup"]
    assert [i.name for i in client.setup.interfaces] == ["left"]
    assert [r.dev for r in client.setup.routes] == ["left"]  # to the server's subnet via the router
    assert set(client.hosts) == {"router", "server"}


def test_up_twice_changes_nothing_and_asks_no_node_again(engine, lab):
    api.up(lab(), engine=engine)
    again = api.up(lab(), engine=engine)
    assert again.report.created == [] and again.report.removed == [] and again.report.fresh == set()
    # The lab file's wish (none) goes to every node again, which keeps what is in force; no new setup.
    assert commands(engine, "mem", "client") == ["setup", "impair"]


def test_a_new_node_is_made_and_the_others_learn_its_name(engine, lab):
    api.up(lab(), engine=engine)
    bigger = THREE_NODES.replace("  server: {}\n", "  server: {}\n  backup: {}\n").replace(
        "[router, server]}", "[router, server, backup]}")
    result = api.up(lab(bigger), engine=engine)
    assert result.report.fresh == {"backup"}
    assert "client" in result.report.kept
    assert commands(engine, "mem", "client") == ["setup", "hosts", "impair"]
    assert "backup" in engine.node("mem", "client").hosts


def test_status_reads_each_node_through_its_agent(engine, lab):
    api.up(lab(), engine=engine)
    [status] = api.status("mem", engine=engine)
    router = next(n for n in status.nodes if n.name == "router")
    assert [i["name"] for i in router.interfaces] == ["left", "right"]
    assert {l["name"] for l in status.links} == {"left", "right"}
    assert status.loops == []


def test_impairing_one_direction_asks_only_the_sender(engine, lab):
    path = lab()
    plan = api.up(path, engine=engine).plan
    [direction] = api.impair(path, "left", "client", {"delay": "50ms", "loss": "5%"}, engine=engine)
    assert (direction.node, direction.link, direction.mechanism) == ("client", "left", "netem")
    assert direction.settings == {"delay_ms": 50.0, "loss_pct": 5.0}
    [(command, request)] = [c for c in engine.node("mem", "client").calls if c[0] == "impair"]
    assert isinstance(request, protocol.Impair) and request.origin == "runtime"
    router_left = next(str(i.address.ip) for i in plan.node("router").interfaces if i.link == "left")
    assert request.interfaces["left"].peer == router_left  # two endpoints: every packet goes to the router
    assert "impair" not in commands(engine, "mem", "router")
    [status] = api.status("mem", engine=engine)
    [link] = [l for l in status.links if l["name"] == "left"]
    assert [(i["from"], i["settings"]) for i in link["impairments"]] == [("client", {"delay_ms": 50.0, "loss_pct": 5.0})]
    api.impair(path, "left", "client", clear=True, engine=engine)
    [status] = api.status("mem", engine=engine)
    assert all(not l["impairments"] for l in status.links)


def test_a_lab_files_impairment_is_applied_once(engine, lab):
    path = lab(THREE_NODES.replace("[client, router]}", "[client, router], impair: {rate: 1mbit}}"))
    first = api.up(path, engine=engine)
    assert {(d.node, d.mechanism) for d in first.impairments} == {("client", "tbf"), ("router", "tbf")}
    assert all(d.changed for d in first.impairments)
    again = api.up(path, engine=engine)
    assert not any(d.changed for d in again.impairments)


def test_a_loop_is_set_on_both_routers_and_heals(engine, lab):
    body = """
nodes:
  a: {}
  r1: {role: router}
  r2: {role: router}
  b: {}
links:
  - {name: l1, endpoints: [a, r1]}
  - {name: mid, endpoints: [r1, r2]}
  - {name: l2, endpoints: [r2, b]}
"""
    path = lab(body)
    api.up(path, engine=engine)
    result = api.loop(path, "r1", "r2", "5s", engine=engine)
    assert result.link == "mid" and result.routers == ("r1", "r2")
    [status] = api.status("mem", engine=engine)
    assert {l["router"] for l in status.loops} == {"r1", "r2"}
    healed = api.loop(path, "r1", "r2", heal=True, engine=engine)
    assert {router: reply["healed"] for router, reply in healed.items()} == {"r1": True, "r2": True}


def test_a_node_on_an_image_without_tcpdump_is_refused_and_nothing_is_left(lab):
    engine = MemoryEngine(lacking={"mine:1": ["tcpdump"]})
    path = lab(THREE_NODES.replace("  server: {}", '  server: {image: "mine:1"}'))
    with pytest.raises(UserError) as caught:
        api.up(path, engine=engine)
    assert "node server" in caught.value.message and "tcpdump" in caught.value.message
    assert engine.labs() == []


def test_a_node_on_its_own_image_gets_the_agent_copied_in(engine, lab):
    api.up(lab(THREE_NODES.replace("  server: {}", '  server: {image: "mine:1"}')), engine=engine)
    files = engine.node("mem", "server").files
    assert f"{protocol.AGENT_HOME}/labctl/agent/protocol.py" in files
    assert not engine.node("mem", "client").files  # the node image has it


def test_an_agent_of_another_protocol_version_is_a_clear_error(lab):
    engine = MemoryEngine(agent_version=protocol.PROTOCOL_VERSION + 1)
    with pytest.raises(EngineError) as caught:
        api.up(lab(), engine=engine)
    assert "speaks another protocol version" in caught.value.message
    assert engine.labs() == []


def test_subnets_other_networks_hold_are_skipped(lab):
    engine = MemoryEngine(in_use={IPv4Network("10.250.255.0/24"): "someone-else"})
    result = api.up(lab(), engine=engine)
    assert all(link.subnet != IPv4Network("10.250.255.0/24") for link in result.plan.links)


def test_sysctls_go_through_the_network_namespace_helper(engine, lab):
    api.up(lab(), engine=engine)
    previous = engine.set_sysctls("mem", "server", {"net.ipv4.tcp_fin_timeout": 7})
    assert previous == {"net.ipv4.tcp_fin_timeout": "0"}
    assert engine.node("mem", "server").sysctls["net.ipv4.tcp_fin_timeout"] == "7"


def test_down_removes_the_lab(engine, lab):
    api.up(lab(), engine=engine)
    assert sorted(api.down("mem", engine=engine)) == ["client", "left", "right", "router", "server"]
    assert engine.labs() == []
    with pytest.raises(UserError):
        api.status("mem", engine=engine)
