"""JSON Schemas of lab and scenario files, for editors (yaml-language-server and friends).

Both come from the models the loader validates with. Two things a file may hold
that the models never see, because the loader renders Jinja2 before validating:
an expression where a value goes (``port: "{{ port }}"``), and the number it renders
to written as a string (``port: "5000"``, which the models take as 5000). The
published schema accepts both wherever a number, a flag, a pattern or a fixed
choice is expected, so an editor does not flag a file the loader takes.
"""

from __future__ import annotations

import copy
from typing import Any

KINDS = ("lab", "scenario")
# A string holding a Jinja2 expression or statement: its value is known only after rendering.
JINJA = r"\{\{.*\}\}|\{%.*%\}"
NUMERIC = r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$"
INTEGER = r"^\s*[-+]?\d+\s*$"
BOOLEAN = r"^(true|false|True|False|0|1)$"
# What stays on the outside of a widened value, so editors still show it on hover.
_ANNOTATIONS = ("title", "description", "default", "examples")


def schema(kind: str = "lab") -> dict:
    """The published JSON Schema (draft 2020-12) of ``lab`` or ``scenario`` files."""
    if kind == "lab":
        from ..model import lab_json_schema

        base = lab_json_schema()
    elif kind == "scenario":
        from ..scenario import scenario_json_schema

        base = scenario_json_schema()
        base.setdefault("$id", "https://labctl.invalid/schema/scenario-v1.json")
    else:
        from ..errors import UserError

        raise UserError(f"no schema for '{kind}'", hint=f"one of: {', '.join(KINDS)}")
    return _templatable(base)


def _templatable(schema: dict) -> dict:
    result = copy.deepcopy(schema)
    for definition in (result.get("$defs") or {}).values():
        _widen_in(definition)
    _widen_in(result)
    return result


def _widen_in(node: Any) -> None:
    """Widen every scalar value schema below ``node`` in place."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            if _is_scalar(item):
                node[i] = _widened(item)
            else:
                _widen_in(item)
        return
    if not isinstance(node, dict):
        return
    for key, value in list(node.items()):
        if key in ("$defs", "enum", "const", "default", "examples", "required"):
            continue
        if key in ("properties", "patternProperties"):
            for name, sub in value.items():
                if _is_scalar(sub):
                    value[name] = _widened(sub)
                else:
                    _widen_in(sub)
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            if _is_scalar(value):
                node[key] = _widened(value)
            else:
                _widen_in(value)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            _widen_in(value)


def _types(schema: dict) -> set[str]:
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if kind else set()


def _is_scalar(schema: Any) -> bool:
    """A schema a rendered string could stand for: a number, a flag, a pattern or fixed choices."""
    if not isinstance(schema, dict) or "$ref" in schema or "properties" in schema:
        return False
    types = _types(schema)
    if types & {"object", "array"}:
        return False
    return bool(types & {"integer", "number", "boolean"}) or any(k in schema for k in ("pattern", "enum", "const"))


def _widened(schema: dict) -> dict:
    inner = {k: v for k, v in schema.items() if k not in _ANNOTATIONS}
    types = _types(schema)
    alternatives = [inner, {"type": "string", "pattern": JINJA}]
    if "integer" in types:
        alternatives.append({"type": "string", "pattern": INTEGER})
    elif "number" in types:
        alternatives.append({"type": "string", "pattern": NUMERIC})
    if "boolean" in types:
        alternatives.append({"type": "string", "pattern": BOOLEAN})
    outer = {k: schema[k] for k in _ANNOTATIONS if k in schema}
    return {**outer, "anyOf": alternatives}
