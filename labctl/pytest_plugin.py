"""pytest fixtures for labs (registered as the ``labctl.pytest_plugin`` pytest11 entry point).

``lab`` is a factory: ``lab(ref, params=None)`` brings a lab up (once per test for the same
ref and params) and takes it down after the test, pass or fail. ``module_lab`` does the same
for a whole module. Runs go to a temporary results directory (``labctl_results``)::

    def test_lost_final_ack(lab):
        running = lab("teardown")
        run = running.run("lost-final-ack")
        assert run.passed, run.explain()

Override ``labctl_engine`` in a conftest.py to use another engine (None: the default, Docker).
``--labctl-keep`` leaves the labs up after the tests, to look at them. Disable the plugin with
``-p no:labctl.pytest_plugin``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import pytest

if TYPE_CHECKING:
    from .engine import Engine
    from .lab import RunningLab

LabFactory = Callable[..., "RunningLab"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("labctl")
    group.addoption("--labctl-keep", action="store_true", default=False,
                    help="labctl: leave the labs the lab fixtures brought up running after the tests")


@pytest.fixture(scope="session")
def labctl_engine() -> "Engine | None":
    """The engine the lab fixtures use; None is labctl's default (Docker). Override to change it."""
    return None


@pytest.fixture(scope="session")
def labctl_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the lab fixtures' runs write their run directories."""
    return tmp_path_factory.mktemp("labctl-results")


class _Labs:
    """Labs brought up by one fixture instance, taken down (newest first) when it ends."""

    def __init__(self, engine: "Engine | None", results: Path, keep: bool):
        self.engine, self.results, self.keep = engine, results, keep
        self.up: dict[tuple, RunningLab] = {}

    def __call__(self, ref: str | Path, params: Mapping[str, Any] | None = None) -> "RunningLab":
        from .lab import Lab

        key = (str(ref), tuple(sorted((k, str(v)) for k, v in (params or {}).items())))
        if key not in self.up:
            self.up[key] = Lab.load(ref, params).up(engine=self.engine, keep=self.keep, results=self.results)
        return self.up[key]

    def close(self) -> None:
        errors = []
        for running in reversed(list(self.up.values())):
            if self.keep:
                continue
            try:
                running.down()
            except Exception as exc:  # take the others down still
                errors.append(f"{running.name}: {exc}")
        if errors:
            raise RuntimeError("labctl: could not take down " + "; ".join(errors))


def _labs(request: pytest.FixtureRequest, engine: "Engine | None", results: Path) -> Iterator[LabFactory]:
    labs = _Labs(engine, results, bool(request.config.getoption("labctl_keep")))
    try:
        yield labs
    finally:
        labs.close()


@pytest.fixture
def lab(request: pytest.FixtureRequest, labctl_engine: "Engine | None", labctl_results: Path) -> Iterator[LabFactory]:
    """``lab(ref, params=None) -> RunningLab``: up for this test, down after it."""
    yield from _labs(request, labctl_engine, labctl_results)


@pytest.fixture(scope="module")
def module_lab(request: pytest.FixtureRequest, labctl_engine: "Engine | None", labctl_results: Path) -> Iterator[LabFactory]:
    """``module_lab(ref, params=None) -> RunningLab``: up once for the module's tests, down after the last."""
    yield from _labs(request, labctl_engine, labctl_results)
