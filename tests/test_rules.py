"""Which packets a node sends to its rule engine: the flows its rules name, both ways, nothing else."""

from __future__ import annotations

from labctl.agent.rules import flows, jump_matches


def test_a_rule_names_its_flow_and_its_contexts_flow():
    spec = {"from": ["10.0.1.2"], "to": ["10.0.2.10"], "sport": 0, "dport": 5000, "flags": "A",
            "after": {"from": ["10.0.2.10"], "to": ["10.0.1.2"], "sport": None, "dport": None, "flags": "F"}}
    assert flows(spec) == [{"src": ["10.0.1.2"], "dst": ["10.0.2.10"], "sport": None, "dport": 5000},
                           {"src": ["10.0.2.10"], "dst": ["10.0.1.2"], "sport": None, "dport": None}]


def test_a_flow_is_diverted_in_both_directions_with_ports_swapped():
    flow = {"src": ["10.0.1.2"], "dst": ["10.0.2.10"], "sport": None, "dport": 5000}
    assert jump_matches(flow) == [("-p", "tcp", "-s", "10.0.1.2/32", "-d", "10.0.2.10/32", "--dport", "5000"),
                                  ("-p", "tcp", "-s", "10.0.2.10/32", "-d", "10.0.1.2/32", "--sport", "5000")]


def test_every_address_of_a_node_with_several_gets_its_own_jump():
    flow = {"src": ["10.0.1.1", "10.0.2.1"], "dst": None, "sport": 80, "dport": None}
    assert jump_matches(flow) == [("-p", "tcp", "-s", "10.0.1.1/32", "--sport", "80"),
                                  ("-p", "tcp", "-s", "10.0.2.1/32", "--sport", "80"),
                                  ("-p", "tcp", "-d", "10.0.1.1/32", "--dport", "80"),
                                  ("-p", "tcp", "-d", "10.0.2.1/32", "--dport", "80")]


def test_a_rule_that_names_no_address_and_no_port_needs_every_tcp_packet():
    [flow] = flows({"from": None, "to": None, "sport": None, "dport": None, "flags": "F"})
    assert jump_matches(flow) == [("-p", "tcp")]
