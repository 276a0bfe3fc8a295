"""The sweep's chart: pass rate, and the chosen metric with its spread over repetitions, against
the first swept parameter; one line per value of the others (matplotlib, SVG and PNG).

Drawn on a bare ``matplotlib.figure.Figure`` (no pyplot, no global backend): savefig
picks the SVG or Agg canvas from the file name, so it works headless and in a notebook.
SVG text stays text (``svg.fonttype: none``) so the axis names can be read and searched,
and the file has no date in it, so the same runs draw the same bytes.
"""

from __future__ import annotations

from pathlib import Path

from .summary import PointRow, Summary

MARKERS = "os^Dvx*P"


def _series(summary: Summary) -> list[tuple[str, list[PointRow]]]:
    """The points grouped into lines: one per combination of every swept axis but the first."""
    rest = summary.axes[1:]
    lines: dict[tuple, list[PointRow]] = {}
    for point in summary.points:
        lines.setdefault(tuple(point.point[a.name] for a in rest), []).append(point)
    named = []
    for key, rows in lines.items():
        label = ", ".join(f"{a.name}={v}" for a, v in zip(rest, key)) or "all runs"
        named.append((label, rows))
    return named


def draw(summary: Summary, svg: Path, png: Path | None = None) -> None:
    import matplotlib
    from matplotlib.figure import Figure

    x_axis = summary.axes[0] if summary.axes else None
    numbers = x_axis.numbers if x_axis else None
    positions = {v: (numbers[i] if numbers else float(i)) for i, v in enumerate(x_axis.values)} if x_axis else {}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "labctl", "font.size": 9}):
        figure = Figure(figsize=(7.5, 6.5), layout="constrained")
        rate_ax, metric_ax = figure.subplots(2, 1, sharex=True)
        series = _series(summary)
        spread_n = max((p.finished for p in summary.points), default=0)
        for k, (label, rows) in enumerate(series):
            xs = [positions[p.point[x_axis.name]] if x_axis else 0.0 for p in rows]
            # Lines side by side a little, so bars of equal x do not hide each other.
            offset = 0.0
            if len(series) > 1 and len(xs) > 1:
                width = (max(xs) - min(xs)) / max(len(xs) - 1, 1)
                offset = (k - (len(series) - 1) / 2) * width * 0.04
            marker = MARKERS[k % len(MARKERS)]
            rated = [(x, p.pass_rate * 100) for x, p in zip(xs, rows) if p.pass_rate is not None]
            if rated:
                rate_ax.plot([x + offset for x, _ in rated], [y for _, y in rated], marker=marker, label=label)
            measured = [(x, p.spread) for x, p in zip(xs, rows) if p.spread.n]
            if measured:
                mx = [x + offset for x, _ in measured]
                medians = [s.median for _, s in measured]
                below = [s.median - s.low for _, s in measured]
                above = [s.high - s.median for _, s in measured]
                line = metric_ax.errorbar(mx, medians, yerr=[below, above], marker=marker, capsize=3, label=label)
                quartile_low = [s.median - s.q1 for _, s in measured]
                quartile_high = [s.q3 - s.median for _, s in measured]
                metric_ax.errorbar(mx, medians, yerr=[quartile_low, quartile_high], fmt="none", elinewidth=4, alpha=0.35,
                                   color=line.lines[0].get_color())
        rate_ax.set_ylabel("pass rate (%)")
        rate_ax.set_ylim(-5, 105)
        rate_ax.grid(True, alpha=0.3)
        metric_ax.set_ylabel(summary.metric.label)
        metric_ax.grid(True, alpha=0.3)
        metric_ax.set_xlabel(x_axis.title if x_axis else "all runs (nothing swept)")
        if x_axis and numbers and len(numbers) <= 12:
            metric_ax.set_xticks(list(numbers), list(x_axis.values))
        if x_axis and not numbers:
            metric_ax.set_xticks([positions[v] for v in x_axis.values], list(x_axis.values))
        elif not x_axis:
            metric_ax.set_xticks([0.0], ["all runs"])
        if len(series) > 1:
            rate_ax.legend(title=", ".join(a.name for a in summary.axes[1:]), fontsize=8)
        spec = summary.sweep.get("spec") or {}
        rate_ax.set_title(f"{Path(str(spec.get('lab', ''))).name} / {spec.get('scenario')}: "
                          f"{summary.counts['finished']} runs, up to {spread_n} per point")
        metric_ax.set_title(f"{summary.metric.title}: median, IQR (thick) and min..max (thin) over repetitions", fontsize=8)
        if not any(p.spread.n for p in summary.points):
            metric_ax.text(0.5, 0.5, f"no run had a value for {summary.metric.name}", transform=metric_ax.transAxes,
                           ha="center", va="center")
        svg.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(svg, format="svg", metadata={"Date": None})
        if png is not None:
            figure.savefig(png, format="png", dpi=120, metadata={"Software": None})
