"""Scenario step kinds, one module per family, each kind found through one registry.

Adding a step kind touches one file: write its model and a ``StepKind``
subclass decorated with ``@register`` in a module here (imported below, in
the order its key appears in the scenario file format). The scenario model
gains the key, the loader checks it, the runner performs it, the timeline
and the ladder read it, all through ``STEP_KINDS``.
"""

from .base import STEP_KINDS, TCP_STATES, Names, StepKind, Strict, TcpState, register, step_kind
from . import sockets, node, packets, links, waits  # noqa: F401,E402  (registration order = field order)

__all__ = ["STEP_KINDS", "TCP_STATES", "Names", "StepKind", "Strict", "TcpState", "register", "step_kind"]
