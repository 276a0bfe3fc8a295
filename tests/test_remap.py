"""Fixed subnets moved for an instance (labctl/remap.py and the planner): pure, no engine."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from labctl.errors import LabFileError
from labctl.loader import available_labs, load_lab, load_lab_text, load_scenarios
from labctl.plan import plan_lab
from labctl.remap import SubnetRemap, allocate, remap_scenario

N = IPv4Network
POOL = N("10.250.0.0/16")
LEFT, RIGHT = N("10.250.1.0/24"), N("10.250.2.0/24")


def test_the_default_instance_keeps_the_lab_files_subnets():
    assert not allocate("default", [LEFT, RIGHT], [], POOL)


def test_an_instance_moves_each_fixed_subnet_to_a_free_one_of_its_size():
    taken = [N("10.250.255.0/24")]
    remap = allocate("b", [LEFT, N("10.250.3.0/30")], [*taken, LEFT], POOL)
    moved = dict(remap.moves)
    assert set(moved) == {LEFT, N("10.250.3.0/30")}
    assert moved[LEFT].prefixlen == 24 and moved[N("10.250.3.0/30")].prefixlen == 30
    assert all(new.subnet_of(POOL) and not any(new.overlaps(t) for t in [*taken, LEFT]) for new in moved.values())
    assert not moved[LEFT].overlaps(moved[N("10.250.3.0/30")])


def test_an_instance_keeps_the_subnets_it_holds_while_they_are_free():
    held = N("10.250.100.0/24")
    assert dict(allocate("b", [LEFT], [LEFT], POOL, {LEFT: held}).moves) == {LEFT: held}
    # Taken by someone else meanwhile: it moves on.
    assert dict(allocate("b", [LEFT], [LEFT, held], POOL, {LEFT: held}).moves)[LEFT] != held


def test_no_room_in_the_pool_is_said():
    with pytest.raises(LookupError, match="no free /24 left in the subnet pool 10.250.0.0/23"):
        allocate("b", [LEFT], [N("10.250.0.0/24"), LEFT], N("10.250.0.0/23"))


REMAP = SubnetRemap("b", ((LEFT, N("10.250.200.0/24")), (RIGHT, N("10.250.201.0/24"))))


def test_addresses_keep_their_offset_in_the_moved_subnet():
    assert REMAP.address(IPv4Address("10.250.2.10")) == IPv4Address("10.250.201.10")
    assert REMAP.address(IPv4Address("10.250.3.10")) == IPv4Address("10.250.3.10")  # not a moved subnet
    assert REMAP.network(N("10.250.2.128/25")) == N("10.250.201.128/25")


@pytest.mark.parametrize("text,moved", [
    ("10.250.2.10", "10.250.201.10"),
    ("ping -c 1 10.250.2.10 && nc 10.250.1.1 80", "ping -c 1 10.250.201.10 && nc 10.250.200.1 80"),
    ("10.250.2.10:5000", "10.250.201.10:5000"),
    ("10.250.2.0/24", "10.250.201.0/24"),
    ("to 10.250.2.10.", "to 10.250.201.10."),
    ("10.250.0.0/16", "10.250.0.0/16"),      # a wider network covers both: not moved
    ("10.250.3.4", "10.250.3.4"),            # in no moved subnet
    ("110.250.2.10", "110.250.2.10"),        # not the same address
    ("10.250.2.10.5", "10.250.2.10.5"),      # not an address
    ("net.ipv4.tcp_timestamps", "net.ipv4.tcp_timestamps"),
])
def test_text_moves_only_addresses_in_moved_subnets(text, moved):
    assert REMAP.text(text) == moved


def test_the_mapping_is_what_run_json_records():
    assert REMAP.to_json() == {"instance": "b", "subnets": {"10.250.1.0/24": "10.250.200.0/24", "10.250.2.0/24": "10.250.201.0/24"}}


def addresses(plan) -> list[IPv4Address]:
    found = [i.address.ip for n in plan.nodes for i in n.interfaces]
    found += [r.via for n in plan.nodes for r in n.routes] + [a for n in plan.nodes for _, a in n.hosts]
    found += [link.reserved for link in plan.links] + [a for n in plan.nodes for a in n.blocked]
    return found


def test_a_second_teardown_is_planned_consistently_on_its_own_subnets():
    loaded = load_lab("teardown")
    default = plan_lab(loaded, {})
    other = plan_lab(loaded, {LEFT: "labctl-teardown-left", RIGHT: "labctl-teardown-right"}, {}, "b")
    moved = dict(other.remap.moves)
    assert set(moved) == {LEFT, RIGHT}
    assert {link.name: link.subnet for link in other.links} == {"left": moved[LEFT], "right": moved[RIGHT]}
    # Nothing of the second instance is in the lab file's subnets, and every address is in its own.
    assert not any(a in LEFT or a in RIGHT for a in addresses(other))
    assert all(any(a in s for s in moved.values()) for a in addresses(other))
    # The same offsets: the server is .10 of its right link, as the file says.
    server = other.node("server")
    assert server.interfaces[0].address.ip == moved[RIGHT].network_address + 10
    assert server.hosts_map()["client"] == str(other.node("client").interfaces[0].address.ip)
    client = other.node("client")
    [route] = client.routes
    assert (route.to, route.via) == (str(moved[RIGHT]), other.node("router").interfaces[0].address.ip)
    # Node by node, address by address, the plans say the same thing once mapped back.
    for a, b in zip(addresses(default), addresses(other)):
        assert other.remap.address(a) == b


def test_explicit_routes_and_startup_commands_move_with_their_subnets():
    loaded = load_lab_text("""
name: fixed
nodes:
  client:
    routes: [{to: 10.250.2.0/24, via: 10.250.1.2}]
    startup: ["ping -c 1 -W 1 10.250.2.10 || true"]
  router: {role: router}
  server: {routes: [{to: 10.250.1.0/24, via: router}]}
links:
  - {name: left, endpoints: [client, router], subnet: 10.250.1.0/24}
  - {name: right, endpoints: [router, server], subnet: 10.250.2.0/24, addresses: {server: 10.250.2.10}}
""")
    plan = plan_lab(loaded, {}, {}, "x")
    moved = dict(plan.remap.moves)
    [route] = plan.node("client").routes
    assert route.to == str(moved[RIGHT]) and route.via == moved[LEFT].network_address + 2
    assert plan.node("server").routes[0].to == str(moved[LEFT])
    assert plan.node("client").startup[0].cmd == f"ping -c 1 -W 1 {moved[RIGHT].network_address + 10} || true"


def test_a_route_that_covers_a_moved_subnet_is_refused_at_its_line():
    loaded = load_lab_text("""
name: summary
nodes:
  client:
    routes: [{to: 10.250.0.0/16, via: router}]
  router: {role: router}
  server: {}
links:
  - {name: left, endpoints: [client, router], subnet: 10.250.1.0/24}
  - {name: right, endpoints: [router, server], subnet: 10.250.2.0/24}
""")
    plan_lab(loaded, {})  # the lab itself is fine
    with pytest.raises(LabFileError, match=r"route to 10.250.0.0/16 covers the fixed subnet 10.250.\d.0/24") as caught:
        plan_lab(loaded, {}, {}, "x")
    assert caught.value.location.line == 5


def test_scenario_addresses_move_with_the_lab(tmp_path):
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "lab.yaml").write_text(load_lab("teardown").path.read_text())
    (tmp_path / "scenarios" / "by-address.yaml").write_text("""
name: by-address
steps:
  - {node: server, listen: {port: 5000}, as: lsn}
  - {node: client, connect: {to: 10.250.2.10, port: 5000}, as: c}
  - {node: client, exec: "ping -c 1 10.250.2.10"}
""")
    loaded = load_lab(tmp_path)
    [one] = load_scenarios(loaded, ["by-address"])
    plan = plan_lab(loaded, {LEFT: "a", RIGHT: "b"}, {}, "b")
    moved = remap_scenario(one, plan.remap)
    server = str(plan.node("server").interfaces[0].address.ip)
    assert moved.scenario.steps[1].action.to == server
    assert moved.scenario.steps[2].action == f"ping -c 1 {server}"  # a shell line: an exec step as a string
    assert remap_scenario(one, SubnetRemap()) is one


def test_every_built_in_scenario_survives_a_remap():
    """Dumped, moved and validated again: no scenario of ours loses or changes anything but addresses."""
    for name, path in available_labs().items():
        loaded = load_lab(path)
        if not any(link.subnet for link in loaded.lab.links):
            continue
        remap = plan_lab(loaded, {link.subnet: "x" for link in loaded.lab.links if link.subnet}, {}, "b").remap
        for one in load_scenarios(loaded):
            moved = remap_scenario(one, remap)
            before = one.scenario.model_dump(mode="json", by_alias=True, exclude_none=True)
            assert moved.scenario.model_dump(mode="json", by_alias=True, exclude_none=True) == remap.value(before), (name, one.label)
