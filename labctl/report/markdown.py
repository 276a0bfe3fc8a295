"""The Markdown report: tables, a text ladder in a code block, anchors for evidence links.

Renders on GitHub and GitLab, and in any Markdown viewer: segment rows carry an
``<a id="s5">`` anchor so a verdict's evidence links to the segment itself.
"""

from __future__ import annotations

from . import ladder
from .model import Comparison, Report, band_text, format_ms, params_text
from .term import when

FOLD_TABLE = 400


def cell(text: object) -> str:
    """Text safe inside a table cell: no pipes, no HTML, no line breaks."""
    value = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return value.replace("\r", " ").replace("\n", " ").replace("`", "\\`").replace("*", "\\*").replace("_", "\\_")


def code(text: str) -> str:
    """Inline code; a cell's pipes still need escaping (GFM splits cells before it sees code spans)."""
    value = str(text).replace("`", "'").replace("|", "\\|")
    return f"`{value}`"


def evidence_links(report: Report, evidence) -> str:
    links = []
    for e in evidence[:8]:
        if e.kind == "segment" and e.ref:
            links.append(f"[#{e.ref[1:]}](#{e.ref})")
        elif e.ref:
            links.append(f"[{e.ref}](#{e.ref})")
        elif e.text:
            links.append(cell(e.text[:60]))
    if len(evidence) > 8:
        links.append(f"+{len(evidence) - 8} more")
    return ", ".join(links) or "-"


MARKS = {"pass": "✅ pass", "fail": "❌ **FAIL**", "undecided": "❔ undecided"}


def render(report: Report, *, fold: bool = True, heading: int = 1) -> str:
    h = "#" * heading
    run = report.run
    out = [f"{h} labctl report: {cell(report.title)}", ""]
    verdict = f"**{report.headline}**"
    held = sum(v.passed for v in report.verdicts)
    out.append(f"{verdict}: {held} of {len(report.verdicts)} expectations held. Run {code(str(report.run_dir))}, "
               f"{cell(run.get('status'))}, started {when(run.get('started'))}.")
    if run.get("description"):
        out += ["", f"> {cell(run['description'])}"]
    if run.get("params"):
        out += ["", "Parameters: " + ", ".join(f"{code(f'{k}={v}')}" for k, v in run["params"].items())]
    out += ["", f"{h}# Expectations", "", "| | expectation | observed | evidence |", "|---|---|---|---|"]
    for v in report.verdicts:
        mark = MARKS[v.outcome]
        name = f"**{cell(v.name)}**: " if v.name else ""
        observed = v.observed + (f" (why undecided: {v.reason})" if v.undecided and v.reason and v.reason not in v.observed else "")
        out.append(f"| {mark} | {name}{cell(v.description)} | {cell(observed)} | {evidence_links(report, v.evidence)} |")
    if not report.verdicts:
        out.append("| | the scenario has no expectations | | |")
    s = report.summary
    out += ["", f"{h}# Summary", "", "| " + " | ".join(k.replace("_", " ") for k in s) + " |",
            "|" + "---|" * len(s), "| " + " | ".join(str(v) for v in s.values()) + " |"]
    out += ["", f"{h}# Ladder", "",
            "Time runs downward (ms since the first event); `#n` numbers segments; "
            "state changes and socket calls are written beside their node's line.", "", "```text",
            ladder.plain(ladder.text_lines(report, 160 if fold else None)), "```"]
    out += ["", f"{h}# TCP states per socket", "", "| socket | node | local > remote | states (held for) |", "|---|---|---|---|"]
    for k in report.sockets:
        states = " → ".join(f"{b.state}" + (f" ({band_text(b, report)})" if b.state != "CLOSED" or b.end is not None else "")
                            for b in k.bands)
        out.append(f'| <a id="{k.id}"></a>{k.id} | {cell(k.node)} | {code(k.local + " > " + k.remote)} | {cell(states)} |')
    out += ["", f"{h}# Segments", "",
            "One row per segment (a packet's journey); *seen at* lists the captures that saw it, "
            "so a segment that left and never arrived shows where it was lost.", "",
            "| # | t (ms) | from → to | flags | seq | ack | len | seen at | notes |", "|---|---|---|---|---|---|---|---|---|"]
    rows = report.segments
    shown = rows if not fold or len(rows) <= FOLD_TABLE else [r for r in rows if r.interesting][:FOLD_TABLE]
    for r in shown:
        seen = ", ".join(x.at for x in r.seen)
        notes = "; ".join(r.marks)
        if r.payload:
            notes = (notes + "; " if notes else "") + f"data {r.payload[:24]!r}"
        out.append(f'| <a id="{r.id}"></a>{r.number} | {format_ms(r.t)} | {cell(r.sender)} → {cell(r.receiver)} | {code(r.flags or ".")} | '
                   f"{r.rel_seq} | {r.rel_ack} | {r.length} | {cell(seen)} | {cell(notes)} |")
    if len(shown) < len(rows):
        out += ["", f"{len(rows) - len(shown):,} ordinary segments are not listed (the JSON report has every one)."]
    if report.connections:
        out += ["", f"{h}# Connections", "", "| id | client | server | incarnation | ISNs | segments |", "|---|---|---|---|---|---|"]
        for c in report.connections:
            isn = ", ".join(f"{k} {v}" for k, v in c.isn.items())
            out.append(f"| {c.id} | {code(c.client)} | {code(c.server)} | {c.incarnation} | {cell(isn)} | {c.segments} |")
    if report.rules:
        out += ["", f"{h}# Rule actions", "", "| t (ms) | node | rule | action | segment |", "|---|---|---|---|---|"]
        for rule in report.rules:
            link = f"[#{rule.segment[1:]}](#{rule.segment})" if rule.segment else "-"
            out.append(f"| {format_ms(rule.t)} | {cell(rule.node)} | {cell(rule.rule)} | {cell(rule.action)} | {link} |")
    out += ["", f"{h}# Timeline", "", "Segments, state changes, steps, rule actions, impairments and kernel events, merged.", "",
            "| t (ms) | kind | node | what |", "|---|---|---|---|"]
    timeline = report.timeline
    if fold and len(timeline) > FOLD_TABLE:
        keep = {r.id for r in report.segments if r.interesting}
        timeline = [e for e in timeline if e.kind != "segment" or e.ref in keep][:FOLD_TABLE]
    for e in timeline:
        what = cell(e.text)
        if e.ref and e.kind == "segment":
            what = f"[#{e.ref[1:]}](#{e.ref}) " + what
        out.append(f"| {format_ms(e.t)} | {e.kind} | {cell(e.node or '')} | {what} |")
    if len(timeline) < len(report.timeline):
        out += ["", f"{len(report.timeline) - len(timeline):,} ordinary entries are not listed (the JSON report has every one)."]
    if report.notes:
        out += ["", f"{h}# Notes", ""] + [f"- {cell(n)}" for n in report.notes]
    out += ["", f"<sub>{cell(report.run.get('labctl_version') and 'run by labctl ' + str(report.run['labctl_version']) or '')}</sub>", ""]
    return "\n".join(out)


def render_compare(comparison: Comparison) -> str:
    a, b = comparison.a, comparison.b
    out = ["# labctl comparison", "",
           f"- **A**: {cell(a.title)}, {'passed' if a.passed else f'**{a.headline}**'}, {code(str(a.run_dir))}, parameters {code(params_text(a))}",
           f"- **B**: {cell(b.title)}, {'passed' if b.passed else f'**{b.headline}**'}, {code(str(b.run_dir))}, parameters {code(params_text(b))}", "",
           f"{comparison.differences} difference(s); rows that differ are marked **≠** and in bold.", "",
           "## Counts", "", "| | A | B | |", "|---|---|---|---|"]
    for name, x, y in comparison.summary:
        differ = x != y
        out.append(f"| {name.replace('_', ' ')} | {_b(x, differ)} | {_b(y, differ)} | {'**≠**' if differ else ''} |")
    out += ["", "## Expectations", "", "| expectation | A | B | |", "|---|---|---|---|"]
    for description, x, y in comparison.verdicts:
        differ = x != y
        out.append(f"| {cell(description)} | {_b(_pass(x), differ)} | {_b(_pass(y), differ)} | {'**≠**' if differ else ''} |")
    out += ["", "## States per socket", "", "| socket | A | B | |", "|---|---|---|---|"]
    for name, x, y in comparison.states:
        differ = x != y
        out.append(f"| {cell(name)} | {_b(cell(x), differ)} | {_b(cell(y), differ)} | {'**≠**' if differ else ''} |")
    out += ["", "## What happened, side by side", "", "| | A | B |", "|---|---|---|"]
    marks = {"equal": "", "replace": "**≠**", "delete": "**−**", "insert": "**+**"}
    for tag, x, y in comparison.flow:
        differ = tag != "equal"
        out.append(f"| {marks[tag]} | {_b(cell(x or ''), differ and bool(x))} | {_b(cell(y or ''), differ and bool(y))} |")
    for name, report in (("A", a), ("B", b)):
        out += ["", f"## Ladder {name}: {cell(report.title)}", "", "```text", ladder.plain(ladder.text_lines(report)), "```"]
    out.append("")
    return "\n".join(out)


def _b(text: object, bold: bool) -> str:
    return f"**{text}**" if bold and str(text) else str(text)


def _pass(value: bool | None) -> str:
    return "-" if value is None else ("pass" if value else "FAIL")
