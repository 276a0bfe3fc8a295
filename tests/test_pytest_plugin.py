"""The pytest plugin (labctl.pytest_plugin) in a pytest of its own, on the in-memory engine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = """
import pytest
from labctl.engine.memory import MemoryEngine

ENGINE = MemoryEngine()

@pytest.fixture(scope="session")
def labctl_engine():
    return ENGINE
"""

TESTS = """
from conftest import ENGINE

def test_up_for_the_test(lab, labctl_results):
    running = lab("teardown")
    assert lab("teardown") is running  # once per test
    assert ENGINE.labs() == ["teardown"]
    run = running.run("lost-final-ack")
    assert run.path.parent.parent == labctl_results

def test_down_after_it():
    assert ENGINE.labs() == []

def test_down_after_a_failure_too(lab):
    lab("teardown")
    raise AssertionError("the test fails")

def test_still_down():
    assert ENGINE.labs() == []

def test_module_lab_first(module_lab):
    module_lab("teardown", params={"port": 6000})

def test_module_lab_stays(module_lab):
    assert ENGINE.labs() == ["teardown"]
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(TESTS))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "labctl.pytest_plugin", "-p", "no:randomly", "-p", "no:cacheprovider",
                           "-q", "-rA", "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py"), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def test_the_lab_fixture_brings_labs_up_per_test_and_down_after(tmp_path):
    done = _pytest(tmp_path)
    assert "1 failed, 5 passed" in done.stdout, done.stdout + done.stderr
    assert "FAILED test_inner.py::test_down_after_a_failure_too" in done.stdout


def test_the_plugin_is_a_pytest11_entry_point_named_after_its_module():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"labctl.pytest_plugin": "labctl.pytest_plugin"}
