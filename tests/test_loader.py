"""Lab files -> the lab model: what is accepted, and where a refusal points.

Each refusal is checked the way a user meets it: the error type (exit status
2), the line and field it points at, and the words that say what is wrong.
The offending line of each lab is marked ``# <- line N``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from labctl.errors import LabFileError, LabNotFound, UserError
from labctl.loader import load_lab, load_lab_text, resolve_lab_file
from labctl.model import Node

LAB_FILE = Path("lab.yaml")


def lab_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def load(text: str, **params: str):
    return load_lab_text(lab_text(text), LAB_FILE, params)


def refusal(text: str, **params: str) -> LabFileError:
    with pytest.raises(LabFileError) as caught:
        load(text, **params)
    return caught.value


def assert_points_at(err: UserError, *, line: int, field: str | None, says: str) -> None:
    assert isinstance(err, UserError) and err.exit_code == 2
    assert err.location is not None and err.location.file == LAB_FILE
    assert (err.location.line, err.location.field) == (line, field)
    assert says in err.message, err.message


@pytest.fixture(autouse=True)
def only_builtin_labs(monkeypatch, tmp_path):
    # Lab names resolve against the cwd and $LABCTL_LABS_PATH first: keep both empty.
    monkeypatch.delenv("LABCTL_LABS_PATH", raising=False)
    monkeypatch.chdir(tmp_path)


# --- YAML -------------------------------------------------------------------

def test_yaml_syntax_error_points_at_its_line():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: role: router    # <- line 4
        links:
          - {name: left, endpoints: [client, router]}
        """)
    assert_points_at(err, line=4, field=None, says="YAML syntax error")
    assert "mapping values are not allowed" in err.message


def test_two_nodes_with_one_name_are_a_duplicate_key_not_the_last_one_wins():
    err = refusal("""
        name: t
        nodes:
          client: {}
          client: {role: router}  # <- line 4
        links:
          - {name: left, endpoints: [client, client]}
        """)
    assert_points_at(err, line=4, field="nodes.client", says="duplicate key 'client'")


# --- schema -----------------------------------------------------------------

def test_unknown_key_is_refused_and_the_hint_lists_the_allowed_ones():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
          server: {colour: red}   # <- line 5
        links:
          - {name: left, endpoints: [client, router]}
          - {name: right, endpoints: [router, server]}
        """)
    assert_points_at(err, line=5, field="nodes.server.colour", says="unknown key 'colour'")
    assert err.hint == "allowed here: role, image, sysctls, routes, files, startup, packages"


def test_endpoints_given_as_a_string_is_the_wrong_type():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints: client router   # <- line 7
        """)
    assert_points_at(err, line=7, field="links[0].endpoints", says="valid list")
    assert "got str 'client router'" in err.message


def test_a_role_other_than_host_or_router_is_refused():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router:
            role: switch          # <- line 5
        links:
          - {name: left, endpoints: [client, router]}
        """)
    assert_points_at(err, line=5, field="nodes.router.role", says="'switch' is not allowed; expected 'host' or 'router'")


def test_a_node_name_must_be_hostname_safe():
    err = refusal("""
        name: t
        nodes:
          client: {}
          Server: {}              # <- line 4
        links:
          - {name: left, endpoints: [client, Server]}
        """)
    assert_points_at(err, line=4, field="nodes.Server", says="'Server' is not allowed")
    assert "lowercase letters" in err.message


def test_only_network_sysctls_are_per_node():
    err = refusal("""
        name: t
        nodes:
          client: {}
          server:
            sysctls:
              kernel.panic: 1     # <- line 6
        links:
          - {name: left, endpoints: [client, server]}
        """)
    assert_points_at(err, line=6, field="nodes.server.sysctls.kernel.panic", says="'kernel.panic' is not allowed")
    assert "net.*" in err.message


# --- links and nodes ------------------------------------------------------------

def test_an_endpoint_must_be_a_declared_node():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints:
              - client
              - ghost             # <- line 9
        """)
    assert_points_at(err, line=9, field="links[0].endpoints[1]", says="unknown node 'ghost'")
    assert err.hint == "nodes are: client, router"


def test_two_links_with_one_name_are_refused():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
          server: {}
        links:
          - name: left
            endpoints: [client, router]
          - name: left            # <- line 9
            endpoints: [router, server]
        """)
    assert_points_at(err, line=9, field="links[1].name", says="duplicate link name 'left'")
    assert err.hint == "link 0 has the same name"


def test_a_node_listed_twice_on_one_link_is_refused():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints:
              - client
              - router
              - client            # <- line 10
        """)
    assert_points_at(err, line=10, field="links[0].endpoints[2]", says="node 'client' is listed twice on link 'left'")


def test_a_node_on_no_link_is_refused_at_its_name():
    err = refusal("""
        name: t
        nodes:
          client: {}
          server: {}
          lonely:                 # <- line 5
            role: host
        links:
          - {name: left, endpoints: [client, server]}
        """)
    assert_points_at(err, line=5, field="nodes.lonely", says="node 'lonely' is on no link")


def test_a_host_joined_to_another_only_through_a_host_is_unreachable():
    err = refusal("""
        name: t
        nodes:
          alice: {}               # <- line 3
          bob: {}
          carol: {}
        links:
          - {name: ab, endpoints: [alice, bob]}
          - {name: bc, endpoints: [bob, carol]}
        """)
    assert_points_at(err, line=3, field="nodes.alice", says="host 'alice' cannot reach host 'carol'")
    assert "role: router" in err.hint


# --- subnets and addresses ------------------------------------------------------

TWO_LINKS = """
    name: t
    nodes:
      client:
      router:
        role: router
      server:
    links:
      - name: left
        endpoints: [client, router]
        subnet: {left}            # <- line 10
      - name: right
        endpoints: [router, server]
        subnet: {right}           # <- line 13
        addresses:
          server: {server}        # <- line 15
    """


def two_links(left="10.250.1.0/24", right="10.250.2.0/24", server="10.250.2.10") -> str:
    return TWO_LINKS.format(left=left, right=right, server=server)


def test_the_two_links_lab_used_below_is_valid_as_it_stands():
    loaded = load(two_links())
    assert str(loaded.lab.links[1].addresses["server"]) == "10.250.2.10"


def test_subnets_of_two_links_must_not_overlap():
    err = refusal(two_links(left="10.250.0.0/16"))
    assert_points_at(err, line=13, field="links[1].subnet", says="subnet 10.250.2.0/24 overlaps 10.250.0.0/16 of link 'left'")


def test_a_fixed_address_must_be_inside_its_links_subnet():
    err = refusal(two_links(server="10.250.3.10"))
    assert_points_at(err, line=15, field="links[1].addresses.server", says="address 10.250.3.10 is outside the link's subnet 10.250.2.0/24")


@pytest.mark.parametrize(("address", "says"), [
    ("10.250.2.0", "is the network or broadcast address of 10.250.2.0/24"),
    ("10.250.2.255", "is the network or broadcast address of 10.250.2.0/24"),
    ("10.250.2.254", "is reserved for the bridge gateway of 10.250.2.0/24"),
])
def test_a_fixed_address_cannot_be_one_the_subnet_or_bridge_owns(address, says):
    err = refusal(two_links(server=address))
    assert_points_at(err, line=15, field="links[1].addresses.server", says=f"address {address} {says}")


def test_one_address_cannot_be_given_twice_on_a_link():
    err = refusal("""
        name: t
        nodes:
          router: {role: router}
          server: {}
        links:
          - name: right
            endpoints: [router, server]
            subnet: 10.250.2.0/24
            addresses:
              router: 10.250.2.10
              server: 10.250.2.10   # <- line 11
        """)
    assert_points_at(err, line=11, field="links[0].addresses.server", says="address 10.250.2.10 is already given to 'router'")


def test_a_fixed_address_needs_an_explicit_subnet():
    err = refusal("""
        name: t
        nodes:
          router: {role: router}
          server: {}
        links:
          - name: right
            endpoints: [router, server]
            addresses:
              server: 10.250.2.10   # <- line 9
        """)
    assert_points_at(err, line=9, field="links[0].addresses.server", says="a fixed address needs the link's subnet")


def test_a_subnet_must_hold_every_endpoint_and_the_bridge():
    err = refusal(two_links(left="10.250.1.0/30", right="10.250.2.0/24"))
    # A /30 has two usable addresses; the bridge takes one, two endpoints need two.
    assert_points_at(err, line=10, field="links[0].subnet", says="subnet 10.250.1.0/30 is too small for 2 endpoints")


def test_a_slash_29_is_large_enough_for_two_endpoints():
    loaded = load(two_links(left="10.250.1.0/29"))
    assert str(loaded.lab.links[0].subnet) == "10.250.1.0/29"


# --- routes ---------------------------------------------------------------------

def test_a_route_destination_must_be_default_or_a_network():
    err = refusal("""
        name: t
        nodes:
          client:
            routes:
              - to: 10.250.2.1/24   # <- line 5: host bits set
                via: router
          router: {role: router}
        links:
          - {name: left, endpoints: [client, router]}
        """)
    assert_points_at(err, line=5, field="nodes.client.routes[0].to", says="'10.250.2.1/24' is not 'default' or a network")


def test_a_route_next_hop_must_share_a_link_with_the_node():
    err = refusal("""
        name: t
        nodes:
          client:
            routes:
              - to: default
                via: server         # <- line 6
          router: {role: router}
          server: {}
        links:
          - {name: left, endpoints: [client, router]}
          - {name: right, endpoints: [router, server]}
        """)
    assert_points_at(err, line=6, field="nodes.client.routes[0].via", says="next hop 'server' shares no link with 'client'")


# --- Jinja2 -----------------------------------------------------------------------

# The rest of a lab, to follow a first line or two written in each test.
ONE_LINK = lab_text("""
    nodes:
      client: {}
      server: {}
    links:
      - {name: left, endpoints: [client, server]}
    """)


def test_parameters_render_through_jinja2():
    loaded = load_lab_text("name: {{ labname }}\n" + ONE_LINK, LAB_FILE, {"labname": "demo"})
    assert loaded.lab.name == "demo"
    assert loaded.params == {"labname": "demo"}


def test_a_missing_parameter_is_named_with_its_line():
    err = refusal("name: t\ndescription: '{{ purpose }}'\n" + ONE_LINK)
    assert_points_at(err, line=2, field=None, says="template parameter missing: 'purpose' is undefined")
    assert "-p NAME=VALUE" in err.hint


def test_a_template_syntax_error_points_at_its_line():
    err = refusal("name: t\ndescription: '{{ 1 + }}'\n" + ONE_LINK)
    assert_points_at(err, line=2, field=None, says="template syntax error")


def test_the_sandbox_refuses_to_reach_python_internals():
    err = refusal("name: t\ndescription: \"{{ ''.__class__.__mro__ }}\"\n" + ONE_LINK)
    assert_points_at(err, line=2, field=None, says="template not allowed")
    assert "'__class__'" in err.message and "unsafe" in err.message


# --- finding labs, and what is accepted ---------------------------------------------

def test_a_lab_name_that_does_not_exist_is_not_found():
    with pytest.raises(LabNotFound) as caught:
        resolve_lab_file("no-such-lab")
    err = caught.value
    assert isinstance(err, UserError) and err.exit_code == 2
    assert err.location is None  # there is no file to point into
    assert "no lab named 'no-such-lab'" in err.message
    assert "built-in labs: " in err.hint and "teardown" in err.hint


def test_loading_a_lab_that_does_not_exist_is_not_found():
    with pytest.raises(LabNotFound, match="no lab named 'no-such-lab'"):
        load_lab("no-such-lab")


def test_a_directory_without_a_lab_file_is_not_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabNotFound, match="without a lab.yaml"):
        resolve_lab_file(tmp_path / "empty")


def test_the_builtin_teardown_lab_loads():
    loaded = load_lab("teardown")
    assert loaded.path == Path(__file__).resolve().parent.parent / "labs" / "teardown" / "lab.yaml"
    lab = loaded.lab
    assert lab.name == "teardown"
    assert list(lab.nodes) == ["client", "router", "server"]
    assert lab.routers() == ["router"]
    assert lab.nodes["server"].sysctls == {"net.ipv4.tcp_timestamps": 1, "net.ipv4.tcp_rfc1337": 1}
    assert lab.nodes["client"].sysctls == {"net.ipv4.tcp_rfc1337": 1}
    assert [(link.name, link.endpoints) for link in lab.links] == [("left", ["client", "router"]), ("right", ["router", "server"])]


def test_a_node_with_nothing_after_its_name_is_a_default_host():
    loaded = load("""
        name: t
        nodes:
          client:
          server: {}
        links:
          - {name: left, endpoints: [client, server]}
        """)
    assert loaded.lab.nodes["client"] == Node()
    assert loaded.lab.nodes["client"].role == "host"


# --- link impairments -------------------------------------------------------

def test_an_impairment_in_the_file_is_one_entry_per_direction():
    lab = load("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints: [client, router]
            impair:
              - {from: client, delay: 50ms, jitter: 10ms, distribution: normal}
              - {from: router, loss: 5%, loss_correlation: 25%, rate: 1mbit, limit: 100}
        """).lab
    toward, back = lab.links[0].impairments()
    assert toward.from_ == "client" and toward.settings() == {"delay_ms": 50.0, "jitter_ms": 10.0, "distribution": "normal"}
    assert back.settings() == {"loss_pct": 5.0, "loss_correlation_pct": 25.0, "rate_bit": 1000000, "limit": 100}


def test_a_loss_above_100_percent_is_refused_at_its_line():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints: [client, router]
            impair: {loss: 150%}  # <- line 8
        """)
    assert_points_at(err, line=8, field="links[0].impair.loss", says="'150%' is outside 0% to 100%")


def test_a_negative_delay_is_refused_at_its_line():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints: [client, router]
            impair:
              delay: -3ms         # <- line 9
        """)
    assert_points_at(err, line=9, field="links[0].impair.delay", says="'-3ms': a duration cannot be negative")


def test_a_rate_without_a_unit_is_refused():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints: [client, router]
            impair:
              - {from: client, rate: fast}   # <- line 9
        """)
    assert_points_at(err, line=9, field="links[0].impair[0].rate", says="'fast' is not a rate")


def test_an_unknown_impairment_key_is_refused_and_the_hint_lists_from():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints: [client, router]
            impair: {latency: 5ms}   # <- line 8
        """)
    assert_points_at(err, line=8, field="links[0].impair.latency", says="unknown key 'latency'")
    assert err.hint.startswith("allowed here: from, delay, jitter")


def test_an_impairment_from_a_node_off_the_link_is_refused():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
          server: {}
        links:
          - name: left
            endpoints: [client, router]
            impair: {from: server, delay: 5ms}   # <- line 9
          - {name: right, endpoints: [router, server]}
        """)
    assert_points_at(err, line=9, field="links[0].impair.from", says="'server' is not an endpoint of link 'left'")
    assert err.hint == "endpoints: client, router"


def test_reorder_without_delay_is_refused():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints: [client, router]
            impair:
              - from: client
                reorder: 25%      # <- line 10
        """)
    assert_points_at(err, line=10, field="links[0].impair[0].reorder", says="reorder needs delay")


@pytest.mark.parametrize("entry, field, says", [
    ("{distribution: normal, delay: 5ms}", "distribution", "set jitter too"),
    ("{loss_correlation: 25%}", "loss_correlation", "loss_correlation needs loss"),
    ("{limit: 100, loss: 1%}", "limit", "set one of them"),
    ("{limit: 0, delay: 5ms}", "limit", "greater than or equal to 1"),
    ("{duplicate: 1.5}", None, None),
])
def test_settings_that_mean_nothing_alone_are_refused(entry, field, says):
    text = f"""
        name: t
        nodes:
          client: {{}}
          router: {{role: router}}
        links:
          - name: left
            endpoints: [client, router]
            impair: {entry}   # <- line 8
        """
    if field is None:  # a bare number is a percentage: 1.5 means 1.5%
        assert load(text).lab.links[0].impairments()[0].settings() == {"duplicate_pct": 1.5}
        return
    assert_points_at(refusal(text), line=8, field=f"links[0].impair.{field}", says=says)


def test_two_entries_for_one_direction_are_refused_at_the_second():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints: [client, router]
            impair:
              - {from: client, delay: 5ms}
              - {from: client, loss: 1%}     # <- line 10
        """)
    assert_points_at(err, line=10, field="links[0].impair[1].from", says="a second impairment from 'client' on link 'left'")
    assert err.hint == "entry 0 already sets that direction: merge them into one"


def test_with_several_entries_each_needs_from():
    err = refusal("""
        name: t
        nodes:
          client: {}
          router: {role: router}
        links:
          - name: left
            endpoints: [client, router]
            impair:
              - {from: client, delay: 5ms}
              - {loss: 1%}                   # <- line 10
        """)
    assert_points_at(err, line=10, field="links[0].impair[1]", says="entry 1 has no `from`")
