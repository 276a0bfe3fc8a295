"""Issue 11, engine side, without an engine: the lab lock, containment refused at validation, the plan's guarantees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from labctl import locking
from labctl.errors import LabFileError
from labctl.loader import load_lab_text
from labctl.plan import plan_lab


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(locking.STATE_ENV, str(tmp_path / "state"))
    return tmp_path / "state"


HOLDER = """
import sys, time
from labctl import locking
with locking.lab_lock("docker-test", "lab1"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_another_process() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_without_waiting_naming_the_first():
    holder = hold_in_another_process()
    try:
        with pytest.raises(locking.LabBusy) as refused:
            with locking.lab_lock("docker-test", "lab1", wait=False):
                pass
        assert f"pid {holder.pid}" in refused.value.message and refused.value.exit_code == 2
        assert locking.is_held("docker-test", "lab1").startswith(f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


def test_a_waiter_says_whom_it_waits_for_and_gets_the_lock_when_the_holder_is_killed():
    holder = hold_in_another_process()
    heard: list[str] = []

    def kill_soon(message: str) -> None:
        heard.append(message)
        os.kill(holder.pid, signal.SIGKILL)  # the kernel lets go of a dead process's lock

    started = time.monotonic()
    with locking.lab_lock("docker-test", "lab1", notify=kill_soon, timeout=20):
        assert time.monotonic() - started < 10
        assert locking.is_held("docker-test", "lab1") is None  # ours: not "another" holder
    holder.wait()
    assert len(heard) == 1 and heard[0].startswith(f"waiting for the lab lock held by pid {holder.pid} (")


def test_locks_are_per_engine_lab_and_instance_and_reentrant():
    with locking.lab_lock("docker-test", "lab1"):
        with locking.lab_lock("docker-test", "lab1", wait=False):  # the same thread: no deadlock
            pass
        with locking.lab_lock("docker-test", "lab2", wait=False), locking.lab_lock("docker-other", "lab1", wait=False), \
                locking.lab_lock("docker-test", "lab1", "second", wait=False):
            pass
    assert len({locking.lock_path("docker-test", "lab1"), locking.lock_path("docker-test", "lab2"),
                locking.lock_path("docker-other", "lab1"), locking.lock_path("docker-test", "lab1", "second")}) == 4


def lab(body: str):
    return load_lab_text("name: g\n" + textwrap.dedent(body))


def test_a_route_via_a_fixed_bridge_address_is_refused_at_its_line():
    with pytest.raises(LabFileError) as refused:
        lab("""
            nodes:
              client:
                routes: [{to: default, via: 10.9.1.254}]
              router: {role: router}
            links:
              - {name: left, endpoints: [client, router], subnet: 10.9.1.0/24}
            """)
    assert "bridge address" in refused.value.message and "the host" in refused.value.message
    assert refused.value.location.line == 5 and refused.value.location.field == "nodes.client.routes[0].via"


def test_a_route_via_a_pool_bridge_address_is_refused_when_planned_at_its_line():
    loaded = lab("""
        nodes:
          client:
            routes: [{to: default, via: 10.250.255.254}]
          router: {role: router}
        links:
          - {name: left, endpoints: [client, router]}
        """)
    with pytest.raises(LabFileError) as refused:
        plan_lab(loaded)
    assert "bridge address of link 'left'" in refused.value.message
    assert refused.value.location.line == 5


def test_a_host_may_not_be_told_to_forward():
    with pytest.raises(LabFileError) as refused:
        lab("""
            nodes:
              client: {sysctls: {net.ipv4.ip_forward: 1}}
              server: {}
            links:
              - {name: left, endpoints: [client, server]}
            """)
    assert "hosts do not forward" in refused.value.message and refused.value.location.line == 4


def test_every_node_is_planned_without_a_route_to_its_bridges_and_hosts_without_forwarding():
    plan = plan_lab(lab("""
        nodes:
          client: {}
          router: {role: router}
          server: {}
        links:
          - {name: left, endpoints: [client, router], subnet: 10.9.1.0/24}
          - {name: right, endpoints: [router, server], subnet: 10.9.2.0/24}
        """))
    assert [str(a) for a in plan.node("router").blocked] == ["10.9.1.254", "10.9.2.254"]
    assert plan.node("client").setup().blocked == ("10.9.1.254",)
    assert dict(plan.node("client").sysctls)["net.ipv4.ip_forward"] == "0"
    assert dict(plan.node("router").sysctls)["net.ipv4.ip_forward"] == "1"
    # The spec it records once set up is its spec hash, which that record does not change.
    assert plan.node("client").setup("img:1").spec == plan.node("client").spec_hash("img:1")
