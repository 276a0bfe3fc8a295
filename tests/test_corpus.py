"""The malformed-input corpus: every file in tests/corpus/lab and tests/corpus/scenario is
refused with one located message (file, line, field), as a LabFileError (exit 2), quickly,
without a traceback and before anything could be created (loading never reaches an engine).

Each corpus file says what it expects in its first lines::

    # expect: <a fragment of the message>
    # field: <the field the message names, or - when the problem has none (syntax, encoding)>
    # param: NAME=VALUE      (optional, repeatable: a -p value, with \\n for a newline)
    # line: N                (optional: the exact line; otherwise any line must be named)
"""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labctl.errors import LabFileError, UserError
from labctl.loader import MAX_FILE_BYTES, load_lab, load_scenario_file

CORPUS = Path(__file__).resolve().parent / "corpus"
ROOT = CORPUS.parent.parent
LAB_CASES = sorted((CORPUS / "lab").glob("*.yaml"))
SCENARIO_CASES = sorted((CORPUS / "scenario").glob("*.yaml"))
HANG_GUARD = 10.0  # seconds: a case slower than this is taken for a hang (a guard, not a benchmark)


def expectation(path: Path) -> dict:
    header: dict = {"param": {}}
    for raw in path.read_bytes().split(b"\n"):
        line = raw.decode("ascii", "replace")
        if not line.startswith("# ") or ":" not in line:
            break
        key, _, value = line[2:].partition(": ")
        if key == "param":
            name, _, text = value.partition("=")
            header["param"][name] = codecs.decode(text, "unicode_escape")
        else:
            header[key] = value
    assert "expect" in header and "field" in header, f"{path.name}: no '# expect:' and '# field:' header"
    return header


def assert_refused(path: Path, load) -> None:
    wanted = expectation(path)
    started = time.monotonic()
    with pytest.raises(LabFileError) as caught:
        load(wanted["param"])
    elapsed = time.monotonic() - started
    error = caught.value
    first_line = str(error).splitlines()[0]
    assert wanted["expect"] in error.message, f"{path.name}: {first_line}"
    assert error.location is not None and error.location.file is not None, first_line
    assert Path(error.location.file).name == path.name, first_line
    assert error.location.line is not None, f"{path.name}: no line in {first_line}"
    if "line" in wanted:
        assert error.location.line == int(wanted["line"]), f"{path.name}: {first_line}"
    if wanted["field"] != "-":
        assert error.location.field is not None and error.location.field.startswith(wanted["field"]), f"{path.name}: {first_line}"
    assert "\n" not in error.message, f"{path.name}: the message is one line: {error.message!r}"
    assert len(first_line) < 400, first_line
    assert elapsed < HANG_GUARD, f"{path.name} took {elapsed:.1f} s"


def test_the_corpus_has_at_least_sixty_cases():
    assert len(LAB_CASES) + len(SCENARIO_CASES) >= 60


@pytest.mark.parametrize("path", LAB_CASES, ids=lambda p: p.stem)
def test_a_malformed_lab_file_is_one_located_error(path):
    assert_refused(path, lambda params: load_lab(path, params))


@pytest.mark.parametrize("path", SCENARIO_CASES, ids=lambda p: p.stem)
def test_a_malformed_scenario_file_is_one_located_error(path):
    lab = load_lab(CORPUS / "lab.yaml")
    assert_refused(path, lambda params: load_scenario_file(path, lab, params))


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "lab.yaml"
    with path.open("w") as handle:
        handle.write("name: c\ndescription: '")
        handle.write("x" * (MAX_FILE_BYTES + 10))
        handle.write("'\n")
    with pytest.raises(LabFileError, match="lab and scenario files are at most"):
        load_lab(path)


def labctl(*argv: str) -> subprocess.CompletedProcess:
    # No engine: a DOCKER_HOST nobody listens on makes any attempt to reach one fail differently.
    return subprocess.run([sys.executable, "-m", "labctl", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "DOCKER_HOST": "tcp://127.0.0.1:9"})


@pytest.mark.parametrize("name", ["yaml-alias-bomb", "yaml-deep-flow", "enc-latin1", "tpl-huge-range", "num-delay-nan",
                                  "param-adds-keys"])
def test_the_command_line_prints_one_located_line_and_exits_2(name):
    path = CORPUS / "lab" / f"{name}.yaml"
    params = [arg for name_value in expectation(path)["param"].items() for arg in ("-p", "=".join(name_value))]
    result = labctl("validate", str(path), *params)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: {path}:"), first
    assert expectation(path)["expect"] in first


def test_down_of_an_alias_bomb_fails_fast_before_the_engine():
    path = CORPUS / "lab" / "yaml-alias-bomb.yaml"
    started = time.monotonic()
    result = labctl("down", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "more than 200,000 values" in result.stderr
    assert time.monotonic() - started < HANG_GUARD


def test_a_scenario_of_the_corpus_through_validate(tmp_path):
    lab = tmp_path / "lab"
    (lab / "scenarios").mkdir(parents=True)
    (lab / "lab.yaml").write_text((CORPUS / "lab.yaml").read_text())
    (lab / "scenarios" / "bad.yaml").write_bytes((CORPUS / "scenario" / "scn-matrix-150x150.yaml").read_bytes())
    started = time.monotonic()
    result = labctl("validate", str(lab))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "the matrix has 22,500 points" in result.stderr and "bad.yaml:" in result.stderr
    assert time.monotonic() - started < HANG_GUARD
