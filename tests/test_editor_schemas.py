"""`labctl schema lab|scenario`: every built-in lab and scenario is valid under the published
schemas, as rendered for a run and, where the raw file is YAML already, as an editor sees it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from labctl.export.schemas import schema
from labctl.loader import _scenario_head, rendered_data
from tests.test_cli_conventions import run_cli

ROOT = Path(__file__).resolve().parent.parent
LAB_FILES = sorted(ROOT.glob("labs/*/lab.yaml")) + sorted(ROOT.glob("tests/labs/*/lab.yaml"))
SCENARIO_FILES = sorted(ROOT.glob("labs/*/scenarios/*.yaml")) + sorted(ROOT.glob("tests/labs/*/scenarios/*.yaml"))


def validator(kind: str) -> jsonschema.Draft202012Validator:
    published = schema(kind)
    jsonschema.Draft202012Validator.check_schema(published)
    return jsonschema.Draft202012Validator(published)


def problems(kind: str, data) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in validator(kind).iter_errors(data)]


def renderings(path: Path) -> list[tuple[dict, object]]:
    """The file rendered with its defaults, once per matrix point (as `labctl run` renders it)."""
    text = path.read_text()
    head, _ = _scenario_head(text, path)
    defaults, matrix = head.get("params") or {}, head.get("matrix") or {}
    points = [dict(zip(matrix, values)) for values in itertools.product(*matrix.values())] or [{}]
    return [({**defaults, **point}, rendered_data(text, path, {**defaults, **point})) for point in points]


def test_there_are_built_in_files_to_check():
    assert len(LAB_FILES) >= 2 and len(SCENARIO_FILES) >= 8


@pytest.mark.parametrize("path", LAB_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_built_in_lab_is_valid(path):
    for params, data in renderings(path):
        assert problems("lab", data) == [], params


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_built_in_scenario_is_valid_as_rendered(path):
    for params, data in renderings(path):
        assert problems("scenario", data) == [], params


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_built_in_scenario_is_valid_as_an_editor_sees_it(path):
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        pytest.skip("a {% %} block at the start of a line: not YAML before rendering, whatever the schema says")
    assert problems("scenario", raw) == []


def test_a_jinja_expression_or_a_numeric_string_stands_for_a_number_but_words_do_not():
    base = {"name": "x", "steps": [{"node": "server", "listen": {"port": 5000}}]}
    for port in (5000, "5000", "{{ port }}"):
        base["steps"][0]["listen"]["port"] = port
        assert problems("scenario", base) == [], port
    base["steps"][0]["listen"]["port"] = "five thousand"
    assert problems("scenario", base)
    base["steps"][0]["listen"]["port"] = 70000
    assert problems("scenario", base)


def test_an_unknown_step_key_is_refused():
    assert problems("scenario", {"name": "x", "steps": [{"node": "server", "listne": {"port": 1}}]})


@pytest.mark.parametrize("kind", ["lab", "scenario"])
def test_the_command_prints_each_schema(kind):
    result = run_cli("schema", kind)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["$id"].endswith(f"/{kind}-v1.json")
    assert printed == schema(kind)


def test_an_unknown_kind_is_a_usage_error():
    result = run_cli("schema", "topology")
    assert result.returncode == 2
    assert "lab" in result.stderr and "scenario" in result.stderr
