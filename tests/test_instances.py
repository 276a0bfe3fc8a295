"""Lab instances without Docker: names and keys, the engine's names for them, and the API on the
in-memory engine (two instances up at once, down of one, status of each, bad names refused)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from labctl import api
from labctl.engine.docker.labels import bridge_name, container_name, identity, key_of, network_name, of_lab, record_name
from labctl.engine.memory import MemoryEngine
from labctl.errors import UserError
from labctl.instances import DEFAULT_INSTANCE, check_instance, lab_key, split_key
from tests.conftest import THREE_NODES


@pytest.mark.parametrize("name", ["a", "sw1", "alice_1", "0", "x" * 20])
def test_instance_names_that_are_taken(name):
    assert check_instance(name) == name


@pytest.mark.parametrize("name", ["", "A", "a-b", "a.b", "_a", "x" * 21, "a b", "ä"])
def test_instance_names_that_are_refused(name):
    with pytest.raises(UserError, match="instance name"):
        check_instance(name)


def test_the_default_instance_is_the_lab_itself():
    assert check_instance(None) == DEFAULT_INSTANCE
    assert lab_key("teardown", DEFAULT_INSTANCE) == "teardown"
    assert container_name(lab_key("teardown"), "client") == "labctl-teardown-client"  # the names labs had before instances


def test_keys_go_back_to_lab_and_instance():
    for lab, instance in [("teardown", "default"), ("teardown", "a"), ("t-x", "sw_2")]:
        assert split_key(lab_key(lab, instance)) == (lab, instance)


def test_no_two_instances_share_an_engine_name():
    # Lab and node names hold '-', never '.'; instance names hold neither: the part before the
    # first '.' is the lab, the part up to the next '-' the instance.
    keys = ["a"] + [lab_key(lab, instance) for lab in ("a", "a-b", "a-b-c") for instance in ("b", "b_c", "c")]
    for name_of in (container_name, network_name, record_name):
        names = [name_of(key, part) for key in keys for part in ("c", "b-c", "x")]
        assert len(set(names)) == len(names)
    bridges = {bridge_name(network_name(key, "left")) for key in keys}
    assert len(bridges) == len(keys) and all(len(b) <= 15 for b in bridges)


def test_labels_name_the_instance_and_filters_select_it():
    assert identity("teardown.a")["org.labctl.instance"] == "a"
    assert identity("teardown")["org.labctl.instance"] == "default"
    assert key_of(identity("teardown.a")) == "teardown.a" and key_of(identity("teardown")) == "teardown"
    assert of_lab("teardown.a") == ["org.labctl.lab=teardown", "org.labctl.instance=a"]
    assert of_lab("teardown") == ["org.labctl.lab=teardown", "org.labctl.instance=default"]


# --- the API on the memory engine -------------------------------------------------------------

@pytest.fixture
def lab(tmp_path):
    path = tmp_path / "mem" / "lab.yaml"
    path.parent.mkdir()
    path.write_text(f"name: mem\n{THREE_NODES}")
    return path


def subnets(result) -> set[str]:
    return {str(link.subnet) for link in result.plan.links}


def test_two_instances_are_up_at_once_on_their_own_subnets(lab):
    engine = MemoryEngine()
    one = api.up(lab, engine=engine)
    two = api.up(lab, engine=engine, instance="b")
    assert two.plan.instance == "b" and two.plan.key == "mem.b"
    assert not subnets(one) & subnets(two)
    assert sorted(engine.labs()) == ["mem", "mem.b"]
    states = api.status(lab, engine=engine)
    assert [(s.lab, s.instance, s.health) for s in states] == [("mem", "default", "healthy"), ("mem", "b", "healthy")]
    assert [s.instance for s in api.status(lab, engine=engine, instance="b")] == ["b"]
    assert api.instances(lab, engine=engine) == ["b", "default"]


def test_up_of_an_instance_again_keeps_its_subnets(lab):
    engine = MemoryEngine()
    api.up(lab, engine=engine)
    first = api.up(lab, engine=engine, instance="b")
    again = api.up(lab, engine=engine, instance="b")
    assert subnets(again) == subnets(first) and again.report.created == []


def test_down_of_an_instance_takes_only_it(lab):
    engine = MemoryEngine()
    api.up(lab, engine=engine)
    api.up(lab, engine=engine, instance="b")
    api.up(lab, engine=engine, instance="c")
    api.down(lab, engine=engine, instance="b")
    assert sorted(engine.labs()) == ["mem", "mem.c"]
    api.down(lab, engine=engine)
    assert engine.labs() == ["mem.c"]
    api.up(lab, engine=engine, instance="d")
    api.down(lab, engine=engine, instance=api.ALL_INSTANCES)
    assert engine.labs() == []


def test_exec_reaches_the_instance_named(lab):
    engine = MemoryEngine()
    api.up(lab, engine=engine)
    api.up(lab, engine=engine, instance="b")
    api.exec_in(lab, "client", ["true"], engine=engine, instance="b")
    assert engine.node("mem.b", "client").execs == [["true"]]
    assert engine.node("mem", "client").execs == []


def test_the_object_api_runs_on_the_instance_it_was_brought_up_as(lab):
    from labctl import Lab

    engine = MemoryEngine()
    api.up(lab, engine=engine)
    with Lab.load(lab).up(engine=engine, instance="b") as running:
        assert running.instance == "b" and "instance='b'" in repr(running)
        running.exec("client", ["true"])
        assert engine.node("mem.b", "client").execs == [["true"]] and engine.node("mem", "client").execs == []
        assert running.status().instance == "b"
    assert engine.labs() == ["mem"]  # the block took down b only
    with pytest.raises(UserError, match="instance name"):
        Lab.load(lab).up(engine=engine, instance="B")
    assert engine.labs() == ["mem"]


def test_a_bad_instance_name_creates_nothing(lab):
    engine = MemoryEngine()
    for call in (lambda: api.up(lab, engine=engine, instance="B"), lambda: api.run(lab, engine=engine, instance="a-b"),
                 lambda: api.down(lab, engine=engine, instance="a.b"), lambda: api.status(lab, engine=engine, instance="-")):
        with pytest.raises(UserError, match="instance name"):
            call()
    assert engine.labs() == []


def test_status_of_an_instance_that_is_not_up(lab):
    engine = MemoryEngine()
    api.up(lab, engine=engine)
    with pytest.raises(UserError, match=r"lab 'mem \(instance b\)' is not up"):
        api.status(lab, engine=engine, instance="b")


def test_the_cli_refuses_a_bad_instance_name_with_exit_2():
    done = subprocess.run([sys.executable, "-m", "labctl", "up", "teardown", "--instance", "Bad-1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "instance name 'Bad-1' is not valid" in done.stderr and "Traceback" not in done.stderr
