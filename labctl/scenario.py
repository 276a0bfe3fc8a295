"""The scenario model: steps that act on a lab, and expectations on what happened.

A scenario reads like a textbook trace: each step names a node and one
action (a socket call, a packet rule, a sysctl, a command, a wait), and
each expectation names the evidence that must (or must not) exist. The
actions and the expectations are the kinds registered in ``labctl.steps``
and ``labctl.expectations``; this module only puts them together.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import ConfigDict, Field, create_model, model_validator

from .expectations import EXPECTATION_KINDS
from .steps import STEP_KINDS, Strict

StepName = str


class _StepBase(Strict):
    node: str | None = None
    as_: str | None = Field(None, alias="as", description="A name for the socket, rule or step this creates.")
    background: bool = Field(False, description="Do not wait for this step; `wait: {step: NAME}` does.")
    note: str | None = Field(None, description="Shown in the report beside the step.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_action(self) -> "_StepBase":
        given = [k for k in ACTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a step needs exactly one action of: {', '.join(ACTIONS)}" + (f" (got {', '.join(given)})" if given else ""))
        if given[0] in NODE_ACTIONS and self.node is None:
            raise ValueError(f"step '{given[0]}' needs `node:`")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ACTIONS if getattr(self, k) is not None)

    @property
    def action(self) -> Any:
        return getattr(self, self.kind)


# One optional field per step kind, named by its key: `{node: client, close: c}`.
Step = create_model("Step", __base__=_StepBase, __module__=__name__,
                    __doc__="One action, on one node where the action needs one.",
                    **{key: (Optional[kind.model], Field(None, description=kind.description)) for key, kind in STEP_KINDS.items()})

ACTIONS = tuple(STEP_KINDS)
NODE_ACTIONS = tuple(key for key, kind in STEP_KINDS.items() if kind.on_node)


MAX_POINTS = 1_000_000


class _ExpectationBase(Strict):
    name: str | None = None
    points: float | None = Field(None, ge=0, le=MAX_POINTS, description="What this expectation is worth in a gradebook (`labctl grade`); none: it is not graded with points.")

    @model_validator(mode="after")
    def _one_kind(self) -> "_ExpectationBase":
        given = [k for k in EXPECTATIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"an expectation needs exactly one of: {', '.join(EXPECTATIONS)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in EXPECTATIONS if getattr(self, k) is not None)


Expectation = create_model("Expectation", __base__=_ExpectationBase, __module__=__name__,
                           **{key: (Optional[kind.model], None) for key, kind in EXPECTATION_KINDS.items()})

EXPECTATIONS = tuple(EXPECTATION_KINDS)


class Scenario(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    guide: str | None = Field(None, description="What to look for and why (Markdown).")
    params: dict[str, Any] = Field(default_factory=dict, description="Defaults for {{ name }} in the steps; -p overrides.")
    matrix: dict[str, list[Any]] = Field(default_factory=dict, description="One run per combination of these values.")
    steps: list[Step] = Field(min_length=1)
    expect: list[Expectation] = Field(default_factory=list)


def scenario_json_schema() -> dict:
    schema = Scenario.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "labctl scenario file"
    return schema
