"""Ladder (sequence) diagrams and state bands, as SVG and as text.

One vertical line per lane (endpoint, or router that acted), time downward,
an arrow per segment from where it left to where it arrived; a segment
dropped on the way ends with a cross after the last node that saw it. State
changes and socket calls are written beside their node's line when they
happened.

Vertical placement keeps time order exactly but not time scale: each event
gets a row, longer pauses get a little more room and a marked break, so a
60 s TIME_WAIT and a 50 µs round trip both stay readable. Arrivals are
placed by interpolating between rows, so crossing segments still cross.

A large run is folded: every remarkable item (handshake, teardown,
retransmissions, drops, resets, state changes, calls) is kept with a little
context, and each run of ordinary data and ACK segments becomes one fold
line that says how many were folded.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

from ..analyze.timeline import HELD, signed
from ..analyze.timeline import marks as segment_marks
from ..steps import STEP_KINDS
from .model import Band, Report, SegmentRow, format_duration, format_ms

FOLD_BUDGET = 400  # items drawn before a ladder is folded
CONTEXT = 2  # ordinary items kept on each side of a remarkable one

# Steps drawn on the ladder as calls (each kind says; waits and sleeps are bookkeeping).
CALLS = tuple(key for key, kind in STEP_KINDS.items() if kind.on_ladder)

STATE_COLORS = {
    "LISTEN": "#dadaeb", "SYN_SENT": "#c6dbef", "SYN_RECV": "#c6dbef", "NEW_SYN_RECV": "#c6dbef",
    "ESTABLISHED": "#a1d99b", "FIN_WAIT1": "#fdd0a2", "FIN_WAIT2": "#fdd0a2", "CLOSING": "#fdd0a2",
    "TIME_WAIT": "#fd8d3c", "CLOSE_WAIT": "#fcbba1", "LAST_ACK": "#fcbba1", "CLOSED": "#e0e0e0", "CLOSE": "#e0e0e0",
}
COLORS = {"plain": "#1f2937", "retransmission": "#d97706", "rst": "#dc2626", "dropped": "#dc2626", "duplicate": "#7c3aed",
          "oow": "#be185d", "state": "#0f766e", "call": "#1d4ed8", "rule": "#b45309", "muted": "#6b7280", "fold": "#6b7280"}


@dataclass
class Item:
    t: float
    kind: str  # segment | state | call | rule | fold
    lane: str | None
    text: str
    ref: Any = None
    priority: int = 9  # lower: kept first when folding
    folded: dict = field(default_factory=dict)  # for a fold: what it stands for


def segment_style(segment: SegmentRow) -> str:
    if segment.rst:
        return "rst"
    if segment.fate == "dropped":
        return "dropped"
    if segment.duplicate_of is not None:
        return "duplicate"
    if segment.retransmission:
        return "retransmission"
    if segment.out_of_window:
        return "oow"
    return "plain"


def _priority(segment: SegmentRow) -> int:
    if segment.rst or segment.fate == "dropped":
        return 0
    if segment.retransmission or segment.duplicate_of is not None or segment.out_of_window or segment.rules:
        return 1
    if set(segment.flags) & {"S", "F"}:
        return 2
    if segment.dup_ack or segment.keepalive:
        return 3
    return 9


def items(report: Report, budget: int | None = FOLD_BUDGET) -> list[Item]:
    """Everything the ladder shows, in time order, folded to ``budget`` items (None: never fold)."""
    lanes = {lane.name for lane in report.lanes}
    found: list[Item] = []
    for s in report.segments:
        found.append(Item(s.departure(), "segment", s.origin, s.label, s, _priority(s)))
    for k in report.sockets:
        # A socket with no connection in the captures (and not listening) is kernel noise from
        # before the run, e.g. a lingering socket of an earlier run: the state table lists it.
        if k.node not in lanes or (k.connection is None and "LISTEN" not in k.states):
            continue
        for band in k.bands:
            found.append(Item(band.start, "state", k.node, band.state, (k, band), 2))
    for step in report.steps:
        if step.kind in CALLS and step.node in lanes:
            text = step.call + (f" {step.outcome}" if step.outcome.startswith("=") and step.kind != "listen" else "")
            text += "" if step.ok or step.ok is None else f" -> {step.errno or 'failed'}"
            found.append(Item(step.t, "call", step.node, text, step, 2))
    for rule in report.rules:
        # A rule action on a segment shows on its arrow; one that names no captured segment shows on the lane.
        if rule.node in lanes and rule.segment is None and rule.action not in ("watch", "armed"):
            found.append(Item(rule.t, "rule", rule.node, f"{rule.action} ({rule.rule})", rule, 1))
    order = {"call": 0, "rule": 1, "segment": 2, "state": 3}
    found.sort(key=lambda i: (i.t, order.get(i.kind, 4)))
    if budget is None or len(found) <= budget:
        return found
    return fold(found, budget)


def fold(found: list[Item], budget: int) -> list[Item]:
    remarkable = [i for i, item in enumerate(found) if item.priority < 9]
    context = CONTEXT
    while context and len(remarkable) * (2 * context + 1) > budget:
        context -= 1
    if len(remarkable) > budget - 6:
        # More remarkable items than room: the most important first, then the earliest.
        remarkable = sorted(sorted(remarkable, key=lambda i: (found[i].priority, i))[:max(budget - 6, 1)])
    keep = set(range(3)) | set(range(len(found) - 3, len(found)))
    for i in remarkable:
        keep.update(range(max(0, i - context), min(len(found), i + context + 1)))
    result: list[Item] = []
    run: list[Item] = []

    def close_run() -> None:
        if len(run) <= 2:  # folding one or two items saves nothing
            result.extend(run)
            run.clear()
            return
        segments = [i.ref for i in run if i.kind == "segment"]
        data = sum(s.length > 0 for s in segments)
        result.append(Item(run[0].t, "fold", None, f"{len(run)} items folded", None, 9,
                           {"items": len(run), "segments": len(segments), "data": data, "acks": len(segments) - data,
                            "t_from": run[0].t, "t_to": run[-1].t}))
        run.clear()

    for i, item in enumerate(found):
        if i in keep:
            close_run()
            result.append(item)
        else:
            run.append(item)
    close_run()
    return result


def fold_text(item: Item) -> str:
    f = item.folded
    return (f"{f['segments']:,} segments folded ({f['data']:,} with data, {f['acks']:,} without), "
            f"{format_ms(f['t_from'])} to {format_ms(f['t_to'])} ms")


# --- SVG ------------------------------------------------------------------------------------

ROW = 24
TOP = 78
AXIS = 70
SIDE = 170
FONT = "font-family=\"DejaVu Sans, Liberation Sans, Arial, sans-serif\""
MONO = "font-family=\"DejaVu Sans Mono, Liberation Mono, monospace\""


class _Layout:
    def __init__(self, report: Report, shown: list[Item]):
        self.lanes = [lane.name for lane in report.lanes]
        n = max(len(self.lanes), 1)
        self.spacing = 380 if n <= 2 else max(230, 700 // (n - 1))
        self.x = {name: AXIS + SIDE + i * self.spacing for i, name in enumerate(self.lanes)}
        self.width = AXIS + SIDE + (n - 1) * self.spacing + SIDE + 20
        self.rows: list[float] = []
        self.breaks: list[tuple[float, float]] = []  # (y, seconds) of long pauses
        y = TOP + 24.0
        previous = None
        for item in shown:
            if previous is not None:
                dt = max(item.t - previous.t, 0.0)
                y += ROW
                if dt > 0.001:
                    y += min(26.0, 6.0 * math.log10(dt / 0.001) + 3)
                if dt > 0.05:
                    self.breaks.append((y - 16, dt))
                if item.kind == "fold" or previous.kind == "fold":
                    y += 8
            self.rows.append(y)
            previous = item
        self.times = [item.t for item in shown]
        self.height = (self.rows[-1] if self.rows else TOP) + 60

    def y(self, t: float) -> float:
        """Any time to a height: between the rows around it, so order is kept."""
        if not self.times:
            return TOP
        i = bisect.bisect_left(self.times, t)
        if i < len(self.times) and self.times[i] == t:
            return self.rows[i]
        if i == 0:
            return self.rows[0] - 6
        if i >= len(self.times):
            return self.rows[-1] + 12
        t1, t2, y1, y2 = self.times[i - 1], self.times[i], self.rows[i - 1], self.rows[i]
        return y1 + (y2 - y1) * (t - t1) / (t2 - t1) if t2 > t1 else y2


def svg(report: Report, budget: int | None = FOLD_BUDGET, prefix: str = "") -> str:
    """The ladder as one SVG element (inline in HTML, or a file of its own)."""
    shown = items(report, budget)
    layout = _Layout(report, shown)
    out: list[str] = []
    w, h = layout.width, layout.height
    out.append(f'<svg xmlns="http://www.w3.org/2000/svg" class="ladder" viewBox="0 0 {w} {h:.0f}" width="{w}" height="{h:.0f}" '
               f'role="img" aria-label="ladder diagram of {escape(report.title)}">')
    out.append(f"<title>Ladder diagram: {escape(report.title)}</title>")
    out.append("<defs>")
    for style, color in COLORS.items():
        out.append(f'<marker id="{prefix}head-{style}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" '
                   f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>')
    out.append("</defs>")
    out.append(f'<rect x="0" y="0" width="{w}" height="{h:.0f}" fill="#ffffff"/>')
    # Lanes: a header box and a lifeline each.
    for lane in report.lanes:
        x = layout.x[lane.name]
        router = lane.role == "router"
        out.append(f'<g class="lane" id="{prefix}lane-{escape(lane.name)}">')
        out.append(f'<rect x="{x - 70}" y="10" width="140" height="40" rx="6" fill="{"#fff7ed" if router else "#eef2ff"}" '
                   f'stroke="{"#b45309" if router else "#4338ca"}"/>')
        out.append(f'<text x="{x}" y="27" text-anchor="middle" font-size="14" font-weight="bold" {FONT}>{escape(lane.name)}</text>')
        out.append(f'<text x="{x}" y="43" text-anchor="middle" font-size="10" fill="#4b5563" {MONO}>'
                   f'{escape(", ".join(lane.addresses)[:28])}</text>')
        dash = ' stroke-dasharray="6 4"' if router else ""
        out.append(f'<line x1="{x}" y1="52" x2="{x}" y2="{h - 30:.0f}" stroke="#9ca3af" stroke-width="2"{dash}/>')
        if lane.acted:
            acted = "; ".join(dict.fromkeys(lane.acted))
            out.append(f'<text x="{x}" y="66" text-anchor="middle" font-size="10" fill="{COLORS["rule"]}" {FONT}>'
                       f'{escape(acted[:60])}</text>')
        out.append("</g>")
    out.append(f'<text x="8" y="{TOP + 4}" font-size="10" fill="#6b7280" {FONT}>t (ms)</text>')
    for y, seconds in layout.breaks:
        out.append(f'<g class="pause"><line x1="{AXIS - 4}" y1="{y:.1f}" x2="{w - 10}" y2="{y:.1f}" stroke="#e5e7eb" '
                   f'stroke-dasharray="2 4"/><text x="{AXIS - 6}" y="{y + 3:.1f}" text-anchor="end" font-size="9" fill="#9ca3af" '
                   f'{FONT}>+{format_duration(seconds)}</text></g>')
    first_lane = layout.lanes[0] if layout.lanes else None
    for item, y in zip(shown, layout.rows):
        if item.kind != "fold":
            out.append(f'<text x="{AXIS - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10" fill="#6b7280" {MONO}>'
                       f'{format_ms(item.t)}</text>')
        if item.kind == "segment":
            out.append(_arrow(item.ref, layout, prefix))
        elif item.kind in ("state", "call", "rule"):
            out.append(_note(item, layout.x[item.lane], y, item.lane == first_lane, prefix))
        elif item.kind == "fold":
            out.append(f'<g class="fold"><rect x="{AXIS}" y="{y - 11:.1f}" width="{w - AXIS - 10}" height="20" fill="#f3f4f6"/>'
                       f'<text x="{w / 2:.0f}" y="{y + 3:.1f}" text-anchor="middle" font-size="11" fill="{COLORS["fold"]}" {FONT}>'
                       f'⋯ {escape(fold_text(item))} ⋯</text></g>')
    out.append(_legend(layout, h))
    out.append("</svg>")
    return "\n".join(out)


def short_marks(segment: SegmentRow) -> list[str]:
    """What is remarkable about a segment, short enough to ride on its arrow."""
    found = segment_marks(segment, segment.fate, origin=segment.origin, sender=segment.sender,
                  dropped_at=segment.dropped_after, short=True)
    found.extend(r.split(": ", 1)[1] + " (" + r.split(" ", 2)[1] + ")" for r in segment.rules
                 if not r.endswith(": drop") and ": " in r and len(r.split(" ")) > 2)
    return found


def _held_at(segment: SegmentRow, lanes: dict) -> list[tuple[str, float, float]]:
    """Routers drawn as lanes that kept this segment a while: (router, entered, left)."""
    held = []
    for node in dict.fromkeys(s.node for s in segment.seen):
        if node in lanes and node not in (segment.origin, segment.receiver):
            times = [s.t for s in segment.seen if s.node == node]
            if max(times) - min(times) > HELD:
                held.append((node, min(times), max(times)))
    return held


def _arrow(segment: SegmentRow, layout: _Layout, prefix: str) -> str:
    style = segment_style(segment)
    color = COLORS[style]
    start = segment.departure()
    if segment.origin not in layout.x:
        return ""
    x0 = layout.x[segment.origin]
    points: list[tuple[float, float]] = [(x0, layout.y(start))]
    end_cross = None
    if segment.fate == "dropped":
        after = segment.dropped_after
        if after in layout.x and after != segment.origin:
            sight = [s.t for s in segment.seen if s.node == after]
            points.append((layout.x[after], layout.y(max(sight)) if sight else layout.y(start) + 10))
        else:
            # Lost before any other capture saw it: the cross goes halfway to the receiver.
            target = layout.x.get(segment.receiver, x0 + 80)
            points.append(((x0 + target) / 2, layout.y(start) + 10))
        end_cross = points[-1]
    else:
        # Straight from sender to receiver, as in a textbook; a router that held it bends the line there.
        for node, entered, left in _held_at(segment, layout.x):
            points += [(layout.x[node], layout.y(entered)), (layout.x[node], layout.y(left))]
        if segment.receiver in layout.x:
            arrival = segment.arrival()
            t_arr = arrival if arrival is not None else (segment.seen[-1].t if segment.seen else start)
            points.append((layout.x[segment.receiver], layout.y(t_arr)))
    if len(points) == 1:
        points.append((points[0][0] + 40, points[0][1]))
    # Keep a visible slant: a segment always arrives a little below where it left.
    fixed = [points[0]]
    for x, y in points[1:]:
        fixed.append((x, max(y, fixed[-1][1] + (6 if len(fixed) == 1 else 0))))
    points = fixed
    width = 2.4 if style in ("rst", "dropped") else 1.5
    dash = ' stroke-dasharray="6 3"' if style in ("dropped", "duplicate") else ""
    marker = "" if end_cross else f' marker-end="url(#{prefix}head-{style})"'
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    # The label sits on the first leg, nearer the sender, so labels of crossing segments
    # (one each way, close in time) fall at different places.
    (x1, y1), (x2, y2) = points[0], points[1]
    share = 0.38 if len(points) == 2 else 0.5
    lx, ly = x1 + (x2 - x1) * share, y1 + (y2 - y1) * share
    label = segment.label
    extra = short_marks(segment)
    marks = segment.marks
    title = f"#{segment.number} {segment.sender} > {segment.receiver}: {label}" + (f" ({', '.join(marks)})" if marks else "")
    title += "; seen " + ", ".join(f"{s.at} {format_ms(s.t)} ms" for s in segment.seen)
    if segment.payload:
        title += f"; data {segment.payload!r}"
    classes = f"segment {style}" + (" retransmission" if segment.retransmission and style != "retransmission" else "")
    out = [f'<g class="{classes}" id="{prefix}seg-{segment.id}" data-segment="{segment.id}"><title>{escape(title)}</title>',
           f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="{width}"{dash}{marker}/>']
    for sight in segment.seen:  # where a drawn router saw it pass
        if sight.node in layout.x and sight.node not in (segment.origin, segment.receiver) and not end_cross and len(points) == 2:
            sx = layout.x[sight.node]
            sy = y1 + (y2 - y1) * ((sx - x1) / (x2 - x1)) if x2 != x1 else y1
            out.append(f'<circle cx="{sx:.1f}" cy="{sy:.1f}" r="2.2" fill="{color}"/>')
    weight = ' font-weight="bold"' if style != "plain" else ""
    # The label runs along the arrow, just above it, and always reads left to right.
    dx, dy = (x2 - x1, y2 - y1) if x2 >= x1 else (x1 - x2, y1 - y2)
    angle = math.degrees(math.atan2(dy, dx)) if dx else 0.0
    rotate = f' transform="rotate({angle:.2f} {lx:.1f} {ly:.1f})"'
    marks_text = ""
    if extra:
        marks_text = f'<tspan font-weight="bold" {FONT}> · {escape(", ".join(extra)[:70])}</tspan>'
    out.append(f'<text x="{lx:.1f}" y="{ly - 4:.1f}" text-anchor="middle" font-size="11" fill="{color}"{weight}{rotate} {MONO}>'
               f'<tspan fill="#9ca3af">#{segment.number} </tspan>{escape(label)}{marks_text}</text>')
    if end_cross:
        cx, cy = end_cross
        out.append(f'<path class="cross" d="M{cx - 7:.1f},{cy - 7:.1f} L{cx + 7:.1f},{cy + 7:.1f} M{cx - 7:.1f},{cy + 7:.1f} '
                   f'L{cx + 7:.1f},{cy - 7:.1f}" stroke="{COLORS["dropped"]}" stroke-width="3"/>')
    out.append("</g>")
    return "".join(out)


def _note(item: Item, x: float, y: float, left: bool, prefix: str) -> str:
    if item.kind == "state":
        socket, band = item.ref
        fill = STATE_COLORS.get(item.text, "#e5e7eb")
        text = item.text
        width = 8 + 7.2 * len(text)
        box_x = x - 10 - width if left else x + 10
        tip = f"{socket.name}: {band.state} at {format_ms(band.start)} ms (from {band.source})"
        # A state seen only by sampling is known to within a sample interval: a dashed outline says so.
        dash = ' stroke-dasharray="3 2"' if band.source == "sample" else ""
        return (f'<g class="state" data-socket="{socket.id}"><title>{escape(tip)}</title>'
                f'<line x1="{x - 5}" y1="{y:.1f}" x2="{x + 5}" y2="{y:.1f}" stroke="{COLORS["state"]}" stroke-width="2"/>'
                f'<rect x="{box_x:.1f}" y="{y - 9:.1f}" width="{width:.1f}" height="17" rx="8" fill="{fill}" stroke="{COLORS["state"]}" stroke-width="0.6"{dash}/>'
                f'<text x="{box_x + width / 2:.1f}" y="{y + 3.5:.1f}" text-anchor="middle" font-size="10.5" font-weight="bold" fill="#111827" {MONO}>'
                f'{escape(text)}</text></g>')
    color = COLORS["call"] if item.kind == "call" else COLORS["rule"]
    anchor = "end" if left else "start"
    tx = x - 10 if left else x + 10
    room = 24  # characters that fit beside a line without running into the time axis or off the edge
    text = item.text if len(item.text) <= room else item.text[:room - 1] + "…"
    tip = item.text
    if item.kind == "call" and item.ref.note:
        tip += f" ({item.ref.note})"
    return (f'<g class="{item.kind}"><title>{escape(tip)}</title><circle cx="{x}" cy="{y:.1f}" r="3" fill="{color}"/>'
            f'<text x="{tx}" y="{y + 3.5:.1f}" text-anchor="{anchor}" font-size="10.5" font-style="italic" fill="{color}" {MONO}>'
            f'{escape(text)}</text></g>')


def _legend(layout: _Layout, h: float) -> str:
    entries = [("plain", "segment"), ("retransmission", "retransmission"), ("rst", "RST"), ("dropped", "dropped (✕ where)"),
               ("duplicate", "duplicate"), ("oow", "out of window")]
    out = ['<g class="legend">']
    x = AXIS
    for style, text in entries:
        dash = ' stroke-dasharray="6 3"' if style in ("dropped", "duplicate") else ""
        out.append(f'<line x1="{x}" y1="{h - 14:.0f}" x2="{x + 24}" y2="{h - 14:.0f}" stroke="{COLORS[style]}" stroke-width="2"{dash}/>'
                   f'<text x="{x + 30}" y="{h - 10:.0f}" font-size="10" fill="#374151" {FONT}>{escape(text)}</text>')
        x += 40 + 6.2 * len(text)
    out.append(f'<text x="{x + 10}" y="{h - 10:.0f}" font-size="10" fill="{COLORS["state"]}" {FONT}>state</text>')
    out.append(f'<text x="{x + 50}" y="{h - 10:.0f}" font-size="10" font-style="italic" fill="{COLORS["call"]}" {FONT}>call()</text>')
    out.append("</g>")
    return "".join(out)


# --- state bands ------------------------------------------------------------------------------

def bands_svg(report: Report, prefix: str = "") -> str:
    """One row of state bands per socket; widths grow with the logarithm of each state's duration."""
    rows = [k for k in report.sockets if k.bands]
    label_w, band_w, row_h = 300, 720, 34
    width, height = label_w + band_w + 20, 30 + row_h * max(len(rows), 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="bands" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="TCP state timeline per socket">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{label_w}" y="16" font-size="10" fill="#6b7280" {FONT}>band width grows with the logarithm of the duration; '
           f'the last band of a socket lasted at least until the run ended</text>']
    for r, socket in enumerate(rows):
        y = 26 + r * row_h
        out.append(f'<g class="socket" id="{prefix}sock-{socket.id}"><title>{escape(socket.name)}</title>')
        out.append(f'<text x="4" y="{y + 13}" font-size="11" font-weight="bold" {FONT}>{escape(socket.node)}</text>'
                   f'<text x="62" y="{y + 13}" font-size="10" fill="#374151" {MONO}>{escape(socket.local)} &gt; {escape(socket.remote)}</text>')
        widths = _band_widths(socket.bands, report, band_w)
        x = float(label_w)
        for band, bw in zip(socket.bands, widths):
            text = band.state
            duration = _band_duration(band, report)
            fill = STATE_COLORS.get(band.state, "#e5e7eb")
            dash = ' stroke-dasharray="4 2"' if band.end is None else ""
            tip = f"{band.state}: from {format_ms(band.start)} ms, {duration} ({band.source})"
            out.append(f'<g class="band"><title>{escape(tip)}</title><rect x="{x:.1f}" y="{y}" width="{bw - 2:.1f}" height="{row_h - 8}" '
                       f'fill="{fill}" stroke="#6b7280" stroke-width="0.6"{dash}/>'
                       f'<text x="{x + 4:.1f}" y="{y + 11}" font-size="9.5" font-weight="bold" {MONO}>{escape(text)}</text>'
                       f'<text x="{x + 4:.1f}" y="{y + 22}" font-size="9" fill="#374151" {FONT}>{escape(duration)}</text></g>')
            x += bw
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _band_duration(band: Band, report: Report) -> str:
    if band.end is None:
        if band.state == "CLOSED":
            return ""
        text = format_duration(report.duration - band.start, still=True)
        if band.timer_ms:
            text += f" (timer {band.timer_ms / 1000:.0f} s)"
        return text
    return format_duration(band.duration)


def _band_widths(bands: list[Band], report: Report, total: float) -> list[float]:
    minimum = [max(8 + 6.2 * len(b.state), 8 + 5.4 * len(_band_duration(b, report))) for b in bands]
    weights = []
    for b in bands:
        seconds = (report.duration - b.start) if b.end is None else (b.duration or 0.0)
        weights.append(math.log10(1 + max(seconds, 0.0) * 1e6))
    spare = max(total - sum(minimum), 0.0)
    scale = spare / sum(weights) if sum(weights) > 0 else 0.0
    return [m + w * scale for m, w in zip(minimum, weights)]


# --- text ------------------------------------------------------------------------------------

Span = tuple[str, str]  # (text, style name: plain | rst | state | call | muted | ...)


def text_lines(report: Report, budget: int | None = 120, gap: int | None = None) -> list[list[Span]]:
    """A compact ladder for terminals and Markdown: a time column, a line per lane, an arrow per segment."""
    shown = items(report, budget)
    lanes = [lane.name for lane in report.lanes]
    n = max(len(lanes), 1)
    gap = gap or (46 if n <= 2 else max(30, 92 // (n - 1)))
    left = 26  # room for the first lane's notes
    col = {name: left + i * gap for i, name in enumerate(lanes)}
    width = left + (n - 1) * gap + 1
    names = [" "] * (width + 30)
    for name in lanes:  # each lane's name centred over its line
        start = max(col[name] - len(name) // 2, 0)
        names[start:start + len(name)] = name
    result: list[list[Span]] = [[("  t (ms)  " + "".join(names).rstrip(), "bold")]]
    for item in shown:
        if item.kind == "fold":
            result.append([(" " * 10 + "⋮ " + fold_text(item), "muted")])
            continue
        canvas = [" "] * width
        for name in lanes:
            canvas[col[name]] = "│"
        spans: list[Span] = [(f"{format_ms(item.t):>9} ", "muted")]
        if item.kind == "segment":
            spans += _text_arrow(item.ref, canvas, col, lanes)
        else:
            x = col[item.lane]
            note = item.text
            style = "state" if item.kind == "state" else "call" if item.kind == "call" else "rule"
            if item.lane == lanes[0]:
                note = note if len(note) <= left - 2 else note[: left - 3] + "…"
                spans += [(" " * (x - 1 - len(note)), "plain"), (note, style), (" ", "plain"), ("".join(canvas[x:]), "muted")]
            else:
                spans += [("".join(canvas[: x + 1]), "muted"), (" " + note, style)]
        result.append(spans)
    return result


def _text_arrow(segment: SegmentRow, canvas: list[str], col: dict, lanes: list[str]) -> list[Span]:
    style = segment_style(segment)
    if segment.origin not in col:
        return [("".join(canvas), "muted"), (f"  {segment.label}", style)]
    a = col[segment.origin]
    if segment.fate == "dropped":
        b = col.get(segment.dropped_after, None) if segment.dropped_after != segment.origin else None
        if b is None:
            target = col.get(segment.receiver, a + 10)
            b = (a + target) // 2
    else:
        b = col.get(segment.receiver, a + 10)
    lo, hi = min(a, b), max(a, b)
    body = ["─"] * (hi - lo - 1)
    label = f" {segment.label} "
    if len(label) > len(body) - 2:
        label = f" {segment.flags} {signed(segment.rel_seq)}:{signed(segment.rel_ack)}({segment.length}) "
    start = max((len(body) - len(label)) // 2, 1)
    for i, ch in enumerate(label[: max(len(body) - 2, 0)]):
        body[start + i] = ch
    end_char = "✕" if segment.fate == "dropped" else ("▶" if b > a else "◀")
    if b > a:
        arrow = "".join(body) + end_char
        drawn = "".join(canvas[:lo]) + "├" + arrow
        rest = "".join(canvas[hi + 1:])
    else:
        arrow = end_char + "".join(body)
        drawn = "".join(canvas[:lo]) + arrow + "┤"
        rest = "".join(canvas[hi + 1:])
    marks = short_marks(segment)
    note = f"  #{segment.number}" + (f" {', '.join(marks)}" if marks else "")
    return [(drawn[:lo], "muted"), (drawn[lo:], style), (rest, "muted"), (note, style if marks else "muted")]


def plain(lines: list[list[Span]]) -> str:
    return "\n".join("".join(text for text, _ in spans).rstrip() for spans in lines)
