"""Impairments and loops as commands: what each mechanism is told to do, checked on the host.

The netem path cannot run on this workplace's kernel (no sch_netem), so its commands are
checked here word for word; tests/test_impair_engine.py measures what the fallback does.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from labctl.agent.impair import fallback_plan, netem_commands, normalize, tbf_args
from labctl.agent.loop import loop_commands, match_args
from labctl.agent.shaper import BYPASS_MARK, parse_config
from labctl.errors import LabFileError, UserError
from labctl.impairments import parse_impairment, parse_match
from labctl.loader import load_lab_text, load_scenario_file
from labctl.model import Impairment, describe_settings

TC = ["tc", "qdisc", "replace", "dev", "mid", "root"]
CHAIN = ["iptables", "-w", "-t", "mangle", "-A", "LCIMP-mid"]


def settings(**values) -> dict:
    return Impairment.model_validate(values).settings()


# --- the model: what a user writes -> the agent's numbers --------------------------------

def test_settings_are_plain_numbers_in_the_agents_units():
    assert settings(delay="50ms", jitter="10ms", loss="5%", loss_correlation="25%", duplicate="1%", reorder="25%",
                    corrupt="0.1%", rate="1mbit", limit=100) == {
        "delay_ms": 50.0, "jitter_ms": 10.0, "distribution": "uniform", "loss_pct": 5.0, "loss_correlation_pct": 25.0,
        "duplicate_pct": 1.0, "reorder_pct": 25.0, "corrupt_pct": 0.1, "rate_bit": 1000000, "limit": 100}


def test_what_is_off_is_left_out():
    assert settings(delay="0ms", loss="0%") == {}
    assert Impairment().is_empty()


def test_settings_read_as_a_person_writes_them():
    assert describe_settings(settings(delay="50ms", jitter="10ms", distribution="normal", loss="5%", loss_correlation="25%",
                                      rate="1mbit")) == "delay 50ms ±10ms normal, loss 5% (correlation 25%), rate 1mbit"
    assert describe_settings({}) == "none"


@pytest.mark.parametrize("values, says", [
    ({"loss": "150%"}, "'150%' is outside 0% to 100%"),
    ({"delay": "-3ms"}, "'-3ms': a duration cannot be negative"),
    ({"reorder": "10%"}, "reorder needs delay"),
    ({"rate": "1 lightyear"}, "is not a rate"),
    ({"latency": "5ms"}, "unknown setting 'latency'"),
])
def test_runtime_settings_are_checked_like_the_lab_file(values, says):
    with pytest.raises(UserError) as caught:
        parse_impairment(values)
    assert caught.value.exit_code == 2 and says in caught.value.message, caught.value.message


# --- netem: one qdisc with every setting ---------------------------------------------------

def test_netem_gets_every_setting_at_once():
    assert netem_commands("mid", settings(delay="50ms", jitter="10ms", distribution="normal", loss="5%", loss_correlation="25%",
                                          duplicate="1%", reorder="25%", corrupt="0.1%", rate="1mbit", limit=100)) == [[
        *TC, "netem", "limit", "100", "delay", "50000us", "10000us", "distribution", "normal", "loss", "random", "5%", "25%",
        "duplicate", "1%", "reorder", "25%", "gap", "1", "corrupt", "0.1%", "rate", "1000000bit"]]


def test_netem_delay_alone_with_the_same_queue_as_the_fallback():
    # netem's own default (1000 packets) would drop at 20,000 packets/s with 50 ms of delay.
    assert netem_commands("mid", settings(delay="50ms")) == [[*TC, "netem", "limit", "10000", "delay", "50000us"]]


def test_uniform_jitter_is_netems_default_and_needs_no_table():
    assert netem_commands("mid", settings(delay="50ms", jitter="10ms")) == [[*TC, "netem", "limit", "10000", "delay", "50000us", "10000us"]]


def test_rate_alone_is_a_token_bucket():
    [command] = netem_commands("mid", settings(rate="1mbit"))
    assert command[:7] == [*TC, "tbf"]
    assert command[7:] == tbf_args(1e6)


def test_clearing_removes_the_root_qdisc():
    assert netem_commands("mid", {}) == [["tc", "qdisc", "del", "dev", "mid", "root"]]


def test_the_token_bucket_holds_two_frames_and_a_tenth_of_a_second():
    assert tbf_args(1e6) == ["rate", "1000000bit", "burst", "3028", "limit", str(10 * 1514)]
    assert tbf_args(100e6) == ["rate", "100000000bit", "burst", "50000", "limit", str(825 * 1514)]
    assert tbf_args(1e6, limit=50)[-1] == str(50 * 1514)


# --- the fallback: the kernel where it can, the userspace engine for the rest ----------------

def test_random_loss_is_iptables_statistic():
    plan = fallback_plan("mid", settings(loss="20%"))
    assert plan.rules == [[*CHAIN, "-m", "mark", "--mark", hex(BYPASS_MARK), "-j", "RETURN"],
                          [*CHAIN, "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP"]]
    assert plan.shaper is None and plan.tc == []
    assert plan.parts == {"loss": "iptables statistic"}


def test_correlated_loss_needs_the_engine():
    plan = fallback_plan("mid", settings(loss="20%", loss_correlation="50%"))
    assert plan.rules == [] and plan.shaper == {"loss_pct": 20.0, "loss_correlation_pct": 50.0}
    assert plan.parts == {"loss": "nfqueue shaper"}


def test_duplicates_on_a_two_endpoint_link_are_tee_to_the_peer():
    plan = fallback_plan("mid", settings(duplicate="10%"), peer="10.250.12.2")
    assert plan.rules[1] == [*CHAIN, "-m", "statistic", "--mode", "random", "--probability", "0.1",
                             "-j", "TEE", "--gateway", "10.250.12.2"]
    assert plan.shaper is None and plan.parts == {"duplicate": "iptables TEE"}


def test_duplicates_on_a_shared_segment_are_the_engines():
    # With more than one other endpoint there is no single next hop to TEE to.
    plan = fallback_plan("mid", settings(duplicate="10%"), peer=None)
    assert plan.rules == [] and plan.shaper == {"duplicate_pct": 10.0}


def test_without_tee_or_statistic_in_the_kernel_the_engine_does_it():
    plan = fallback_plan("mid", settings(duplicate="10%", loss="5%"), peer="10.0.0.2", tee=False, statistic=False)
    assert plan.rules == [] and plan.shaper == {"duplicate_pct": 10.0, "loss_pct": 5.0}


def test_duplicate_comes_before_loss_as_in_netem():
    plan = fallback_plan("mid", settings(duplicate="10%", loss="5%"), peer="10.0.0.2")
    assert [rule[rule.index("-j") + 1] for rule in plan.rules[1:]] == ["TEE", "DROP"]


def test_delay_jitter_reorder_and_corruption_are_the_engines():
    plan = fallback_plan("mid", settings(delay="50ms", jitter="10ms", distribution="normal", reorder="25%", corrupt="1%", limit=500))
    assert plan.rules == [] and plan.tc == []
    assert plan.shaper == {"delay_ms": 50.0, "jitter_ms": 10.0, "distribution": "normal", "reorder_pct": 25.0, "corrupt_pct": 1.0,
                           "limit": 500}
    parse_config(plan.shaper)  # the engine accepts it as it is
    assert set(plan.parts.values()) == {"nfqueue shaper"}


def test_rate_is_a_token_bucket_after_the_engine():
    plan = fallback_plan("mid", settings(delay="50ms", rate="1mbit", limit=20))
    assert plan.tc == [[*TC, "tbf", *tbf_args(1e6, 20)]]
    assert plan.shaper == {"delay_ms": 50.0, "limit": 20}
    assert plan.parts == {"delay": "nfqueue shaper", "rate": "tbf", "limit": "tbf"}


def test_the_chain_is_hooked_in_first_in_postrouting():
    plan = fallback_plan("mid", settings(loss="1%"))
    assert plan.hook("-I") == ["iptables", "-w", "-t", "mangle", "-I", "POSTROUTING", "1", "-o", "mid", "-j", "LCIMP-mid"]


def test_the_agent_refuses_what_the_model_would():
    with pytest.raises(ValueError, match="reorder_pct needs delay_ms"):
        normalize({"reorder_pct": 5})
    with pytest.raises(ValueError, match="unknown impairment setting"):
        normalize({"latency_ms": 5})
    with pytest.raises(ValueError, match="at most 100"):
        normalize({"loss_pct": 150})


# --- routing loops ----------------------------------------------------------------------------

def test_a_loop_filter_becomes_iptables_matches():
    assert match_args({"from": ["10.0.1.1"], "to": ["10.0.3.10", "10.0.4.10"], "dport": 5010, "flags": "P", "payload": "OLD"}) == [
        ["-s", "10.0.1.1", "-d", "10.0.3.10", "-p", "tcp", "--dport", "5010", "--tcp-flags", "PSH", "PSH",
         "-m", "string", "--algo", "bm", "--string", "OLD"],
        ["-s", "10.0.1.1", "-d", "10.0.4.10", "-p", "tcp", "--dport", "5010", "--tcp-flags", "PSH", "PSH",
         "-m", "string", "--algo", "bm", "--string", "OLD"]]
    assert match_args({"flags": "=S"}) == [["-p", "tcp", "--tcp-flags", "SYN,FIN,RST,PSH,ACK,URG", "SYN"]]
    assert match_args({"proto": "icmp"}) == [["-p", "icmp"]]
    assert match_args(None) == [[]]


def test_a_loop_marks_incoming_packets_but_never_the_partners_own():
    prepare, hook, heal = loop_commands("mid", "10.0.2.2", ["10.0.2.2", "10.0.3.1"], ["10.0.1.0/24", "10.0.3.0/24"], None)
    mangle = ["iptables", "-w", "-t", "mangle"]
    assert [*mangle, "-A", "LCLOOP", "-s", "10.0.3.1", "-j", "RETURN"] in prepare
    assert prepare.index([*mangle, "-A", "LCLOOP", "-s", "10.0.3.1", "-j", "RETURN"]) < prepare.index(
        [*mangle, "-A", "LCLOOP", "-j", "MARK", "--set-mark", "0x4c4f"])
    assert ["ip", "route", "replace", "10.0.1.0/24", "via", "10.0.2.2", "dev", "mid", "table", "4242"] in prepare
    assert ["ip", "rule", "add", "fwmark", "0x4c4f", "lookup", "4242", "priority", "4242"] in prepare
    # PREROUTING: only packets that come in; the router's own ICMP errors leave by OUTPUT.
    assert hook == [*mangle, "-I", "PREROUTING", "1", "-j", "LCLOOP"]
    # No ICMP redirects while packets go back out the interface they came in on.
    no_redirects = ["-p", "icmp", "--icmp-type", "redirect", "-j", "DROP"]
    assert [*mangle, "-I", "OUTPUT", "1", *no_redirects] in prepare
    # Healing leaves the routes: packets a delay still holds were routed by them.
    assert heal == [[*mangle, "-D", "PREROUTING", "-j", "LCLOOP"], ["ip", "rule", "del", "priority", "4242"],
                    [*mangle, "-D", "OUTPUT", *no_redirects]]


def test_a_loop_filter_is_checked():
    assert parse_match({"from": "client", "flags": "P", "dport": None}).model_dump(by_alias=True, exclude_none=True) == {
        "from": "client", "flags": "P"}
    assert parse_match({"to": None}) is None
    with pytest.raises(UserError, match="proto"):
        parse_match({"proto": "sctp"})


# --- scenario steps -----------------------------------------------------------------------------

LAB = textwrap.dedent("""
    name: t
    nodes:
      client: {}
      r1: {role: router}
      r2: {role: router}
      server: {}
    links:
      - {name: left, endpoints: [client, r1]}
      - {name: mid, endpoints: [r1, r2]}
      - {name: right, endpoints: [r2, server]}
    """).lstrip()


def scenario(tmp_path: Path, steps: str):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nsteps:\n" + textwrap.dedent(steps))
    return load_scenario_file(path, load_lab_text(LAB, tmp_path / "lab.yaml"), {})


def test_impair_and_loop_steps_are_typed(tmp_path):
    [one] = scenario(tmp_path, """
        - {impair: {link: mid, from: r1, delay: 100ms}}
        - {loop: {routers: [r1, r2], for: 2s, match: {from: client, dport: 80}}}
        - {impair: {link: mid, clear: true}}
        """)
    impair, loop, clear = one.scenario.steps
    assert impair.action.settings() == {"delay_ms": 100.0} and impair.action.from_ == "r1"
    assert loop.action.for_ == 2.0 and loop.action.match.dport == 80
    assert clear.action.clear and clear.action.is_empty()


@pytest.mark.parametrize("step, line_field, says", [
    ("{impair: {link: middle, delay: 5ms}}", "steps[0].impair.link", "has no link 'middle'"),
    ("{impair: {link: mid, from: client, delay: 5ms}}", "steps[0].impair.from", "'client' is not an endpoint of link 'mid'"),
    ("{impair: {link: mid}}", "steps[0].impair", "needs settings"),
    ("{impair: {link: mid, clear: true, loss: 1%}}", "steps[0].impair.clear", "not both"),
    ("{impair: {link: mid, loss: 150%}}", "steps[0].impair.loss", "outside 0% to 100%"),
    ("{loop: {routers: [r1, client], for: 1s}}", "steps[0].loop.routers[1]", "only routers forward"),
    ("{loop: {routers: [r1, r1], for: 1s}}", "steps[0].loop.routers", "two different routers"),
    ("{loop: {routers: [r1, r2], for: 1s, match: {from: ghost}}}", "steps[0].loop.match.from", "neither a node"),
])
def test_bad_impair_and_loop_steps_point_at_their_field(tmp_path, step, line_field, says):
    with pytest.raises(LabFileError) as caught:
        scenario(tmp_path, f"  - {step}\n")
    err = caught.value
    assert err.location.line == 3 and err.location.field == line_field, str(err)
    assert says in err.message, err.message


def test_routers_that_share_no_link_make_no_loop(tmp_path):
    lab = LAB.replace("- {name: mid, endpoints: [r1, r2]}", "- {name: mid, endpoints: [r1, server]}\n  - {name: far, endpoints: [r2, client]}")
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nsteps:\n  - {loop: {routers: [r1, r2], for: 1s}}\n")
    with pytest.raises(LabFileError, match="share no link"):
        load_scenario_file(path, load_lab_text(lab, tmp_path / "lab.yaml"), {})


def test_the_builtin_teardown_loop_lab_and_its_scenario_load():
    from labctl.loader import load_lab, load_scenarios
    from labctl.plan import plan_lab

    loaded = load_lab("teardown-loop")
    plan = plan_lab(loaded, {})
    assert [str(link.subnet) for link in plan.links] == ["10.250.11.0/24", "10.250.12.0/24", "10.250.13.0/24"]
    [one] = load_scenarios(loaded)
    kinds = [step.kind for step in one.scenario.steps]
    assert kinds[0] == "impair" and "loop" in kinds
    loop = one.scenario.steps[kinds.index("loop")].action
    assert loop.routers == ["r1", "r2"] and loop.for_ == 4.0 and loop.match.payload == "OLD-DATA"
