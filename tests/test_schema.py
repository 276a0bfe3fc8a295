"""The published JSON Schema says what the loader says, so editors check lab files alike."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from labctl.model import lab_json_schema

TEARDOWN = Path(__file__).resolve().parent.parent / "labs" / "teardown" / "lab.yaml"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = lab_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
def teardown() -> dict:
    return yaml.safe_load(TEARDOWN.read_text())


def test_the_schema_declares_its_draft_and_identity():
    schema = lab_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://labctl.invalid/schema/lab-v1.json"


def test_the_teardown_lab_is_valid(validator, teardown):
    assert list(validator.iter_errors(teardown)) == []


def test_an_unknown_key_in_a_node_is_refused(validator, teardown):
    lab = copy.deepcopy(teardown)
    lab["nodes"]["server"]["colour"] = "red"
    (error,) = validator.iter_errors(lab)
    assert list(error.absolute_path) == ["nodes", "server"]
    assert "'colour'" in error.message


def test_an_unknown_key_at_the_top_is_refused(validator, teardown):
    lab = {**teardown, "nodez": {}}
    (error,) = validator.iter_errors(lab)
    assert list(error.absolute_path) == []
    assert "'nodez'" in error.message


def test_a_role_other_than_host_or_router_is_refused(validator, teardown):
    lab = copy.deepcopy(teardown)
    lab["nodes"]["router"]["role"] = "switch"
    assert [list(e.absolute_path) for e in validator.iter_errors(lab)] == [["nodes", "router", "role"]]
