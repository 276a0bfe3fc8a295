"""The HTML report: one self-contained file (inline CSS and SVG, no script, nothing
fetched: a Content-Security-Policy of default-src 'none' makes sure), readable
offline and printable."""

from __future__ import annotations

from importlib import resources

import jinja2
from markupsafe import Markup

from . import ladder
from .markdown import FOLD_TABLE
from .model import REPORT_SCHEMA_VERSION, Comparison, Report, band_text, format_duration, format_ms, generator, params_text
from .term import when

ALERT = {"retransmissions", "duplicates", "out_of_window", "resets", "dropped", "failed"}


def _environment() -> jinja2.Environment:
    # Lenient about missing keys: a run directory from an older labctl, or cut short, still renders.
    env = jinja2.Environment(loader=jinja2.PackageLoader("labctl.report", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.globals.update(ms=format_ms, generator=generator(), schema_version=REPORT_SCHEMA_VERSION)
    return env


def _css() -> Markup:
    return Markup(resources.files("labctl.report").joinpath("templates/style.css").read_text())


def _tag_class(mark: str) -> str:
    for prefix, name in (("dropped", "dropped"), ("RST", "rst"), ("retransmission", "retransmission"), ("duplicate of", "duplicate"),
                         ("out of window", "oow")):
        if mark.startswith(prefix):
            return name
    return ""


def render(report: Report, *, fold: bool = True) -> str:
    budget = ladder.FOLD_BUDGET if fold else None
    shown = ladder.items(report, budget)
    drawn = {item.ref.id for item in shown if item.kind == "segment"}
    folded = sum(item.folded.get("items", 0) for item in shown if item.kind == "fold")
    rows = report.segments
    if fold and len(rows) > FOLD_TABLE:
        rows = [s for s in rows if s.interesting or s.id in drawn][:FOLD_TABLE]
    timeline = report.timeline
    if fold and len(timeline) > FOLD_TABLE:
        keep = {s.id for s in rows}
        timeline = [e for e in timeline if e.kind != "segment" or e.ref in keep][:FOLD_TABLE]

    def evidence_href(e) -> str | None:
        if e.kind == "segment" and e.ref:
            return f"#seg-{e.ref}" if e.ref in drawn else f"#row-{e.ref}"
        return f"#{e.ref}" if e.ref else None

    def evidence_label(e) -> str:
        if e.kind == "segment" and e.ref:
            return f"#{e.ref[1:]}"
        if e.kind == "step" and e.ref:
            return f"step {e.ref[4:]}"
        return f"socket {e.ref}" if e.kind == "states" else str(e.ref)

    return _environment().get_template("report.html.j2").render(
        r=report, duration_text=format_duration(report.duration), css=_css(), ladder_svg=Markup(ladder.svg(report, budget)), bands_svg=Markup(ladder.bands_svg(report)),
        held=sum(v.passed for v in report.verdicts), started=when(report.run.get("started")), folded=folded,
        segment_rows=rows, timeline_rows=timeline, evidence_href=evidence_href, evidence_label=evidence_label,
        band_text=lambda b: band_text(b, report), tag_class=_tag_class, alert_keys=ALERT, prefix="")


def render_compare(comparison: Comparison) -> str:
    return _environment().get_template("compare.html.j2").render(
        c=comparison, css=_css(), params_a=params_text(comparison.a), params_b=params_text(comparison.b), ladder_a=Markup(ladder.svg(comparison.a, prefix="a-")),
        ladder_b=Markup(ladder.svg(comparison.b, prefix="b-")), marks={"equal": "", "replace": "≠", "delete": "−", "insert": "+"},
        verdict_word=lambda v: "-" if v is None else ("✔ pass" if v else "✘ FAIL"),
        verdict_class=lambda v: "" if v is None else ("ok" if v else "bad"))
