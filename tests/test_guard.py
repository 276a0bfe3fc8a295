"""Issue 11, engine side, without an engine: the lab lock, containment refused at validation, the plan's guarantees."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

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


# --- locks are shared by every user of the machine (two users, one engine) -----------------

OTHER_UID = 65534  # nobody


def other_user_python() -> str:
    """An interpreter the other user may run (this one may live under root's private home)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run([candidate, "-c", "pass"], preexec_fn=as_other_user, capture_output=True)
        except PermissionError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.fail("no python3 the other user may run (the test needs /usr/bin/python3)")


def as_other_user() -> None:
    os.setgroups([])
    os.setgid(OTHER_UID)
    os.setuid(OTHER_UID)


HOLD_AS = """
import sys, time
from labctl import locking
with locking.lab_lock("docker-test", sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""
TRY_AS = """
import sys
from labctl import locking
try:
    with locking.lab_lock("docker-test", sys.argv[1], wait=False):
        print("got it")
except locking.LabBusy as exc:
    print("busy:", exc.message)
"""


def as_other(code: str, lab: str, **popen) -> list:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Its own runtime directory, as a logged-in user has: locks must not go there.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": root, "XDG_RUNTIME_DIR": f"/run/user/{OTHER_UID}"}
    return [other_user_python(), "-c", code, lab], dict(env=env, preexec_fn=as_other_user, text=True, **popen)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a second user")
def test_two_users_exclude_each_other_on_a_lab(monkeypatch):
    # The default lock directory, as two users of one engine have it (no LABCTL_STATE_DIR).
    monkeypatch.delenv(locking.STATE_ENV)
    lab = f"two-users-{os.getpid()}"
    path = locking.lock_path("docker-test", lab)
    argv, options = as_other(HOLD_AS, lab, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    holder = subprocess.Popen(argv, **options)
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        with pytest.raises(locking.LabBusy) as refused:
            with locking.lab_lock("docker-test", lab, wait=False):
                pass
        assert f"pid {holder.pid}" in refused.value.message
        assert oct(path.parent.stat().st_mode & 0o7777) == oct(locking.SHARED_DIR_MODE)
        assert oct(path.stat().st_mode & 0o777) == oct(locking.SHARED_FILE_MODE)
        holder.kill()
        holder.wait()
        with locking.lab_lock("docker-test", lab):  # and the other way round: root holds, the other user is refused
            argv, options = as_other(TRY_AS, lab, capture_output=True)
            other = subprocess.run(argv, **options)
            assert other.stdout.startswith(f"busy: lab '{lab}' is busy: its lock is held by pid {os.getpid()}"), other.stderr
    finally:
        holder.kill()
        holder.wait()
        path.unlink(missing_ok=True)


def test_the_default_lock_directory_is_one_for_every_user(monkeypatch):
    monkeypatch.delenv(locking.STATE_ENV)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")  # a per-user directory is not where locks go
    assert locking.state_dir() == Path("/run/lock/labctl")
    assert locking.lock_path("docker-test", "lab1").parent == Path("/run/lock/labctl")


def test_a_lock_made_under_a_tight_umask_is_still_open_to_every_user(state_dir):
    previous = os.umask(0o077)
    try:
        with locking.lab_lock("docker-test", "lab1") as path:
            pass
    finally:
        os.umask(previous)
    assert oct(state_dir.stat().st_mode & 0o7777) == oct(locking.SHARED_DIR_MODE)  # made by labctl: made shared
    assert oct(path.stat().st_mode & 0o777) == oct(locking.SHARED_FILE_MODE)


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "directory", "fifo"])
def test_a_lock_name_planted_by_another_user_is_never_followed_or_written(plant, state_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = locking.lock_path("docker-test", "lab1")
    state_dir.mkdir()
    if plant == "symlink":
        path.symlink_to(victim)
    elif plant == "hardlink":
        os.link(victim, path)
    elif plant == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    with pytest.raises(locking.UserError) as refused:
        with locking.lab_lock("docker-test", "lab1", wait=False):
            pass
    assert str(path) in refused.value.message
    assert victim.read_text() == "precious\n"


def test_a_lock_directory_that_is_a_symlink_is_refused(state_dir, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    state_dir.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(locking.UserError, match="is not a directory"):
        with locking.lab_lock("docker-test", "lab1"):
            pass
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_what_another_user_wrote_in_a_lock_is_shown_only_as_printable_text(state_dir):
    state_dir.mkdir()
    path = locking.lock_path("docker-test", "lab1")
    path.write_bytes(b"pid 1 (\x1b[2Jlabctl run)\x07" + b"x" * 1000 + b"\nsecond line\n")
    assert locking.holder(path) == ("pid 1 ([2Jlabctl run)" + "x" * 1000)[:240]


def test_every_command_that_changes_or_runs_a_lab_takes_its_lock(tmp_path):
    """up, run, down, impair and loop: each refuses with --no-wait while another labctl holds the lab."""
    from labctl import api
    from labctl.engine.memory import MemoryEngine

    teardown = Path(__file__).resolve().parent.parent / "labs" / "teardown"
    engine = MemoryEngine()
    api.up(teardown, engine=engine)
    code = HOLDER.replace('"docker-test", "lab1"', f'"{engine.ident}", "teardown"')
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert holder.stdout.readline().strip() == "held"
    try:
        for name, command in [("up", lambda: api.up(teardown, engine=engine, wait=False)),
                              ("run", lambda: api.run(teardown, ["normal-close"], engine=engine, root=tmp_path, wait=False)),
                              ("down", lambda: api.down(teardown, engine=engine, wait=False)),
                              ("impair", lambda: api.impair(teardown, "right", "router", {"delay": "5ms"}, engine=engine, wait=False)),
                              # the lock comes first: the lab has one router, so this loop would be refused after it
                              ("loop", lambda: api.loop(teardown, "router", "router", 1, engine=engine, wait=False))]:
            with pytest.raises(locking.LabBusy, match=f"its lock is held by pid {holder.pid}"):
                command()
    finally:
        holder.kill()
        holder.wait()
    [state] = api.status(teardown, engine=engine)  # nothing was changed by the refused commands
    assert sorted(n.name for n in state.nodes) == ["client", "router", "server"]
    assert not any(link.get("impairments") for link in state.links)
