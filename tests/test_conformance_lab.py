"""The tcp-conformance lab (scenarios derived from packetdrill's tcp/close and tcp/ts_recent tests):
every scenario, every matrix point, all expectations held, on the real kernel."""

from __future__ import annotations

import warnings

import pytest

from labctl import api
from labctl.loader import load_lab, load_scenarios

LAB = "tcp-conformance"
SCENARIOS = ["local-close-then-remote-fin", "remote-fin-then-close", "close-in-syn-sent", "close-unread-data",
             "fin-retransmit", "simultaneous-close", "paws-replay"]


def test_the_lab_ships_every_scenario():
    names = {one.scenario.name for one in load_scenarios(load_lab(LAB))}
    assert names == set(SCENARIOS)


def test_every_scenario_names_its_packetdrill_source():
    for one in load_scenarios(load_lab(LAB)):
        description = one.scenario.description
        assert "packetdrill" in description and "Keeps:" in description and "Cannot keep:" in description, one.scenario.name


@pytest.fixture(scope="module")
def outcomes(engine, node_image, tmp_path_factory):
    api.down(LAB, engine=engine)
    try:
        yield {o.scenario: o for o in api.run(LAB, engine=engine, root=tmp_path_factory.mktemp("results"))}
    finally:
        api.down(LAB, engine=engine)


@pytest.mark.engine
@pytest.mark.parametrize("label", [
    "local-close-then-remote-fin", "remote-fin-then-close[rfc1337=0]", "remote-fin-then-close[rfc1337=1]",
    "close-in-syn-sent", "close-unread-data", "fin-retransmit", "simultaneous-close", "paws-replay",
])
def test_scenario_holds(engine, outcomes, label, tmp_path):
    outcome = outcomes[label]
    if not outcome.passed:
        # One rerun, as for the teardown lab; the first failure stays visible as a warning.
        warnings.warn(f"{label} failed once, rerunning: {_failures(outcome)}")
        name, _, point = label.partition("[")
        params = dict(p.split("=", 1) for p in point.rstrip("]").split(",")) if point else {}
        [outcome] = api.run(LAB, [name], params, engine=engine, root=tmp_path)
    assert outcome.passed, _failures(outcome)


def _failures(outcome) -> str:
    failed = [f"{v.description}: observed {v.observed}" for v in outcome.verdicts if not v.passed]
    return f"{outcome.path}: " + "; ".join(failed)
