"""Small inline SVG charts for operators: load per pod, imbalance over time, a plan's effect.

Hand-written SVG rather than a plotting library: a few rectangles and lines render in
any browser and in a file the CLI writes, and cost no dependency. Every chart has an
axis with round ticks and a unit, so a bar means a number; labels sit in columns of
their own (names left, numbers right) so they cannot overlap however long a name is;
names are cleaned (no bidi overrides or control characters) and cut with an ellipsis,
the full text in a ``<title>`` tooltip.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

BEFORE = "#9aa5b1"
AFTER = "#2f6fdf"
HOT = "#d9534f"
FAIR = "#222"
GRID = "#e3e7ec"
INK = "#45505c"
FONT = 12
# (from, divide by, suffix): k from 10,000 on, so 1,500 stays 1500
_SUFFIXES = ((1e12, 1e12, "T"), (1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k"))

# bidi embeddings/overrides/isolates and marks: a name must not flip the text after it
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def clean(name: object, limit: int = 64) -> str:
    """One line of plain text: control and bidi-override characters dropped, cut to
    ``limit`` characters with an ellipsis."""
    text = "".join(
        " " if ch in "\r\n\t" else ch
        for ch in str(name)
        if ch not in _BIDI and (unicodedata.category(ch) != "Cc" or ch in "\r\n\t")
    ).strip()
    return text if len(text) <= limit else text[: max(1, limit - 1)].rstrip() + "\u2026"


def text_width(text: str, size: float = FONT) -> float:
    """A generous estimate of rendered width (DejaVu/Liberation sans), for layout."""
    wide = sum(1 for ch in text if unicodedata.east_asian_width(ch) in "WF" or ord(ch) > 0xFFFF)
    return size * (0.64 * (len(text) - wide) + 1.25 * wide)


def fit(text: str, width: float, size: float = FONT) -> str:
    """``text`` cut (with an ellipsis) so that it fits ``width`` pixels."""
    if text_width(text, size) <= width:
        return text
    while len(text) > 1 and text_width(text + "\u2026", size) > width:
        text = text[:-1]
    return text.rstrip() + "\u2026"


def natural(name: str) -> list[Any]:
    """Sort key that puts gateway-2 before gateway-10."""
    return [
        (0, int(part), "") if part.isdecimal() else (1, 0, part)
        for part in re.split(r"(\d+)", name)
    ]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 move``, ``2 moves``, ``0 moves``."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def nice_step(span: float, count: int = 4) -> float:
    """A round step (1, 2, 2.5 or 5 x 10^k) that cuts ``span`` into about ``count`` parts."""
    span = span if span > 0 and math.isfinite(span) else 1.0
    raw = span / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * magnitude * count >= span * 0.999:
            return m * magnitude
    return 10 * magnitude


def ticks(top: float, count: int = 4, bottom: float = 0.0) -> list[float]:
    """Round ticks from ``bottom`` up to the first one at or above ``top``."""
    step = nice_step(top - bottom, count)
    n = max(1, math.ceil((top - bottom) / step - 1e-9))
    return [bottom + i * step for i in range(n + 1)]


def tick_label(value: float, step: float) -> str:
    """A tick's label, with as many decimals as its step needs and k/M/G for big ones."""
    if abs(value) < step * 1e-6:
        return "0"
    top = max(abs(value), step)
    div, suffix = next(((d, x) for f, d, x in _SUFFIXES if top >= f), (1.0, ""))
    value, step = value / div, step / div
    decimals = 0
    while decimals < 9 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}{suffix}"


def number(value: float) -> str:
    """A value label: three significant figures, k/M/G for big ones, 0 for zero."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    size = abs(value)
    for start, div, suffix in _SUFFIXES:
        if size >= start * 0.9995:  # 999,999 is "1M", not "1e+03k"
            return f"{value / div:.3g}{suffix}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 0.01:
        return f"{value:.3g}"
    return f"{value:.2g}"


def human_bytes(count: float) -> str:
    """``0 B``, ``812 B``, ``4.0 KB``, ``12.3 MB``: never "0.0 MB" for a small database."""
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _text(
    x: float, y: float, text: str, *, anchor: str = "start", cls: str = "", extra: str = ""
) -> str:
    a = "" if anchor == "start" else f' text-anchor="{anchor}"'
    c = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}"{a}{c}{extra}>{escape(text)}</text>'


def _svg(width: int, height: int, body: list[str], title: str, min_width: int = 360) -> str:
    """The chart: it scales down with its container, not below ``min_width`` px."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'font-family="sans-serif" font-size="{FONT}" fill="{INK}" class="chart" '
        f'style="width:100%;max-width:{width}px;min-width:{min(width, min_width)}px;height:auto">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def _empty(width: int, message: str, title: str) -> str:
    return _svg(width, 40, [_text(8, 24, message, cls="empty")], title)


def _x_axis(
    left: float, width: float, y: float, top: float, tick_values: list[float], unit: str
) -> list[str]:
    """A horizontal value axis under a bar chart: grid lines, tick labels, the unit."""
    step = tick_values[1] - tick_values[0] if len(tick_values) > 1 else top
    out = [f'<line x1="{left}" x2="{left + width}" y1="{y}" y2="{y}" stroke="{INK}"/>']
    for value in tick_values:
        x = left + width * value / top
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y}" y2="{y + 4}" stroke="{INK}"/>'
            + _text(x, y + 16, tick_label(value, step), anchor="middle", cls="tick")
        )
    out.append(_text(left + width / 2, y + 32, unit, anchor="middle", cls="unit"))
    return out


def _grid(
    left: float, width: float, top_y: float, bottom_y: float, values: list[float], top: float
) -> list[str]:
    return [
        f'<line x1="{left + width * v / top:.1f}" x2="{left + width * v / top:.1f}" '
        f'y1="{top_y}" y2="{bottom_y}" stroke="{GRID}"/>'
        for v in values[1:]
    ]


def load_bars(
    loads: Mapping[str, float],
    fair: Mapping[str, float],
    *,
    threshold: float = 1.25,
    unit: str = "events/s",
) -> str:
    """One horizontal bar per pod on an axis in ``unit``; a dashed tick at its fair
    share; red above ``threshold`` x fair. Value labels in a column of their own."""
    title = "load per pod (dashed: fair share)"
    names = sorted(loads, key=natural)
    if not names:
        return _empty(560, "no pod has reported its load yet", title)
    labels = {p: clean(p, 40) for p in names}
    label_w = min(130.0, max(60.0, max(text_width(v) for v in labels.values()) + 10))
    bar_w, value_w, row, top_y = 200.0, 140.0, 22, 8
    peak = max([*loads.values(), *(f * threshold for f in fair.values()), 0.0])
    tick_values = ticks(peak if peak > 0 else 1.0)
    scale = tick_values[-1]
    axis_y = top_y + row * len(names) + 2
    body = _grid(label_w, bar_w, top_y - 2, axis_y, tick_values, scale)
    for i, pod in enumerate(names):
        y = top_y + i * row
        value = float(loads[pod])
        share = fair.get(pod)
        hot = share is not None and share > 0 and value > share * threshold
        width = bar_w * max(value, 0.0) / scale
        body.append(
            f'<text x="4" y="{y + 13}" class="name">{escape(fit(labels[pod], label_w - 10))}'
            f"<title>{escape(clean(pod, 200))}</title></text>"
        )
        body.append(
            f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="16" '
            f'fill="{HOT if hot else AFTER}"><title>{escape(clean(pod, 200))}: '
            f"{number(value)} {escape(unit)}</title></rect>"
        )
        if share:
            x = label_w + bar_w * share / scale
            body.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 2}" y2="{y + 18}" stroke="{FAIR}" '
                'stroke-dasharray="3,2"/>'
            )
        ratio = "draining" if share is None else f"{value / share:.2f}x fair" if share else "idle"
        body.append(_text(label_w + bar_w + 10, y + 13, f"{number(value)} ({ratio})", cls="value"))
    body += _x_axis(label_w, bar_w, axis_y, scale, tick_values, unit)
    width = int(label_w + bar_w + value_w)
    return _svg(width, int(axis_y + 40), body, title)


_TIME_STEPS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"-{seconds:.0f} s"
    if seconds < 3600:
        return f"-{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"-{seconds / 3600:.0f} h"
    return f"-{seconds / 86400:.0f} d"


def skew_line(
    history: Sequence[Sequence[float]], *, threshold: float, clear: float, now: float | None = None
) -> str:
    """Imbalance ratio (peak/mean) over time on a y axis of round ratios and a time
    axis counted back from now, with the threshold and clear levels labelled."""
    title = "imbalance ratio (peak/mean) over time"
    width, height = 470, 200
    left, right, top, bottom = 46.0, 112.0, 32.0, 40.0
    if not history:
        return _empty(width, "no samples yet: the balancer has not measured any load", title)
    now = time.time() if now is None else now
    t0 = min(h[0] for h in history)
    span = max(now - t0, 10.0)
    values = [float(h[1]) for h in history]
    low = min(1.0, *values)
    high = max(*values, threshold, clear, low + 0.1)
    step = nice_step(high - low, 4)
    y_ticks = ticks(high, 4, bottom=math.floor(low / step) * step)
    lo, hi = y_ticks[0], y_ticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(t: float) -> float:
        return left + plot_w * (t - (now - span)) / span

    def py(v: float) -> float:
        return top + plot_h - plot_h * (v - lo) / max(hi - lo, 1e-9)

    body: list[str] = []
    for v in y_ticks:
        y = py(v)
        body.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
            + _text(left - 6, y + 4, tick_label(v, step), anchor="end", cls="tick")
        )
    body.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="{INK}"/>'
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="{INK}"/>'
    )
    t_step = next((s for s in _TIME_STEPS if span / s <= 4), _TIME_STEPS[-1])
    for k in range(int(span // t_step) + 1):
        x = px(now - k * t_step)
        if k and x - left < 24:  # too close to the y axis to label
            continue
        body.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" stroke="{INK}"/>'
            + _text(
                x,
                top + plot_h + 16,
                "now" if k == 0 else _ago(k * t_step),
                anchor="middle",
                cls="tick",
            )
        )
    body.append(
        _text(left + plot_w / 2, height - 6, "time (before now)", anchor="middle", cls="unit")
    )
    body.append(_text(4, 14, "peak/mean (1.00 = even)", cls="unit"))
    # level labels at the right: pushed apart when the levels are close
    levels = sorted(((threshold, HOT, "threshold"), (clear, BEFORE, "clear")), key=lambda x: -x[0])
    label_y = [py(level) + 4 for level, _, _ in levels]
    if label_y[1] - label_y[0] < 14:
        mid = (label_y[0] + label_y[1]) / 2
        label_y = [mid - 7, mid + 7]
    shift = max(0.0, label_y[1] - (top + plot_h - 2))  # stay above the time axis' labels
    label_y = [y - shift for y in label_y]
    for (level, colour, name), ly in zip(levels, label_y, strict=True):
        y = py(level)
        body.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour}" '
            'stroke-dasharray="4,3"/>'
            + _text(left + plot_w + 6, ly, f"{name} {level:g}", cls="level")
        )
    points = " ".join(f"{px(float(h[0])):.1f},{py(float(h[1])):.1f}" for h in history)
    body.append(f'<polyline fill="none" stroke="{AFTER}" stroke-width="2" points="{points}"/>')
    last_t, last_v = float(history[-1][0]), float(history[-1][1])
    body.append(f'<circle cx="{px(last_t):.1f}" cy="{py(last_v):.1f}" r="3" fill="{AFTER}"/>')
    body.append(_text(width - 4, 14, f"last {last_v:.2f}", anchor="end", cls="value"))
    return _svg(width, height, body, title)


def _unit_of(plan: Mapping[str, Any]) -> str:
    unit = clean(plan.get("load_unit") or "events/s", 80)
    return f"load, {unit}"


def _move_label(n: int, move: Mapping[str, Any], names: Mapping[str, str], width: float) -> str:
    """``3. guild Name (id)``: the name is cut to fit, never the id."""
    kind, ident = clean(move.get("kind", "guild"), 12), clean(move.get("id", "?"), 24)
    name = names.get(ident) if kind == "guild" else None
    if not name:
        return fit(f"{n}. {kind} {ident}", width)
    head, tail = f"{n}. guild ", f" ({ident})"
    room = width - text_width(head) - text_width(tail)
    return head + fit(clean(name, 60), max(room, FONT)) + tail


def before_after(plan: Mapping[str, Any], names: Mapping[str, str] | None = None) -> str:
    """A plan: load per pod before (grey) and after (blue) on one axis, the numbers
    beside each pod, then the list of moves (what, from which pod, to which pod).
    ``names``: guild id -> name, where a pod's cache had it (ids otherwise)."""
    names = names or {}
    before: Mapping[str, float] = plan.get("before") or {}
    after: Mapping[str, float] = plan.get("after") or {}
    fair: Mapping[str, float] = plan.get("fair") or {}
    moves: Sequence[Mapping[str, Any]] = plan.get("moves") or []
    pods = sorted(set(before) | set(after), key=natural)
    width = 680
    title = f"plan {clean(plan.get('id', ''), 60)}: load per pod before and after"
    body: list[str] = [
        f'<text x="8" y="20" font-size="15" font-weight="600">{escape(fit(title, width - 16, 15))}</text>'
    ]
    summary = plural(len(moves), "move")
    if "peak_to_mean_before" in plan and "peak_to_mean_after" in plan:
        summary += (
            f" \u00b7 peak/fair {float(plan['peak_to_mean_before']):.2f}x \u2192 "
            f"{float(plan['peak_to_mean_after']):.2f}x"
        )
    if "moved_load" in plan:
        summary += f" \u00b7 moves {number(float(plan['moved_load']))} load"
    body.append(_text(8, 40, fit(summary, width - 16)))
    body.append(
        f'<rect x="8" y="50" width="12" height="12" fill="{BEFORE}"/>'
        + _text(24, 60, "before")
        + f'<rect x="80" y="50" width="12" height="12" fill="{AFTER}"/>'
        + _text(96, 60, "after")
        + f'<line x1="146" x2="146" y1="48" y2="64" stroke="{FAIR}" stroke-dasharray="3,2"/>'
        + _text(152, 60, "fair share")
    )
    y = 76.0
    if pods:
        labels = {p: clean(p, 40) for p in pods}
        label_w = min(130.0, max(60.0, max(text_width(v) for v in labels.values()) + 10))
        value_w = 170.0
        bar_w = width - label_w - value_w - 8
        peak = max([*before.values(), *after.values(), *fair.values(), 0.0])
        tick_values = ticks(peak if peak > 0 else 1.0)
        scale = tick_values[-1]
        row = 30
        axis_y = y + row * len(pods)
        body += _grid(label_w, bar_w, y - 2, axis_y, tick_values, scale)
        for i, pod in enumerate(pods):
            top = y + i * row
            b, a = float(before.get(pod, 0.0)), float(after.get(pod, 0.0))
            body.append(
                f'<text x="8" y="{top + 17:.1f}" class="name">{escape(fit(labels[pod], label_w - 10))}'
                f"<title>{escape(clean(pod, 200))}</title></text>"
            )
            for j, (value, colour, when) in enumerate(((b, BEFORE, "before"), (a, AFTER, "after"))):
                body.append(
                    f'<rect x="{label_w}" y="{top + 2 + j * 12:.1f}" width="{bar_w * max(value, 0) / scale:.1f}" '
                    f'height="11" fill="{colour}"><title>{escape(clean(pod, 200))} {when}: '
                    f"{number(value)}</title></rect>"
                )
            share = fair.get(pod)
            if share:
                x = label_w + bar_w * float(share) / scale
                body.append(
                    f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + 26}" stroke="{FAIR}" '
                    'stroke-dasharray="3,2"/>'
                )
            numbers = f"{number(b)} \u2192 {number(a)}" + (
                " (draining)" if share is None else f" (fair {number(float(share))})"
            )
            body.append(_text(label_w + bar_w + 10, top + 17, numbers, cls="value"))
        body += _x_axis(label_w, bar_w, axis_y, scale, tick_values, _unit_of(plan))
        y = axis_y + 58
    else:
        body.append(_text(8, y + 14, "no pods in this plan", cls="empty"))
        y += 34
    body.append(
        f'<text x="8" y="{y:.1f}" font-weight="600">moves</text>'
        f'<text x="{8 + 390}" y="{y:.1f}" font-weight="600">from pod \u2192 to pod</text>'
        f'<text x="{width - 8}" y="{y:.1f}" font-weight="600" text-anchor="end">load</text>'
    )
    y += 20
    if not moves:
        body.append(_text(8, y, "no moves: this plan changes nothing", cls="empty"))
        y += 20
    shown = list(moves[:20])
    what_w, route_w = 390.0, 210.0
    for n, move in enumerate(shown, 1):
        route = f"{clean(move.get('from', '?'), 40)} \u2192 {clean(move.get('to', '?'), 40)}"
        body.append(
            _text(8, y, _move_label(n, move, names, what_w - 12), cls="move")
            + _text(8 + what_w, y, fit(route, route_w - 12), cls="route")
            + _text(width - 8, y, number(float(move.get("load", 0.0))), anchor="end", cls="value")
        )
        y += 18
    if len(moves) > len(shown):
        body.append(
            _text(8, y, f"\u2026 and {plural(len(moves) - len(shown), 'more move')}", cls="muted")
        )
        y += 18
    for reason in list(plan.get("unfixable") or [])[:3]:
        body.append(_text(8, y, fit(f"cannot fix: {clean(reason, 200)}", width - 16), cls="muted"))
        y += 18
    return _svg(width, int(y + 4), body, title, min_width=440)
