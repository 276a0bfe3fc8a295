"""One scenario run on a lab that is up, recorded in a run directory, in parts with one job each.

- ``runner.py``: the order of a run (``ScenarioRun``), run.json, the verdicts at the end.
- ``observers.py``: kernel tracepoints on the host and one actor per node (captures, state sampling).
- ``dispatch.py``: the steps one by one, each performed by its kind (``labctl.steps``).
- ``changes.py``: sysctls, impairments and loops the steps set, recorded and put back at the end.
- ``collect.py``: what the nodes recorded, copied into the run directory.
"""

from .runner import RunInterrupted, RunResult, ScenarioRun

__all__ = ["RunInterrupted", "RunResult", "ScenarioRun"]
