"""The host<->agent contract: typed messages, the version every launch names, one launch line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labctl.agent import protocol
from labctl.agent.__main__ import main as agent_main
from labctl.impairments import parse_impairment
from labctl.nodes import ActorSession, command_line, reply_of
from labctl.engine import ExecResult
from labctl.errors import EngineError

ROOT = Path(__file__).resolve().parent.parent


def test_a_setup_goes_out_and_comes_back_as_the_same_message():
    setup = protocol.Setup("client", "host", (protocol.Interface("left", "10.250.1.1/24"),),
                           (protocol.Route("10.250.2.0/24", "10.250.1.2", "left"),), {"net.ipv4.ip_forward": "0"}, {"server": "10.250.2.1"})
    assert protocol.Setup.from_json(json.loads(json.dumps(setup.to_json()))) == setup


def test_a_message_of_the_wrong_shape_is_refused_by_name():
    with pytest.raises(protocol.ProtocolError, match="unknown field"):
        protocol.Hosts.from_json({"hosts": {}, "extra": 1})
    with pytest.raises(protocol.ProtocolError, match="missing field.*routes"):
        protocol.Setup.from_json({"node": "a", "role": "host", "interfaces": [], "sysctls": {}, "hosts": {}})
    with pytest.raises(protocol.ProtocolError, match=r"Setup.interfaces\[0\].name: expected str"):
        protocol.Setup.from_json({"node": "a", "role": "host", "interfaces": [{"name": 1, "address": "x"}], "routes": [],
                                  "sysctls": {}, "hosts": {}})


def test_every_launch_names_the_protocol_version():
    argv = protocol.command_line("inspect")
    assert argv[argv.index(protocol.VERSION_FLAG) + 1] == str(protocol.PROTOCOL_VERSION)
    assert f"PYTHONPATH={protocol.AGENT_HOME}" in argv  # the same line for every image


def test_an_agent_of_another_version_refuses_before_doing_anything(capsys):
    assert agent_main([protocol.VERSION_FLAG, str(protocol.PROTOCOL_VERSION + 1), "inspect"]) == protocol.EXIT_MISMATCH
    assert f"speaks {protocol.PROTOCOL_VERSION}" in capsys.readouterr().err


def test_the_host_says_which_node_speaks_another_version():
    with pytest.raises(EngineError, match="agent in node server speaks another protocol version"):
        reply_of("server", "inspect", ExecResult(protocol.EXIT_MISMATCH, "", "labctl speaks agent protocol 2, this agent speaks 1"))
    # An agent older than the version flag says it does not know it.
    with pytest.raises(EngineError, match="another protocol version"):
        reply_of("server", "inspect", ExecResult(2, "", "unknown agent command: --protocol"))


def test_a_failed_command_is_its_error_and_an_image_without_python_is_said_so():
    with pytest.raises(EngineError, match="loop on node r1 failed: no such loop"):
        reply_of("r1", "loop", ExecResult(1, json.dumps({"ok": False, "error": "no such loop"}), ""))
    with pytest.raises(EngineError, match="cannot start the labctl agent") as caught:
        reply_of("a", "setup", ExecResult(127, "", 'env: "python3": No such file or directory'))
    assert "python3" in caught.value.hint


def test_a_request_of_the_wrong_shape_is_a_reply_not_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "labctl.agent", protocol.VERSION_FLAG, str(protocol.PROTOCOL_VERSION),
                           "hosts", '{"hostz": {}}'], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout) == {"ok": False, "error": "Hosts: unknown field(s) hostz"}


def test_actor_calls_are_checked_against_the_op_shapes():
    protocol.check_call("listen", {"name": "lsn", "port": 80, "reuseaddr": True})
    with pytest.raises(protocol.ProtocolError, match="missing port"):
        protocol.check_call("listen", {"name": "lsn"})
    with pytest.raises(protocol.ProtocolError, match="unknown colour"):
        protocol.check_call("close", {"sock": "c", "colour": 1})
    with pytest.raises(protocol.ProtocolError, match="unknown actor op"):
        protocol.check_call("dance", {})


def test_the_actor_op_shapes_are_the_actors_own_signatures():
    import inspect

    from labctl.agent.actor import Actor

    for op, (required, optional) in protocol.ACTOR_OPS.items():
        if op == "stop":
            continue  # the actor's command loop handles it
        parameters = inspect.signature(getattr(Actor, f"op_{op}")).parameters
        names = [p for p in parameters if p != "self"]
        assert tuple(p for p in names if parameters[p].default is inspect.Parameter.empty) == required, op
        assert tuple(p for p in names if parameters[p].default is not inspect.Parameter.empty) == optional, op


def test_lab_file_settings_become_the_agents_in_its_units():
    imp = parse_impairment({"delay": "50ms", "jitter": "10ms", "loss": "5%", "rate": "1mbit", "limit": 100})
    assert imp.settings() == {"delay_ms": 50.0, "jitter_ms": 10.0, "distribution": "uniform", "loss_pct": 5.0,
                              "rate_bit": 1000000, "limit": 100}
    assert protocol.normalize(imp.settings()) == imp.settings()  # what the agent holds is what the host sent


def test_normalisation_refuses_what_the_agent_cannot_do():
    with pytest.raises(ValueError, match="unknown impairment setting"):
        protocol.normalize({"delay": 5})
    with pytest.raises(ValueError, match="reorder_pct needs delay_ms"):
        protocol.normalize({"reorder_pct": 5})
    assert protocol.normalize({"loss_pct": 0, "loss_correlation_pct": 20}) == {}


def test_the_agents_launch_line_is_written_once():
    # Everything launches the agent through protocol.command_line; nothing else spells it.
    spelled = re.compile(r"""["']-m["'],\s*["']labctl\.agent["']|["']python3 -m labctl\.agent|["']PYTHONPATH=""")
    found = [f"{path.relative_to(ROOT)}:{n}" for path in (ROOT / "labctl").rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if spelled.search(line) and path.name != "protocol.py" and "prog=" not in line]
    assert found == [], found


def test_the_one_shot_command_line_carries_its_request_as_json():
    argv = command_line("hosts", protocol.Hosts({"server": "10.250.2.1"}))
    assert argv[-2:] == ["hosts", '{"hosts": {"server": "10.250.2.1"}}']
    assert ActorSession.call.__doc__ and "ACTOR_OPS" in ActorSession.call.__doc__
