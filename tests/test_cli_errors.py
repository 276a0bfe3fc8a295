"""User-caused problems at the command line: one clean message, exit 2, no traceback,
and nothing touched (these need no engine: each is refused before one is reached)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def labctl(*argv: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labctl", *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def assert_clean(result: subprocess.CompletedProcess, says: str, code: int = 2) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert says in result.stderr


@pytest.mark.parametrize("argv, says", [
    (["sttus"], "No such command 'sttus'"),
    (["exprot"], "No such command 'exprot'"),
    (["export", "bogus"], "No such command 'bogus'"),
    (["up", "--bogus", "x"], "No such option: --bogus"),
    (["validate"], "Missing argument"),
])
def test_a_mistyped_command_is_one_usage_message(argv, says):
    result = labctl(*argv)
    assert_clean(result, says)
    assert "--help" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the message and its hint


def test_the_cli_does_not_import_click():
    # Typer 0.29 no longer installs click: labctl must not need it.
    code = "import sys, labctl.cli; sys.exit(1 if 'click' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_results_pointing_at_a_file_is_refused_before_the_lab_is_touched(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("")
    # DOCKER_HOST points nowhere: reaching for the engine would be a different error.
    result = labctl("run", "labs/teardown", "-s", "normal-close", "--results", str(target), env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert_clean(result, "is a file, not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_results_directory_is_refused(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    result = labctl("run", "labs/teardown", "-s", "normal-close", "--results", str(target), env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert_clean(result, "is not writable")


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/sys/kernel").is_dir(), reason="sysfs refuses even root")
def test_a_results_directory_even_root_cannot_write_is_refused():
    result = labctl("run", "labs/teardown", "-s", "normal-close", "--results", "/sys/kernel/labctl-results",
                    env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert_clean(result, "is not writable")


def test_a_results_directory_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    result = labctl("run", "labs/teardown", "-s", "normal-close", "--results", str(tmp_path / "f" / "sub"), env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert_clean(result, "results directory")


def test_the_results_check_sees_a_full_disk(tmp_path, monkeypatch):
    from collections import namedtuple

    from labctl import environment
    from labctl.errors import UserError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(environment.shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match="MiB free"):
        environment.check_results_dir(tmp_path)


@pytest.mark.parametrize("env, says", [
    ({"DOCKER_HOST": "tcp://[::1"}, "DOCKER_HOST='tcp://[::1' is not an engine address"),
    ({"DOCKER_HOST": "bogus://x"}, "is not an engine address"),
    ({"LABCTL_SUBNET_POOL": "10.0.0.1/16"}, "LABCTL_SUBNET_POOL='10.0.0.1/16' is not an IPv4 network"),
    ({"LABCTL_SUBNET_POOL": "banana"}, "is not an IPv4 network"),
    ({"LABCTL_SUBNET_POOL": "10.0.0.0/30"}, "too small"),
])
def test_a_bad_environment_variable_is_one_message(env, says):
    assert_clean(labctl("up", "labs/teardown", env={"DOCKER_HOST": "tcp://127.0.0.1:9", **env}), says)


MALFORMED_DOCKER_HOSTS = [("tcp://:::bad", "Port could not be cast to integer"), ("tcp://127.0.0.1:99999", "Port out of range"),
                          ("http://[::1", "Invalid IPv6 URL"), ("bogus://x", "Invalid bind address protocol")]


@pytest.mark.parametrize("host, why", MALFORMED_DOCKER_HOSTS)
def test_a_malformed_docker_host_is_an_engine_error_from_the_python_api(host, why, monkeypatch):
    # docker-py raises a bare ValueError for these; an API user gets labctl's EngineError, as the CLI's user does.
    from labctl import api
    from labctl.engine.docker import DockerEngine
    from labctl.errors import EngineError

    monkeypatch.setenv("DOCKER_HOST", host)
    with pytest.raises(EngineError, match=f"DOCKER_HOST='{re.escape(host)}' is not an engine address: {why}"):
        DockerEngine.connect()
    with pytest.raises(EngineError, match="is not an engine address"):
        api.status("labs/teardown")


@pytest.mark.parametrize("host, why", MALFORMED_DOCKER_HOSTS)
def test_a_malformed_docker_host_is_one_message_from_the_cli(host, why):
    for argv in (["status", "labs/teardown"], ["down", "labs/teardown"], ["doctor"]):
        result = labctl(*argv, env={"DOCKER_HOST": host})
        assert_clean(result, f"DOCKER_HOST='{host}' is not an engine address: {why}")


def test_commands_that_need_no_engine_ignore_a_bad_docker_host():
    result = labctl("validate", "labs/teardown", env={"DOCKER_HOST": "bogus://x"})
    assert result.returncode == 0, result.stderr


def test_validate_checks_the_lab_and_every_scenario_without_an_engine():
    result = labctl("validate", "labs/teardown", "--json", env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert result.returncode == 0, result.stderr
    assert '"lab": "teardown"' in result.stdout


def test_an_early_ctrl_c_is_status_130_without_a_traceback():
    # Once labctl's own code runs, a Ctrl-C is the user's. The interpreter's own start-up is
    # Python's, so the signal is sent only after the child reports (-X importtime, on stderr)
    # a first labctl submodule imported, which the CLI's import inside labctl.__main__'s guard
    # does (runpy still looks __main__ up after the package itself is imported). A fixed
    # delay from process start sometimes landed in the interpreter's start-up on a loaded machine.
    import select

    for delay in (0.0, 0.05, 0.3, 0.6):
        process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "labctl", "validate", "labs/teardown"],
                                   cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        seen, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stderr], [], [], 1.0)
            line = process.stderr.readline() if ready else ""
            seen.append(line)
            if line.split("|")[-1].strip().startswith("labctl.") or process.poll() is not None:
                break
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
        stderr = "".join(seen) + rest
        assert "Traceback" not in stderr, stderr
        assert process.returncode in (0, 130, -signal.SIGINT), (delay, process.returncode, stderr)
