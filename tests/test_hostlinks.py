"""Names and records of links wired from the host (no engine needed)."""

from __future__ import annotations

import pytest

from labctl.engine.docker.hostlinks import alias, parse_alias
from labctl.engine.docker.labels import BRIDGE_PREFIX, VETH_PREFIX, bridge_name, network_name, veth_name
from labctl.errors import EngineError


def test_an_alias_says_what_labels_would_and_reads_back():
    meta = {"lab": "teardown", "instance": "default", "link": "left", "spec": "0123456789abcdef", "subnet": "10.250.1.0/24",
            "deploy": "a1b2c3"}
    text = alias(meta)
    assert text.startswith("labctl ") and len(text.split()) == 1 + len(meta)
    assert parse_alias(text) == meta
    assert parse_alias(alias({"lab": "a b=c"})) == {"lab": "a b=c"}  # quoted, whatever it holds


@pytest.mark.parametrize("text", [None, "", "my uplink", "labctlx lab=a", "docker bridge"])
def test_an_alias_that_is_not_labctls_is_not_read_as_one(text):
    assert parse_alias(text) is None


def test_an_alias_longer_than_the_kernel_keeps_is_refused():
    with pytest.raises(EngineError, match="too long"):
        alias({"lab": "x" * 300})


def test_host_link_names_fit_linux_and_are_one_per_node_and_link():
    names = {veth_name(lab, node, link) for lab in ("a", "b" * 31) for node in ("n1", "n" * 31) for link in ("l1", "l" * 15)}
    assert len(names) == 8
    assert all(len(n) <= 15 and n.startswith(VETH_PREFIX) for n in names)
    assert veth_name("a", "n1", "l1") == veth_name("a", "n1", "l1")
    assert len(bridge_name(network_name("b" * 31, "l" * 15))) <= 15 and bridge_name(network_name("a", "l")).startswith(BRIDGE_PREFIX)


def test_an_interface_mac_is_made_from_its_address_as_docker_makes_it():
    from labctl.engine.docker.hostlinks import mac_for

    assert mac_for("10.250.254.2") == "02:42:0a:fa:fe:02"
    assert mac_for("172.17.0.2/16") == "02:42:ac:11:00:02"
