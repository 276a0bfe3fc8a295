"""The teardown lab: every scenario, every matrix point, all expectations held, on the real kernel."""

from __future__ import annotations

import warnings

import pytest

from labctl import api
from labctl.loader import load_lab, load_scenarios

pytestmark = pytest.mark.engine

SCENARIOS = ["normal-close", "lost-final-ack", "fin-to-closed", "linger-abort", "linger-timeout", "timewait-reuse",
             "old-duplicate"]


def test_the_lab_ships_every_scenario_of_the_course():
    names = {one.scenario.name for one in load_scenarios(load_lab("teardown"))}
    assert names == set(SCENARIOS)


@pytest.fixture(scope="module")
def outcomes(engine, node_image, tmp_path_factory):
    api.down("teardown", engine=engine)  # under the lab lock: never under another process's run
    try:
        yield {o.scenario: o for o in api.run("teardown", engine=engine, root=tmp_path_factory.mktemp("results"))}
    finally:
        api.down("teardown", engine=engine)  # under the lab lock: never under another process's run


@pytest.mark.parametrize("label", [
    "normal-close", "lost-final-ack", "fin-to-closed[method=kill]", "fin-to-closed[method=no_tw_buckets]",
    "linger-abort", "linger-timeout", "timewait-reuse[tw_reuse=0]", "timewait-reuse[tw_reuse=1]",
    "old-duplicate[timestamps=1]", "old-duplicate[timestamps=0]",
])
def test_scenario_holds(engine, outcomes, label, tmp_path):
    outcome = outcomes[label]
    if not outcome.passed:
        # One rerun, and the first failure stays visible as a warning. Seen once in a CI dry run
        # (timewait-reuse[tw_reuse=0]: the kernel made no TIME_WAIT for one connection) and not
        # reproduced in dozens of runs since; the repeat script is where such rates are measured.
        warnings.warn(f"{label} failed once, rerunning: {_failures(outcome)}")
        name, _, point = label.partition("[")
        params = dict(p.split("=", 1) for p in point.rstrip("]").split(",")) if point else {}
        [outcome] = api.run("teardown", [name], params, engine=engine, root=tmp_path)
    assert outcome.passed, _failures(outcome)


def _failures(outcome) -> str:
    failed = [f"{v['description']}: observed {v['observed']}" for v in outcome.verdicts if not v["passed"]]
    return f"{outcome.path}: " + "; ".join(failed)
