"""labctl: networks of Docker containers for TCP experiments, with evidence.

The Python API reads like the lab (see ``labctl.lab``)::

    from labctl import Lab

    with Lab.load("teardown").up() as running:
        run = running.run("lost-final-ack")
    assert run.passed, run.explain()

This file stays import-free: it is copied into the node image together with
``labctl.agent``, where only the Python standard library exists. The names
below are imported on first use (PEP 562).
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> the module that defines it
_PUBLIC = {
    "Lab": "labctl.lab", "RunningLab": "labctl.lab", "Run": "labctl.lab",
    "Verdict": "labctl.analyze.results", "Segment": "labctl.analyze.segments",
    "SocketTimeline": "labctl.analyze.states", "Transition": "labctl.analyze.states",
    "ExecResult": "labctl.engine", "UserError": "labctl.errors",
}
__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:
    from .analyze.results import Verdict
    from .analyze.segments import Segment
    from .analyze.states import SocketTimeline, Transition
    from .engine import ExecResult
    from .errors import UserError
    from .lab import Lab, Run, RunningLab


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'labctl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted([*globals(), *_PUBLIC])
