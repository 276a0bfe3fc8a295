"""Lab -> plan: the subnets, addresses, routes, names and sysctls each node gets."""

from __future__ import annotations

import json
import textwrap
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from labctl.errors import LabFileError, UserError
from labctl.loader import load_lab, load_lab_text
from labctl.plan import RoutePlan, plan_lab

LAB_FILE = Path("lab.yaml")
IMAGE = "labctl-node:test"


def load(text: str):
    return load_lab_text(textwrap.dedent(text).lstrip("\n"), LAB_FILE, {})


def plan(text: str, in_use: dict[IPv4Network, str] | None = None):
    return plan_lab(load(text), in_use or {})


def address(plan_, node: str, link: str) -> IPv4Interface:
    (found,) = [i.address for i in plan_.node(node).interfaces if i.link == link]
    return found


def routes(plan_, node: str) -> list[tuple[str, str, str]]:
    return [(r.to, str(r.via), r.dev) for r in plan_.node(node).routes]


@pytest.fixture(autouse=True)
def default_pool(monkeypatch):
    monkeypatch.delenv("LABCTL_SUBNET_POOL", raising=False)


@pytest.fixture
def teardown():
    return plan_lab(load_lab("teardown"), {})


# --- the built-in teardown lab: client - router - server ---------------------

def test_teardown_numbers_endpoints_from_one_and_keeps_the_fixed_address(teardown):
    assert address(teardown, "client", "left") == IPv4Interface("10.250.1.1/24")
    assert address(teardown, "router", "left") == IPv4Interface("10.250.1.2/24")
    assert address(teardown, "router", "right") == IPv4Interface("10.250.2.1/24")
    assert address(teardown, "server", "right") == IPv4Interface("10.250.2.10/24")


def test_the_bridge_gateway_is_the_last_usable_address(teardown):
    assert [(link.name, str(link.subnet), str(link.reserved)) for link in teardown.links] == [
        ("left", "10.250.1.0/24", "10.250.1.254"),
        ("right", "10.250.2.0/24", "10.250.2.254"),
    ]


def test_the_client_reaches_the_far_subnet_through_the_routers_near_address(teardown):
    assert routes(teardown, "client") == [("10.250.2.0/24", "10.250.1.2", "left")]
    assert routes(teardown, "server") == [("10.250.1.0/24", "10.250.2.1", "right")]


def test_a_router_on_every_link_needs_no_routes_but_forwards(teardown):
    router = teardown.node("router")
    assert router.routes == ()
    sysctls = dict(router.sysctls)
    assert sysctls["net.ipv4.ip_forward"] == "1"
    assert sysctls["net.ipv4.conf.all.rp_filter"] == "0"
    assert sysctls["net.ipv4.conf.default.rp_filter"] == "0"


def test_hosts_do_not_forward(teardown):
    # Said outright: a new network namespace may inherit ip_forward=1 from the host (issue 11).
    assert dict(teardown.node("client").sysctls)["net.ipv4.ip_forward"] == "0"


def test_every_node_has_ipv6_disabled(teardown):
    for node in teardown.nodes:
        sysctls = dict(node.sysctls)
        assert sysctls["net.ipv6.conf.all.disable_ipv6"] == "1", node.name
        assert sysctls["net.ipv6.conf.default.disable_ipv6"] == "1", node.name


def test_a_nodes_own_sysctls_are_kept(teardown):
    assert dict(teardown.node("server").sysctls)["net.ipv4.tcp_timestamps"] == "1"


def test_hosts_entries_give_the_address_on_the_path(teardown):
    # The router has two addresses: the client must know it by the one on its own link.
    assert dict(teardown.node("client").hosts) == {"router": IPv4Address("10.250.1.2"), "server": IPv4Address("10.250.2.10")}
    assert dict(teardown.node("server").hosts) == {"router": IPv4Address("10.250.2.1"), "client": IPv4Address("10.250.1.1")}


def test_interface_names_are_link_names(teardown):
    assert [i.name for i in teardown.node("router").interfaces] == ["left", "right"]
    for node in teardown.nodes:
        for interface in node.interfaces:
            assert interface.name == interface.link


def test_engine_objects_are_named_after_the_lab(teardown):
    from labctl.engine.docker.labels import container_name, network_name

    assert container_name(teardown.lab, "client") == "labctl-teardown-client"
    assert network_name(teardown.lab, "left") == "labctl-teardown-left"


# --- subnets from the pool ---------------------------------------------------------

NO_SUBNETS = """
    name: t
    nodes:
      client: {}
      router: {role: router}
      server: {}
    links:
      - {name: left, endpoints: [client, router]}
      - {name: right, endpoints: [router, server]}
    """


def test_the_pool_hands_out_its_last_free_slash_24s_in_link_order():
    # From the top down, away from the fixed subnets built-in labs write near the bottom.
    p = plan(NO_SUBNETS)
    assert [str(link.subnet) for link in p.links] == ["10.250.255.0/24", "10.250.254.0/24"]


def test_the_pool_skips_subnets_other_networks_hold():
    in_use = {IPv4Network("10.250.255.0/24"): "othernet", IPv4Network("10.250.254.128/25"): "thirdnet"}
    p = plan(NO_SUBNETS, in_use)
    assert [str(link.subnet) for link in p.links] == ["10.250.253.0/24", "10.250.252.0/24"]


def test_the_pool_skips_a_subnet_the_lab_itself_gives_to_a_later_link():
    p = plan("""
        name: t
        nodes:
          client: {}
          router: {role: router}
          server: {}
        links:
          - {name: left, endpoints: [client, router]}
          - {name: right, endpoints: [router, server], subnet: 10.250.255.0/24}
        """)
    assert str(p.link("left").subnet) == "10.250.254.0/24"
    assert str(p.link("right").subnet) == "10.250.255.0/24"


def test_the_same_lab_and_networks_in_use_give_the_same_plan():
    in_use = {IPv4Network("10.250.0.0/24"): "othernet"}
    assert plan(NO_SUBNETS, in_use) == plan(NO_SUBNETS, in_use)
    assert plan(NO_SUBNETS, in_use).to_json() == plan(NO_SUBNETS, dict(in_use)).to_json()


def test_an_exhausted_pool_is_reported_at_the_link_left_without_a_subnet():
    loaded = load("""
        name: t
        subnet_pool: 10.9.0.0/24
        nodes:
          client: {}
          router: {role: router}
          server: {}
        links:
          - {name: left, endpoints: [client, router]}
          - {name: right, endpoints: [router, server]}   # <- line 9
        """)
    with pytest.raises(LabFileError) as caught:
        plan_lab(loaded, {})
    err = caught.value
    assert isinstance(err, UserError) and err.exit_code == 2
    assert (err.location.file, err.location.line, err.location.field) == (LAB_FILE, 9, "links[1]")
    assert "no free /24 left in the subnet pool 10.9.0.0/24" in err.message


def test_a_subnet_held_by_another_network_is_refused_at_the_links_subnet():
    loaded = load("""
        name: t
        nodes:
          client: {}
          router: {role: router}
          server: {}
        links:
          - name: left
            endpoints: [client, router]
            subnet: 10.250.1.0/24
          - name: right
            endpoints: [router, server]
            subnet: 10.250.2.0/24    # <- line 12
        """)
    with pytest.raises(LabFileError) as caught:
        plan_lab(loaded, {IPv4Network("10.250.2.128/25"): "othernet"})
    err = caught.value
    assert isinstance(err, UserError) and err.exit_code == 2
    assert (err.location.file, err.location.line, err.location.field) == (LAB_FILE, 12, "links[1].subnet")
    assert "overlaps 10.250.2.128/25 of the existing network 'othernet'" in err.message


# --- routes through a chain of routers ----------------------------------------------

CHAIN = """
    name: chain
    nodes:
      h1: {}
      r1: {role: router}
      r2: {role: router}
      r3: {role: router}
      h2: {}
    links:
      - {name: a, endpoints: [h1, r1], subnet: 10.0.1.0/24}
      - {name: b, endpoints: [r1, r2], subnet: 10.0.2.0/24}
      - {name: c, endpoints: [r2, r3], subnet: 10.0.3.0/24}
      - {name: d, endpoints: [r3, h2], subnet: 10.0.4.0/24}
    """


def test_in_a_chain_a_host_sends_everything_far_to_its_one_router():
    p = plan(CHAIN)
    assert routes(p, "h1") == [("10.0.2.0/24", "10.0.1.2", "a"), ("10.0.3.0/24", "10.0.1.2", "a"), ("10.0.4.0/24", "10.0.1.2", "a")]
    assert routes(p, "h2") == [("10.0.1.0/24", "10.0.4.1", "d"), ("10.0.2.0/24", "10.0.4.1", "d"), ("10.0.3.0/24", "10.0.4.1", "d")]


def test_in_a_chain_each_router_sends_each_way_to_its_neighbour():
    p = plan(CHAIN)
    # r1 is .1 on b, r2 is .2 on b and .1 on c, r3 is .2 on c.
    assert routes(p, "r1") == [("10.0.3.0/24", "10.0.2.2", "b"), ("10.0.4.0/24", "10.0.2.2", "b")]
    assert routes(p, "r2") == [("10.0.1.0/24", "10.0.2.1", "b"), ("10.0.4.0/24", "10.0.3.2", "c")]
    assert routes(p, "r3") == [("10.0.1.0/24", "10.0.3.1", "c"), ("10.0.2.0/24", "10.0.3.1", "c")]


def test_a_shortcut_between_routers_is_taken_over_the_long_way():
    p = plan(CHAIN + "  - {name: e, endpoints: [r1, r3], subnet: 10.0.5.0/24}\n")
    # r1 reaches h2's link d through r3 directly (r3 is .2 on e), not through r2.
    assert ("10.0.4.0/24", "10.0.5.2", "e") in routes(p, "r1")
    assert ("10.0.1.0/24", "10.0.5.1", "e") in routes(p, "r3")
    # r2 still sits between them: both ways out of it stay direct.
    assert ("10.0.4.0/24", "10.0.3.2", "c") in routes(p, "r2")
    assert dict(p.node("h1").hosts)["h2"] == IPv4Address("10.0.4.2")


def test_a_host_between_two_routers_uses_the_nearer_one_for_each_subnet():
    p = plan("""
        name: t
        nodes:
          west: {role: router}
          h: {}
          east: {role: router}
          far: {}
        links:
          - {name: w, endpoints: [west, h], subnet: 10.0.1.0/24}
          - {name: e, endpoints: [h, east], subnet: 10.0.2.0/24}
          - {name: x, endpoints: [east, far], subnet: 10.0.3.0/24}
        """)
    assert routes(p, "h") == [("10.0.3.0/24", "10.0.2.2", "e")]


def test_of_two_routers_on_a_far_link_the_nearer_one_is_the_way_in():
    p = plan("""
        name: t
        nodes:
          h: {}
          r1: {role: router}
          r2: {role: router}
          r3: {role: router}
        links:
          - {name: a, endpoints: [h, r2, r1], subnet: 10.0.1.0/24}
          - {name: b, endpoints: [r2, r3], subnet: 10.0.2.0/24}
          - {name: x, endpoints: [r3, r1], subnet: 10.0.3.0/24}
        """)
    # x is one hop away through r1 (.3 on a) and two through r2 (.2) then r3.
    assert routes(p, "h") == [("10.0.2.0/24", "10.0.1.2", "a"), ("10.0.3.0/24", "10.0.1.3", "a")]


# --- hand-written routes --------------------------------------------------------------

def test_explicit_routes_replace_the_computed_ones():
    p = plan("""
        name: t
        nodes:
          client:
            routes:
              - {to: default, via: router}
              - {to: 192.0.2.0/24, via: 10.250.1.2}
          router: {role: router}
          server: {}
        links:
          - {name: left, endpoints: [client, router], subnet: 10.250.1.0/24}
          - {name: right, endpoints: [router, server], subnet: 10.250.2.0/24}
        """)
    assert p.node("client").routes == (
        RoutePlan("default", IPv4Address("10.250.1.2"), "left"),
        RoutePlan("192.0.2.0/24", IPv4Address("10.250.1.2"), "left"),
    )
    # Only the node that lists routes loses the computed ones.
    assert routes(p, "server") == [("10.250.1.0/24", "10.250.2.1", "right")]


# --- what tells a running container it is out of date ---------------------------------

TEARDOWN_LIKE = """
    name: t
    nodes:
      client: {{}}
      router: {{role: router}}
      server: {{}}
    links:
      - {{name: left, endpoints: [client, router], subnet: 10.250.1.0/24}}
      - name: right
        endpoints: [router, server]
        subnet: 10.250.2.0/24
        addresses: {{server: {server}}}
    """


def teardown_like(server_address: str):
    return plan(TEARDOWN_LIKE.format(server=server_address))


def spec_hashes(p) -> dict[str, str]:
    return {node.name: node.spec_hash(IMAGE) for node in p.nodes}


def test_spec_hash_stays_when_nothing_changes():
    assert spec_hashes(teardown_like("10.250.2.10")) == spec_hashes(teardown_like("10.250.2.10"))


def test_spec_hash_changes_for_the_node_whose_address_changes():
    before, after = teardown_like("10.250.2.10"), teardown_like("10.250.2.11")
    assert spec_hashes(after)["server"] != spec_hashes(before)["server"]


def test_a_changed_address_reaches_other_nodes_as_a_name_entry_not_a_new_container():
    # /etc/hosts is rewritten in running nodes, so the client keeps its container.
    before, after = teardown_like("10.250.2.10"), teardown_like("10.250.2.11")
    assert after.node("client").setup().hosts["server"] == "10.250.2.11"
    assert before.node("client").setup().hosts["server"] == "10.250.2.10"
    assert spec_hashes(after)["client"] == spec_hashes(before)["client"]
    assert spec_hashes(after)["router"] == spec_hashes(before)["router"]


def test_spec_hash_changes_with_the_default_image():
    node = teardown_like("10.250.2.10").node("client")
    assert node.spec_hash("labctl-node:a") != node.spec_hash("labctl-node:b")


# --- impairments and routers for loops ---------------------------------------------

IMPAIRED = """
    name: t
    nodes:
      client: {}
      router: {role: router}
      server: {}
    links:
      - name: left
        endpoints: [client, router]
        impair: {delay: 50ms}
      - name: right
        endpoints: [router, server]
        impair:
          - {from: router, loss: 5%, rate: 1mbit}
    """


def impairments(plan_, node: str) -> dict[str, dict]:
    return {i.interface: i.as_dict() for i in plan_.node(node).impairments}


def test_an_impairment_without_from_is_every_endpoints_egress():
    p = plan(IMPAIRED)
    assert impairments(p, "client") == {"left": {"delay_ms": 50.0}}
    assert impairments(p, "router") == {"left": {"delay_ms": 50.0}, "right": {"loss_pct": 5.0, "rate_bit": 1000000}}


def test_an_impairment_from_one_endpoint_leaves_the_others_alone():
    assert impairments(plan(IMPAIRED), "server") == {}


def test_impairments_change_no_container():
    # They are changed in running nodes; a new container would lose every socket and capture.
    plain = plan(IMPAIRED.replace("impair: {delay: 50ms}", "").replace("impair:\n          - {from: router, loss: 5%, rate: 1mbit}", ""))
    assert spec_hashes(plain) == spec_hashes(plan(IMPAIRED))
    assert "impair" not in json.dumps(plan(IMPAIRED).node("router").setup().to_json())


def test_routers_send_no_redirects_so_a_loop_stays_a_loop(teardown):
    sysctls = dict(teardown.node("router").sysctls)
    assert sysctls["net.ipv4.conf.all.send_redirects"] == "0"
    assert sysctls["net.ipv4.conf.default.send_redirects"] == "0"
    assert "net.ipv4.conf.all.send_redirects" not in dict(teardown.node("client").sysctls)


def test_a_running_lab_keeps_the_pool_subnets_it_holds():
    # Planned when another lab held the top of the pool; that lab is gone now.
    held = {"left": IPv4Network("10.250.253.0/24"), "right": IPv4Network("10.250.252.0/24")}
    p = plan_lab(load(NO_SUBNETS), {}, held)
    assert {link.name: link.subnet for link in p.links} == held
    # A held subnet that another network has taken since is not kept.
    p = plan_lab(load(NO_SUBNETS), {IPv4Network("10.250.253.0/24"): "other"}, held)
    assert p.link("left").subnet == IPv4Network("10.250.255.0/24")
