"""The terminal report: rich tables and a compact text ladder."""

from __future__ import annotations

import io
from datetime import datetime, timezone

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from . import ladder
from .model import Comparison, Report, band_text, format_ms, params_text

STYLES = {"plain": "", "bold": "bold", "muted": "dim", "state": "bold cyan", "call": "italic blue", "rule": "yellow",
          "retransmission": "bold dark_orange", "rst": "bold red", "dropped": "bold red", "duplicate": "bold magenta",
          "oow": "bold magenta"}


def _console(color: bool, width: int | None) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color, color_system="standard" if color else None,
                      width=width or 120, highlight=False, emoji=False, soft_wrap=False)
    return console, buffer


def render(report: Report, *, color: bool = False, width: int | None = None, fold: bool = True) -> str:
    console, buffer = _console(color, width)
    for part in parts(report, fold=fold, width=console.width):
        if isinstance(part, Text) and part.no_wrap:
            console.print(part, no_wrap=True, overflow="ellipsis", crop=True)
        else:
            console.print(part)
    return buffer.getvalue()


def when(t: float | None) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "?"


def verdict_word(outcome: str | bool) -> str:
    if isinstance(outcome, bool):
        outcome = "pass" if outcome else "fail"
    return {"pass": "[green]ok[/green]", "fail": "[bold red]FAIL[/bold red]", "undecided": "[bold yellow]undecided[/bold yellow]"}[outcome]


HEADLINE_STYLE = {"pass": "bold green", "fail": "bold red", "undecided": "bold yellow"}


def parts(report: Report, fold: bool = True, width: int = 120) -> list:
    run = report.run
    style = HEADLINE_STYLE[report.outcome]
    status = f"[{style}]{report.headline}[/{style}]"
    head = Text.from_markup(f"[bold]{escape(report.title)}[/bold]  {status}  ({escape(str(run.get('status')))}, "
                            f"{sum(v.passed for v in report.verdicts)}/{len(report.verdicts)} expectations held)\n"
                            f"{escape(str(report.run_dir))}  started {when(run.get('started'))}")
    if run.get("description"):
        head.append("\n" + str(run["description"]), style="italic")
    out: list = [Panel(head, expand=False)]
    s = report.summary
    out.append(Text.from_markup(
        f"{s['segments']} segments ({s['capture_records']} capture records at {len(report.captures)} captures), "
        f"{s['connections']} connection(s); retransmissions {_n(s['retransmissions'], 'dark_orange')}, "
        f"resets {_n(s['resets'], 'red')}, dropped {_n(s['dropped'], 'red')}, duplicates {_n(s['duplicates'], 'magenta')}, "
        f"duplicate ACKs {s['duplicate_acks']}, out of window {_n(s['out_of_window'], 'magenta')}, rule actions {s['rule_actions']}"))
    out.append(verdict_table(report))
    out.append(Text("Ladder (time downward; #n is the segment number)", style="bold"))
    out.append(ladder_text(report, fold, width))
    out.append(socket_table(report))
    if report.rules:
        rules = Table(title="Rule actions", title_justify="left")
        for column in ("t (ms)", "node", "rule", "action", "packet", "segment"):
            rules.add_column(column)
        for r in report.rules:
            rules.add_row(format_ms(r.t), r.node, escape(r.rule), r.action, escape(str(r.packet)), f"#{r.segment[1:]}" if r.segment else "-")
        out.append(rules)
    if report.notes:
        out.append(Text("\n".join(f"note: {n}" for n in report.notes), style="dim"))
    return out


def _n(value: int, color: str) -> str:
    return f"[bold {color}]{value}[/bold {color}]" if value else "0"


def evidence_text(report: Report, evidence) -> str:
    refs = []
    for e in evidence[:6]:
        if e.kind == "segment" and e.ref:
            refs.append(f"#{e.ref[1:]}")
        elif e.ref:
            refs.append(e.ref)
        else:
            refs.append(e.text[:40])
    more = f" +{len(evidence) - 6}" if len(evidence) > 6 else ""
    return ", ".join(refs) + more


def verdict_table(report: Report) -> Table:
    table = Table(title="Expectations", title_justify="left", show_lines=False)
    table.add_column("")
    table.add_column("expectation", ratio=3)
    table.add_column("observed", ratio=3)
    table.add_column("evidence", ratio=1)
    for v in report.verdicts:
        observed = v.observed + (f"\nwhy undecided: {v.reason}" if v.undecided and v.reason and v.reason not in v.observed else "")
        table.add_row(verdict_word(v.outcome), escape((f"{v.name}: " if v.name else "") + v.description), escape(observed),
                      escape(evidence_text(report, v.evidence)))
    if not report.verdicts:
        table.add_row("", "[dim]the scenario has no expectations[/dim]", "", "")
    return table


def ladder_text(report: Report, fold: bool = True, width: int = 120) -> Text:
    lanes = max(len(report.lanes), 2)
    # Fit the lanes to the terminal: time column, the first lane's notes, the arrows, the last lane's notes.
    gap = max(24, min(46, (width - 10 - 26 - 28) // (lanes - 1)))
    text = Text()
    for i, spans in enumerate(ladder.text_lines(report, 120 if fold else None, gap)):
        if i:
            text.append("\n")
        for chunk, style in spans:
            text.append(chunk, style=STYLES.get(style, ""))
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def socket_table(report: Report) -> Table:
    table = Table(title="TCP states per socket", title_justify="left")
    table.add_column("socket")
    table.add_column("states, each with how long it was held")
    for k in report.sockets:
        states = Text()
        for i, band in enumerate(k.bands):
            if i:
                states.append(" > ", style="dim")
            states.append(band.state, style="bold cyan" if band.state != "TIME_WAIT" else "bold dark_orange")
            duration = band_text(band, report)
            if band.state != "CLOSED" or band.end is not None:
                states.append(f" {duration}", style="dim")
        table.add_row(f"{k.id} {k.node} {k.local} > {k.remote}", states)
    return table


def render_compare(comparison: Comparison, *, color: bool = False, width: int | None = None) -> str:
    console, buffer = _console(color, width or 160)
    a, b = comparison.a, comparison.b
    head = Text.from_markup(f"[bold]A[/bold] {escape(a.title)} ({'passed' if a.passed else a.headline})  {escape(str(a.run_dir))}"
                            f"  params: {escape(params_text(a))}\n"
                            f"[bold]B[/bold] {escape(b.title)} ({'passed' if b.passed else b.headline})  {escape(str(b.run_dir))}"
                            f"  params: {escape(params_text(b))}\n"
                            f"{comparison.differences} difference(s), highlighted")
    console.print(Panel(head, title="compare", expand=False))
    summary = Table(title="Counts", title_justify="left")
    for column in ("", "A", "B"):
        summary.add_column(column)
    for name, x, y in comparison.summary:
        style = "bold yellow" if x != y else ""
        summary.add_row(name.replace("_", " "), str(x), str(y), style=style)
    console.print(summary)
    verdicts = Table(title="Expectations", title_justify="left")
    for column in ("expectation", "A", "B"):
        verdicts.add_column(column)
    for description, x, y in comparison.verdicts:
        verdicts.add_row(escape(description), _pass(x), _pass(y), style="bold yellow" if x != y else "")
    console.print(verdicts)
    states = Table(title="States per socket", title_justify="left")
    for column in ("socket", "A", "B"):
        states.add_column(column)
    for name, x, y in comparison.states:
        states.add_row(escape(name), escape(x), escape(y), style="bold yellow" if x != y else "")
    console.print(states)
    flow = Table(title="What happened, side by side (differences highlighted)", title_justify="left")
    flow.add_column("")
    flow.add_column("A", ratio=1)
    flow.add_column("B", ratio=1)
    marks = {"equal": "", "replace": "≠", "delete": "−", "insert": "+"}
    for tag, x, y in comparison.flow:
        style = "" if tag == "equal" else "bold yellow"
        flow.add_row(marks[tag], escape(x or ""), escape(y or ""), style=style)
    console.print(flow)
    return buffer.getvalue()


def _pass(value: bool | None) -> str:
    return "-" if value is None else ("ok" if value else "FAIL")
