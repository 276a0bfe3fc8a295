"""The teardown lab: every scenario, every matrix point, all expectations held, on the real kernel."""

from __future__ import annotations

import warnings

import pytest

from labctl import api
from labctl.cpuload import cpu_hog
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


def test_every_scenario_holds_while_a_cpu_hog_keeps_every_core_busy(engine, outcomes, tmp_path):
    # After the unloaded pass (the fixture): the lab is up, so the hog meets the runs, not the deploy.
    # Verdicts only, never times; a failure is rerun once under the hog, as above.
    with cpu_hog() as hog:
        loaded = api.run("teardown", engine=engine, root=tmp_path / "hog")
        failed = [o for o in loaded if not o.passed]
        for outcome in failed:
            warnings.warn(f"{outcome.scenario} failed once under the CPU hog, rerunning: {_failures(outcome)}")
            name, _, point = outcome.scenario.partition("[")
            params = dict(p.split("=", 1) for p in point.rstrip("]").split(",")) if point else {}
            [again] = api.run("teardown", [name], params, engine=engine, root=tmp_path / "rerun")
            assert again.passed, _failures(again)
    assert len(loaded) == 10
    assert hog.idle_fraction is not None and hog.idle_fraction < 0.05, hog.describe()  # the cores were busy


def _failures(outcome) -> str:
    failed = [f"{v.description}: observed {v.observed}" for v in outcome.verdicts if not v.passed]
    return f"{outcome.path}: " + "; ".join(failed)
