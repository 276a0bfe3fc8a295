"""The JSON report, for graders: a stable, versioned schema (report.schema.json, shipped
in the package; `labctl report --schema` prints it).

Times: ``t0`` is the run's first event (seconds since the epoch, host clock); every
other time is seconds since ``t0``. Ids (``s5``, ``k2``, ``step3``) are what
evidence refers to. A change that is not purely additive bumps ``schema_version``.
"""

from __future__ import annotations

import json
from importlib import resources

from .model import REPORT_SCHEMA_VERSION, Comparison, Report, generator

SCHEMA_NAME = "labctl-report"


def schema() -> dict:
    return json.loads(resources.files("labctl.report").joinpath("report.schema.json").read_text())


def _t(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def report_json(report: Report) -> dict:
    run = report.run
    return {
        "schema": SCHEMA_NAME,
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "run",
        "generator": generator(),
        "run": {
            "dir": str(report.run_dir), "lab": run.get("lab"), "instance": run.get("instance") or "default",
            "remap": {str(k): str(v) for k, v in (run.get("remap") or {}).items()}, "scenario": run.get("scenario"), "label": run.get("label"),
            "description": run.get("description") or "", "status": run.get("status"), "reason": run.get("reason"),
            "params": run.get("params") or {}, "started": run.get("started"), "ended": run.get("ended"),
            "run_schema_version": run.get("schema_version"), "labctl_version": run.get("labctl_version"),
            "kernel": (run.get("host") or {}).get("kernel"),
        },
        "passed": report.passed,
        "outcome": report.outcome,
        "t0": report.t0,
        "duration": _t(report.duration),
        "summary": report.summary,
        "lanes": [{"name": l.name, "role": l.role, "addresses": l.addresses, "acted": l.acted} for l in report.lanes],
        "captures": report.captures,
        "connections": [{"id": c.id, "client": c.client, "server": c.server, "incarnation": c.incarnation, "isn": c.isn,
                         "first": _t(c.first), "last": _t(c.last), "segments": c.segments} for c in report.connections],
        "segments": [{
            "id": s.id, "number": s.number, "t": _t(s.t), "connection": s.connection, "incarnation": s.incarnation,
            "from": s.sender, "to": s.receiver, "origin": s.origin, "src": s.src, "dst": s.dst, "flags": s.flags, "seq": s.seq, "ack": s.ack,
            "rel_seq": s.rel_seq, "rel_ack": s.rel_ack, "len": s.length, "window": s.window, "ip_id": s.ip_id,
            "seen": [{"at": x.at, "t": _t(x.t)} for x in s.seen], "fate": s.fate, "dropped_after": s.dropped_after,
            "retransmission": s.retransmission, "duplicate_of": s.duplicate_of, "dup_ack": s.dup_ack, "keepalive": s.keepalive,
            "out_of_window": s.out_of_window, "rst": s.rst, "rules": s.rules, "payload": s.payload,
        } for s in report.segments],
        "sockets": [{"id": k.id, "node": k.node, "local": k.local, "remote": k.remote, "connection": k.connection,
                     "observed_by": list(k.observed_by),
                     "bands": [{"state": b.state, "start": _t(b.start), "end": _t(b.end), "duration": _t(b.duration),
                                "source": b.source, "sources": list(b.sources), "why": b.why, "before": b.before,
                                "timer_ms": b.timer_ms} for b in k.bands],
                     "disagreements": k.disagreement_data} for k in report.sockets],
        "steps": [{"id": s.id, "index": s.index, "t": _t(s.t), "t_end": _t(s.t_end), "node": s.node, "kind": s.kind, "call": s.call,
                   "outcome": s.outcome, "ok": s.ok, "errno": s.errno, "note": s.note} for s in report.steps],
        "rules": [{"id": r.id, "t": _t(r.t), "node": r.node, "rule": r.rule, "action": r.action, "packet": r.packet,
                   "segment": r.segment} for r in report.rules],
        "verdicts": [{"index": v.index, "kind": v.kind, "name": v.name, "description": v.description, "passed": v.passed,
                      "outcome": v.outcome, "reason": v.reason, "expected": v.expected, "observed": v.observed, "details": v.details,
                      "evidence": [{"kind": e.kind, "ref": e.ref, "text": e.text, "data": e.data} for e in v.evidence]} for v in report.verdicts],
        "timeline": [{"t": _t(e.t), "kind": e.kind, "node": e.node, "text": e.text, "ref": e.ref} for e in report.timeline],
        "kernel_events": [{"t": _t(e["t"] - report.t0), "event": str(e.get("event")), "node": e.get("node"), "local": e.get("local"),
                           "remote": e.get("remote"), "state": e.get("state")} for e in report.kernel if e.get("t") is not None],
        "notes": report.notes,
        "damage": [{"file": d.file, "problem": d.problem} for d in report.damage],
    }


def comparison_json(comparison: Comparison) -> dict:
    return {
        "schema": SCHEMA_NAME,
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "comparison",
        "generator": generator(),
        "a": report_json(comparison.a),
        "b": report_json(comparison.b),
        "differences": {
            "count": comparison.differences,
            "summary": [{"name": n, "a": x, "b": y} for n, x, y in comparison.summary if x != y],
            "verdicts": [{"description": d, "a": x, "b": y} for d, x, y in comparison.verdicts if x != y],
            "states": [{"socket": n, "a": x, "b": y} for n, x, y in comparison.states if x != y],
            "flow": [{"tag": tag, "a": x, "b": y} for tag, x, y in comparison.flow],
        },
    }


def render(report: Report) -> str:
    return json.dumps(report_json(report), indent=2, ensure_ascii=False) + "\n"


def render_compare(comparison: Comparison) -> str:
    return json.dumps(comparison_json(comparison), indent=2, ensure_ascii=False) + "\n"
