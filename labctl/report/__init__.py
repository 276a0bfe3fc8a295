"""Reports of a run: terminal, Markdown, single-file HTML with an SVG ladder, and JSON.

Every format is drawn from one ``model.Report``, built from the run directory
alone (no engine), so a report can be rebuilt years later on any machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import UserError

FORMATS = ("term", "md", "html", "json")
SUFFIXES = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html", ".json": "json", ".txt": "term"}


def format_for(path: Path | None) -> str:
    """The format a file name asks for (report.html -> html); term otherwise."""
    return SUFFIXES.get(path.suffix.lower(), "term") if path else "term"


def render(refs: Sequence[str | Path] = (), fmt: str = "term", *, root: Path | None = None, color: bool = False,
           width: int | None = None, fold: bool = True) -> str:
    from . import html, jsonreport, markdown, term
    from .model import build, compare, resolve_run

    if fmt not in FORMATS:
        raise UserError(f"unknown report format '{fmt}'", hint=f"use one of: {', '.join(FORMATS)}")
    if len(refs) == 1 and (Path(refs[0]) / "sweep.json").is_file():
        # A sweep directory: its summary, redrawn from its run directories (labctl.sweep).
        from ..sweep.summary import render as render_sweep

        return render_sweep(refs[0], fmt, color=color, width=width)
    if len(refs) > 2:
        raise UserError("give one run (or lab) to report on, or two to compare")
    runs = [resolve_run(ref, root) for ref in refs] or [resolve_run(None, root)]
    reports = [build(path) for path in runs]
    if len(reports) == 2:
        comparison = compare(*reports)
        return {"term": lambda: term.render_compare(comparison, color=color, width=width),
                "md": lambda: markdown.render_compare(comparison),
                "html": lambda: html.render_compare(comparison),
                "json": lambda: jsonreport.render_compare(comparison)}[fmt]()
    report = reports[0]
    return {"term": lambda: term.render(report, color=color, width=width, fold=fold),
            "md": lambda: markdown.render(report, fold=fold),
            "html": lambda: html.render(report, fold=fold),
            "json": lambda: jsonreport.render(report)}[fmt]()
