"""Step and expectation kinds, without Docker: what a scenario may say, what each step
asks a node's actor to do, and how each step reads in the timeline and the ladder."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from labctl.agent import protocol
from labctl.analyze.timeline import step_call
from labctl.errors import LabFileError
from tests.conftest import THREE_NODES
from labctl.loader import load_lab_text, load_scenario_file
from labctl.plan import plan_lab

LAB = "name: t\n" + textwrap.dedent(THREE_NODES).lstrip()  # the suite's three-node lab (tests/conftest.py)

# Steps that make the names the other steps use: a listener, a connection, a hold rule.
MADE = """\
  - {node: server, listen: {port: 5000}, as: lsn}
  - {node: client, connect: {to: server, port: 5000}, as: c}
  - {node: server, accept: lsn, as: s}
  - {node: router, rule: {action: hold, from: client, flags: A}, as: keep}
"""


def scenario(tmp_path: Path, steps: str, expect: str = ""):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nsteps:\n" + textwrap.dedent(steps) + ("expect:\n" + textwrap.dedent(expect) if expect else ""))
    loaded = load_lab_text(LAB, tmp_path / "lab.yaml")
    [one] = load_scenario_file(path, loaded, {})
    return one, loaded


# --- what a scenario may say --------------------------------------------------------------

@pytest.mark.parametrize("step, field, says", [
    ("{node: ghost, close: c}", "steps[4].node", "unknown node 'ghost'"),
    ("{node: client, connect: {to: server, port: 5000}}", "steps[4]", "a connect step needs `as:` to name its socket"),
    ("{node: server, accept: nope, as: s2}", "steps[4].accept", "no socket named 'nope' was made by an earlier step"),
    ("{node: client, accept: {sock: lsn}, as: s2}", "steps[4].accept", "socket 'lsn' belongs to node 'server', not 'client'"),
    ("{node: client, send: {sock: s, data: x}}", "steps[4].send.sock", "socket 's' belongs to node 'server', not 'client'"),
    ("{node: client, recv: {sock: nope}}", "steps[4].recv.sock", "no socket named 'nope'"),
    ("{node: client, shutdown: {sock: nope}}", "steps[4].shutdown.sock", "no socket named 'nope'"),
    ("{node: client, setsockopt: {sock: nope, option: TCP_NODELAY, value: 1}}", "steps[4].setsockopt.sock", "no socket named 'nope'"),
    ("{node: client, close: nope}", "steps[4].close", "no socket named 'nope'"),
    ("{node: client, connect: {to: ghost, port: 1}, as: c2}", "steps[4].connect.to", "'ghost' is neither a node of lab 't' nor an IPv4 address"),
    ("{node: router, rule: {action: drop, from: ghost}}", "steps[4].rule.from", "neither a node"),
    ("{node: router, rule: {action: drop, to: ghost}}", "steps[4].rule.to", "neither a node"),
    ("{node: router, rule: {action: drop, after: {from: ghost}}}", "steps[4].rule.after.from", "neither a node"),
    ("{node: router, rule: {action: drop, after: {to: ghost}}}", "steps[4].rule.after.to", "neither a node"),
    ("{node: router, rule: {action: delay}}", "steps[4].rule", "a delay rule needs `delay:`"),
    ("{node: router, unrule: nope}", "steps[4].unrule", "no rule named 'nope' was made by an earlier step"),
    ("{node: router, release: {rule: nope}}", "steps[4].release", "no rule named 'nope'"),
    ("{node: client, release: {rule: keep}}", "steps[4].node", "rule 'keep' lives on node 'router'"),
    ("{node: client, unrule: keep}", "steps[4].node", "rule 'keep' lives on node 'router'"),
    ("{node: client, kill_socket: {remote: ghost}}", "steps[4].kill_socket.remote", "neither a node"),
    ("{wait: {state: TIME_WAIT, step: lsn}}", "steps[4].wait", "wait for exactly one of: state, step, rule"),
    ("{wait: {}}", "steps[4].wait", "wait for exactly one of: state, step, rule"),
    ("{wait: {state: TIME_WAIT}}", "steps[4].wait.node", "waiting for a state needs `node:`"),
    ("{wait: {state: TIME_WAIT, node: ghost}}", "steps[4].wait.node", "waiting for a state needs `node:`"),
    ("{wait: {step: nope}}", "steps[4].wait.step", "no earlier step is named 'nope'"),
    ("{wait: {rule: nope}}", "steps[4].wait.rule", "no earlier rule is named 'nope'"),
    ("{node: client, close: c, as: lsn}", "steps[4].as", "the name 'lsn' is used by an earlier step"),
])
def test_a_step_that_names_what_does_not_exist_points_at_its_field(tmp_path, step, field, says):
    with pytest.raises(LabFileError) as caught:
        scenario(tmp_path, MADE + f"  - {step}\n")
    err = caught.value
    assert err.location.line == 7 and err.location.field == field, str(err)
    assert says in err.message, err.message


def test_only_hold_rules_can_be_released(tmp_path):
    with pytest.raises(LabFileError) as caught:
        scenario(tmp_path, MADE + "  - {node: router, rule: {action: drop, from: client}, as: lose}\n"
                                  "  - {node: router, release: {rule: lose}}\n")
    assert caught.value.location.field == "steps[5].release.rule"
    assert "rule 'lose' is a drop rule; only hold rules keep packets" in caught.value.message


@pytest.mark.parametrize("expect, field, says", [
    ("{segments: {from: ghost}}", "expect[0].segments.from", "neither a node"),
    ("{segments: {to: ghost}}", "expect[0].segments.to", "neither a node"),
    ("{segments: {at: ghost}}", "expect[0].segments.at", "neither a node"),
    ("{no_segments: {from: ghost}}", "expect[0].no_segments.from", "neither a node"),
    ("{states: {node: ghost}}", "expect[0].states.node", "unknown node 'ghost'"),
    ("{step: {step: nope}}", "expect[0].step.step", "no step is named 'nope'"),
    ("{data: {step: nope}}", "expect[0].data.step", "no step is named 'nope'"),
    ("{events: {event: tcp_send_reset, node: ghost}}", "expect[0].events.node", "unknown node 'ghost'"),
])
def test_an_expectation_that_names_what_does_not_exist_points_at_its_field(tmp_path, expect, field, says):
    with pytest.raises(LabFileError) as caught:
        scenario(tmp_path, MADE, f"  - {expect}\n")
    assert caught.value.location.field == field, str(caught.value)
    assert says in caught.value.message, caught.value.message


def test_a_step_needs_exactly_one_action_and_a_node_where_it_acts(tmp_path):
    with pytest.raises(LabFileError, match="exactly one action of: listen, accept, connect"):
        scenario(tmp_path, "  - {node: client, close: c, sleep: 1s}\n")
    with pytest.raises(LabFileError, match="step 'close' needs `node:`"):
        scenario(tmp_path, "  - {close: c}\n")
    with pytest.raises(LabFileError, match="an expectation needs exactly one of: segments, no_segments, states, step, data, events"):
        scenario(tmp_path, "  - {sleep: 1s}\n", "  - {name: nothing}\n")


def test_kind_and_action_name_what_a_step_does(tmp_path):
    one, _ = scenario(tmp_path, MADE + "  - {sleep: 0.5s}\n")
    assert [s.kind for s in one.scenario.steps] == ["listen", "connect", "accept", "rule", "sleep"]
    assert one.scenario.steps[2].action == "lsn" and one.scenario.steps[4].action == 0.5
    assert one.scenario.steps[1].action.to == "server"


# --- what each step asks a node's actor to do --------------------------------------------------

class FakeActor:
    """Answers every call as done, and remembers it."""

    def __init__(self, node: str, calls: list):
        self.node, self.calls, self.closed = node, calls, False

    def call(self, op, args=None, *, timeout=60.0, background=False, name=None):
        protocol.check_call(op, args or {})  # what the real session refuses to send
        self.calls.append((self.node, op, args, timeout, background, name))
        return {"ok": True, "result": {}}


class NoHost:
    """An engine whose nodes are elsewhere: no host observers (and no Docker needed)."""

    def host_observers(self):
        return None


def actor_calls(tmp_path: Path, steps: str) -> list:
    """(node, op, args, timeout, background, name) of every call the steps make, in order."""
    from labctl.run import ScenarioRun

    one, loaded = scenario(tmp_path, steps)
    plan = plan_lab(loaded, {})
    run = ScenarioRun(NoHost(), loaded, plan, one, "img", tmp_path / "results")
    calls: list = []
    run.observers.sessions.update({node.name: FakeActor(node.name, calls) for node in plan.nodes})
    for index, step in enumerate(one.scenario.steps):
        run.steps.run(index, step)
    run.rundir.close()
    return calls


def test_each_socket_step_is_one_actor_call_with_its_arguments(tmp_path):
    calls = actor_calls(tmp_path, MADE + """\
  - {node: client, connect: {to: 10.9.9.9, port: 80, bind: {port: 4000}, reuseaddr: true, timeout: 2s}, as: c2}
  - {node: server, accept: {sock: lsn, timeout: 3s}, as: s2}
  - {node: client, send: {sock: c, data: hi}}
  - {node: client, send: {sock: c, size: 100}, background: true, as: bulk}
  - {node: server, recv: {sock: s, expect: hi, timeout: 1s}}
  - {node: client, shutdown: {sock: c, how: rdwr}}
  - {node: client, setsockopt: {sock: c, option: SO_LINGER, value: {onoff: 1, linger: 0}}}
  - {node: client, setsockopt: {sock: c, option: TCP_NODELAY, value: 1}}
  - {node: client, close: c}
""")
    server_address = next(c for c in calls if c[1] == "connect")[2]["address"]
    assert server_address.startswith("10.") and server_address != "10.9.9.9"
    assert calls == [
        ("server", "listen", {"name": "lsn", "port": 5000, "address": "0.0.0.0", "backlog": 16, "reuseaddr": False, "reuseport": False},
         20.0, False, "lsn"),
        ("client", "connect", {"name": "c", "address": server_address, "port": 5000, "reuseaddr": False, "timeout": 10.0, "bind": None},
         25.0, False, "c"),
        ("server", "accept", {"name": "s", "sock": "lsn", "timeout": 10.0}, 25.0, False, "s"),
        ("router", "rule", {"name": "keep", "rule": {
            "from": [str(i.address.ip) for i in plan_interfaces(tmp_path, "client")], "to": None, "flags": "A", "sport": None,
            "dport": None, "payload": None, "seq": None, "ack": None, "action": "hold", "after": None, "count": 1, "nth": 1,
            "delay": None, "keep": "packet"}}, 25.0, False, "keep"),
        ("client", "connect", {"name": "c2", "address": "10.9.9.9", "port": 80, "reuseaddr": True, "timeout": 2.0,
                               "bind": {"address": "0.0.0.0", "port": 4000}}, 17.0, False, "c2"),
        ("server", "accept", {"name": "s2", "sock": "lsn", "timeout": 3.0}, 18.0, False, "s2"),
        ("client", "send", {"sock": "c", "data": "hi", "size": None}, 20.0, False, None),
        ("client", "send", {"sock": "c", "data": "", "size": 100}, 20.0, True, "bulk"),
        ("server", "recv", {"sock": "s", "size": 65536, "expect": "hi", "timeout": 1.0, "all": False}, 16.0, False, None),
        ("client", "shutdown", {"sock": "c", "how": "rdwr"}, 20.0, False, None),
        ("client", "setsockopt", {"sock": "c", "option": "SO_LINGER", "value": {"onoff": 1, "linger": 0}}, 20.0, False, None),
        ("client", "setsockopt", {"sock": "c", "option": "TCP_NODELAY", "value": 1}, 20.0, False, None),
        ("client", "close", {"sock": "c"}, 615.0, False, None),
    ]


def plan_interfaces(tmp_path: Path, node: str):
    return plan_lab(load_lab_text(LAB, tmp_path / "lab.yaml"), {}).node(node).interfaces


def test_node_packet_and_wait_steps_are_actor_calls_too(tmp_path):
    calls = actor_calls(tmp_path, MADE + """\
  - {node: client, exec: "echo hi", as: hi}
  - {node: client, exec: {cmd: [sleep, "1"], background: true, timeout: 3s, expect_exit: null}, as: nap}
  - {node: client, kill_socket: {remote: server, state: time-wait}}
  - {node: router, rule: {action: drop, flags: F, after: {from: server, flags: F}}}
  - {node: router, release: {rule: keep, rewrite: {seq: shift}, copy: true}}
  - {node: router, unrule: keep}
  - {wait: {node: client, state: TIME_WAIT, remote_port: 5000, gone: true, timeout: 4s}}
  - {wait: {step: nap, timeout: 2s}}
  - {wait: {rule: keep, count: 2, timeout: 1s}}
""")[4:]
    server_address = next(c for c in calls if c[1] == "kill_socket")[2]["remote"]
    server = [str(i.address.ip) for i in plan_interfaces(tmp_path, "server")]
    assert server_address in server
    assert calls == [
        ("client", "exec", {"cmd": "echo hi", "name": "hi"}, 45.0, False, "hi"),
        ("client", "exec", {"cmd": ["sleep", "1"], "background": True, "timeout": 3.0, "expect_exit": None, "name": "nap"},
         18.0, False, "nap"),
        ("client", "kill_socket", {"local_port": None, "remote_port": None, "remote": server_address, "state": "time-wait"},
         25.0, False, None),
        ("router", "rule", {"name": "rule2", "rule": {
            "from": None, "to": None, "flags": "F", "sport": None, "dport": None, "payload": None, "seq": None, "ack": None,
            "action": "drop", "count": 1, "nth": 1, "delay": None, "keep": "packet",
            "after": {"from": server, "to": None, "flags": "F", "sport": None, "dport": None, "payload": None, "seq": None, "ack": None}}},
         25.0, False, None),
        ("router", "release", {"rule": "keep", "rewrite": {"seq": "shift", "strip_timestamps": False}, "copy": True}, 25.0, False, None),
        ("router", "unrule", {"name": "keep"}, 25.0, False, None),
        ("client", "wait_state", {"state": "TIME_WAIT", "local_port": None, "remote_port": 5000, "gone": True, "timeout": 4.0},
         19.0, False, None),
        ("client", "wait_step", {"step": "nap", "timeout": 2.0}, 17.0, False, None),
        ("router", "wait_rule", {"rule": "keep", "count": 2, "timeout": 1.0}, 16.0, False, None),
    ]


def test_a_sleep_is_no_actor_call_and_every_step_is_recorded(tmp_path):
    from labctl.rundir import read_jsonl

    calls = actor_calls(tmp_path, "  - {sleep: 0.01s, note: breathe}\n  - {node: server, listen: {port: 1}, as: l}\n")
    assert [c[1] for c in calls] == ["listen"]
    [run_dir] = (tmp_path / "results" / "t").iterdir()
    sleep, listen = read_jsonl(run_dir / "steps.jsonl")
    assert sleep["kind"] == "sleep" and sleep["ok"] and sleep["note"] == "breathe" and sleep["result"] == {"slept": 0.01}
    assert sleep["args"] == {"sleep": "10ms", "note": "breathe", "background": False}
    assert listen["kind"] == "listen" and listen["node"] == "server" and listen["as"] == "l" and listen["index"] == 1


# --- how steps read --------------------------------------------------------------------------

@pytest.mark.parametrize("kind, args, as_, reads", [
    ("connect", {"to": "server", "port": 5000}, "c", "c = connect(server:5000)"),
    ("listen", {"port": 5000}, "lsn", "lsn = listen(:5000)"),
    ("accept", "lsn", "s", "s = accept(lsn)"),
    ("accept", {"sock": "lsn", "timeout": 2.0}, "s", "s = accept()"),
    ("send", {"sock": "c", "data": "hello"}, None, "send(c, 5 bytes)"),
    ("send", {"sock": "c", "size": 100}, "bulk", "send(c, 100 bytes)"),
    ("recv", {"sock": "s", "size": 10}, None, "recv(s)"),
    ("shutdown", {"sock": "c", "how": "wr"}, None, "shutdown(c)"),
    ("setsockopt", {"sock": "c", "option": "SO_LINGER", "value": {"onoff": 1, "linger": 0}}, None,
     "setsockopt(c, SO_LINGER, {'onoff': 1, 'linger': 0})"),
    ("close", "c", None, "close(c)"),
    ("rule", {"action": "drop", "flags": "F"}, "lose", "rule(drop)"),
    ("release", {"rule": "keep", "copy": False}, None, "release(keep)"),
    ("unrule", "keep", None, "unrule(keep)"),
    ("sysctl", {"net.ipv4.tcp_fin_timeout": 7}, None, "sysctl(net.ipv4.tcp_fin_timeout=7)"),
    ("kill_socket", {"remote": "server", "state": "time-wait", "local_port": None}, None, "kill_socket(remote=server, state=time-wait)"),
    ("wait", {"node": "client", "state": "TIME_WAIT", "gone": True, "timeout": 5.0}, None, "wait(node=client, state=TIME_WAIT)"),
    ("wait", {"rule": "lose", "count": 1}, None, "wait(rule=lose)"),
    ("exec", "echo hi", "hi", "exec(echo hi)"),
    ("exec", {"cmd": "echo hi"}, "hi", "exec()"),
    ("sleep", "500ms", None, "sleep(500ms)"),
    ("impair", {"link": "left", "delay": "5ms"}, None, "impair()"),
    ("loop", {"routers": ["r1", "r2"], "for": 2.0}, None, "loop()"),
    ("mystery", {"x": 1}, None, "mystery()"),
    ("mystery", True, None, "mystery()"),
])
def test_a_step_reads_as_a_call_in_the_timeline(kind, args, as_, reads):
    assert step_call({"kind": kind, "as": as_, "args": {kind: args, "as": as_}}) == reads


def test_the_ladder_draws_calls_not_bookkeeping():
    from labctl.report.ladder import CALLS

    assert set(CALLS) == {"listen", "connect", "accept", "send", "recv", "shutdown", "close", "setsockopt", "kill_socket",
                          "exec", "sysctl", "rule", "unrule", "release", "impair"}


# --- the registries --------------------------------------------------------------------------

def test_every_step_kind_is_a_field_of_the_scenario_format_and_performs():
    from labctl.scenario import Step, scenario_json_schema
    from labctl.steps import STEP_KINDS, StepKind

    assert list(STEP_KINDS) == [k for k in Step.model_fields if k not in ("node", "as_", "background", "note")]
    schema = scenario_json_schema()["$defs"]["Step"]["properties"]
    for key, kind in STEP_KINDS.items():
        assert key in schema
        assert type(kind).perform is not StepKind.perform, f"step kind {key} does nothing"


def test_every_expectation_kind_has_a_judge_in_the_analysis():
    import labctl.analyze.verdicts  # noqa: F401  (registers the judges)
    from labctl.expectations import EXPECTATION_KINDS
    from labctl.scenario import Expectation

    assert list(EXPECTATION_KINDS) == [k for k in Expectation.model_fields if k not in ("name", "points")]
    assert all(kind.judge is not None for kind in EXPECTATION_KINDS.values()), [k for k, v in EXPECTATION_KINDS.items() if not v.judge]


def test_a_kind_registered_twice_is_refused():
    from labctl.steps import StepKind, register

    class Again(StepKind):
        key, model = "close", str

    with pytest.raises(ValueError, match="registered twice"):
        register(Again)


def test_every_actor_op_of_the_contract_is_an_op_of_the_actor_with_those_arguments():
    import inspect

    from labctl.agent.actor import Actor

    for op, (required, optional) in protocol.ACTOR_OPS.items():
        if op == "stop":  # the command loop's own
            continue
        handler = getattr(Actor, f"op_{op}")
        params = [p for p in inspect.signature(handler).parameters.values() if p.name != "self"]
        assert [p.name for p in params if p.default is inspect.Parameter.empty] == list(required), op
        assert sorted(p.name for p in params if p.default is not inspect.Parameter.empty) == sorted(optional), op


def test_the_actor_refuses_a_call_outside_the_contract(tmp_path, capsys):
    import json

    from labctl.agent.actor import Actor

    actor = Actor({"node": "a", "run_dir": str(tmp_path)})
    actor.run_command({"id": 1, "op": "listen", "args": {"port": 1}}, False)
    actor.run_command({"id": 2, "op": "format_disk", "args": {}}, False)
    missing, unknown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not missing["ok"] and missing["error"] == "actor op listen: missing name"
    assert not unknown["ok"] and unknown["error"].startswith("unknown actor op 'format_disk'")


def test_the_router_diverts_only_the_flows_its_rules_name(tmp_path):
    from labctl.run import ScenarioRun

    one, loaded = scenario(tmp_path, MADE + """\
  - {node: router, rule: {action: drop, from: server, to: client, sport: 5000, flags: F, after: {from: client, dport: 5000, flags: F}}}
  - {node: router, rule: {action: drop, from: client, to: server, dport: 5000, flags: F}}
""")
    plan = plan_lab(loaded, {})
    run = ScenarioRun(NoHost(), loaded, plan, one, "img", tmp_path / "results")
    client = [str(i.address.ip) for i in plan.node("client").interfaces]
    server = [str(i.address.ip) for i in plan.node("server").interfaces]
    router = run.observers.actor_config(plan.node("router"))
    # One flow per match, each once: the second rule's match is the first rule's context with `to` named.
    assert router["rules"] is True and router["rule_flows"] == [
        {"src": client, "dst": None, "sport": None, "dport": None},      # MADE's hold rule: from client
        {"src": server, "dst": client, "sport": 5000, "dport": None},
        {"src": client, "dst": None, "sport": None, "dport": 5000},
        {"src": client, "dst": server, "sport": None, "dport": 5000},
    ]
    assert "rules" not in run.observers.actor_config(plan.node("client"))


class TracedRun:
    """What a wait step uses of the run: the tracepoints' records so far, sleep, and the actor call."""

    def __init__(self, records, arriving=()):
        self.records, self.arriving, self.calls = list(records), list(arriving), []

    def kernel_states(self):
        return self.records

    def sleep(self, seconds):
        if self.arriving:
            self.records.append(self.arriving.pop(0))
        return {"ok": True}

    def call(self, step, op, args, timeout, node=None):
        self.calls.append((node, op, args))
        return {"ok": True, "asked": "the actor"}


def traced(t, node, old, new, local="10.0.2.10:5003", remote="10.0.1.1:40000"):
    return {"t": t, "source": "tracepoint", "event": "inet_sock_set_state", "node": node, "local": local, "remote": remote,
            "oldstate": old, "newstate": new}


def test_waiting_for_a_state_to_be_gone_is_decided_by_the_tracepoints_when_they_run():
    from labctl.steps import STEP_KINDS
    from labctl.steps.waits import Wait

    wait = STEP_KINDS["wait"]
    action = Wait(node="server", state="LAST_ACK", local_port=5003, gone=True, timeout=1)
    # LAST_ACK for 0.2 ms, long gone before any sample could have seen it.
    run = TracedRun([traced(1.0, "server", "CLOSE_WAIT", "LAST_ACK"), traced(1.0002, "server", "LAST_ACK", "CLOSE")])
    reply = wait.perform(action, None, run)
    assert reply["ok"] and reply["result"]["decided_by"] == "tracepoints" and reply["result"]["left"]["to"] == "CLOSE"
    assert run.calls == []
    # Not there yet, then there, then gone: only the leaving ends the wait.
    run = TracedRun([traced(1.0, "server", "ESTABLISHED", "CLOSE_WAIT")],
                    arriving=[traced(1.1, "server", "CLOSE_WAIT", "LAST_ACK"), traced(1.3, "server", "LAST_ACK", "CLOSE")])
    assert wait.perform(action, None, run)["result"]["left"]["t"] == 1.3
    # Another node's, or another port's, does not count; nothing leaves: a timeout that says what decided.
    run = TracedRun([traced(1.0, "client", "LAST_ACK", "CLOSE"), traced(1.0, "server", "LAST_ACK", "CLOSE", local="10.0.2.10:6000")])
    reply = wait.perform(Wait(node="server", state="LAST_ACK", local_port=5003, gone=True, timeout=0.05), None, run)
    assert (reply["ok"], reply["errno"]) == (False, "TIMEOUT") and "tracepoints" in reply["error"]


def test_states_the_tracepoints_cannot_see_end_are_still_waited_for_by_the_nodes_sampling():
    from labctl.steps import STEP_KINDS
    from labctl.steps.waits import Wait

    for state in ("TIME_WAIT", "FIN_WAIT2"):  # a timewait socket's; an orphan's FIN_WAIT2 -> CLOSE is its handoff
        run = TracedRun([traced(1.0, "client", "FIN_WAIT2", "CLOSE")])
        reply = STEP_KINDS["wait"].perform(Wait(node="client", state=state, gone=True, timeout=1), None, run)
        assert reply == {"ok": True, "asked": "the actor"} and run.calls[0][1] == "wait_state"
    run = TracedRun([])
    run.kernel_states = lambda: None  # no tracepoints on this machine
    STEP_KINDS["wait"].perform(Wait(node="server", state="LAST_ACK", gone=True, timeout=1), None, run)
    assert run.calls and run.calls[0][1] == "wait_state"
