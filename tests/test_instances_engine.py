"""Two instances of the teardown lab on the real engine, up at once: their own containers, networks and
(moved) fixed subnets, both passing lost-final-ack; down of one leaves the other running and passing.

The lab's default instance is never touched: another labctl may be using it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network

import pytest

from labctl import api

pytestmark = pytest.mark.engine

FIXED = [IPv4Network("10.250.1.0/24"), IPv4Network("10.250.2.0/24")]  # labs/teardown/lab.yaml
INSTANCES = ("ita", "itb")


def containers(engine, instance: str) -> dict[str, str]:
    found = engine.client.containers.list(all=True, filters={"label": ["org.labctl.lab=teardown", f"org.labctl.instance={instance}"]})
    return {c.labels["org.labctl.node"]: c.status for c in found}


def failures(outcome) -> str:
    return f"{outcome.path}: " + "; ".join(f"{v.description}: {v.observed}" for v in outcome.verdicts if not v.passed)


@pytest.fixture
def two(engine, node_image):
    for instance in INSTANCES:
        api.down("teardown", engine=engine, instance=instance)
    yield INSTANCES
    for instance in INSTANCES:
        api.down("teardown", engine=engine, instance=instance)


def test_two_instances_run_at_once_and_down_takes_only_one(engine, two, tmp_path):
    # Both at once, from cold: planning and network creation must not take the same free subnet twice.
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda i: api.run("teardown", ["lost-final-ack"], engine=engine, root=tmp_path / i, instance=i), two))
    for instance, [outcome] in zip(two, runs):
        assert outcome.passed, failures(outcome)
        assert containers(engine, instance) == {"client": "running", "router": "running", "server": "running"}

    # Each run says which instance ran it and where its fixed subnets went; its addresses are those.
    records = [json.loads((outcome.path / "run.json").read_text()) for [outcome] in runs]
    moved = [{IPv4Network(k): IPv4Network(v) for k, v in record["remap"].items()} for record in records]
    for instance, record, remap in zip(two, records, moved):
        assert record["instance"] == instance and set(remap) == set(FIXED)
        assert {name: IPv4Network(link["subnet"]) for name, link in record["links"].items()} == {"left": remap[FIXED[0]], "right": remap[FIXED[1]]}
        assert record["nodes"]["server"]["interfaces"]["right"] == f"{remap[FIXED[1]].network_address + 10}/24"
    assert not set(moved[0].values()) & set(moved[1].values()) and not set(moved[0].values()) & set(FIXED)

    # The kernel's own view in each instance: the client's route to the server's subnet goes via its
    # own router, and the server's name resolves to its own moved address.
    for instance, remap in zip(two, moved):
        routes = json.loads(api.exec_in("teardown", "client", ["ip", "-j", "route"], engine=engine, instance=instance).stdout)
        [route] = [r for r in routes if r["dst"] == str(remap[FIXED[1]])]
        assert IPv4Address(route["gateway"]) in remap[FIXED[0]]
        hosts = api.exec_in("teardown", "client", ["getent", "hosts", "server"], engine=engine, instance=instance).stdout
        assert hosts.split()[0] == str(remap[FIXED[1]].network_address + 10)
        ping = api.exec_in("teardown", "client", ["ping", "-c", "1", "-W", "2", str(remap[FIXED[1]].network_address + 10)],
                           engine=engine, instance=instance)
        assert ping.exit_code == 0 and "ttl=63" in ping.stdout, ping.stdout + ping.stderr

    states = {s.instance: s for s in api.status("teardown", engine=engine) if s.instance in two}
    assert set(states) == set(two) and all(s.health == "healthy" for s in states.values())

    api.down("teardown", engine=engine, instance=two[0])
    assert containers(engine, two[0]) == {}
    assert containers(engine, two[1]) == {"client": "running", "router": "running", "server": "running"}
    [again] = api.run("teardown", ["lost-final-ack"], engine=engine, root=tmp_path / "again", instance=two[1])
    assert again.passed, failures(again)
