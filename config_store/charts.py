"""Small inline SVG charts for operators: load per pod, skew over time, a plan's effect.

Hand-written SVG rather than a plotting library: a few rectangles and a polyline render
in any browser, in a terminal-friendly file, and cost no dependency.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape

BEFORE = "#9aa5b1"
AFTER = "#2f6fdf"
HOT = "#d9534f"
FAIR = "#222"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
        f'font-family="sans-serif" font-size="12"><title>{escape(title)}</title>'
        + "".join(body)
        + "</svg>"
    )


def load_bars(
    loads: Mapping[str, float], fair: Mapping[str, float], *, threshold: float = 1.25
) -> str:
    """One horizontal bar per pod, a tick at its fair share; red above the threshold."""
    names = sorted(loads)
    label_w, bar_w, row = 150, 420, 22
    scale = max([*loads.values(), *(f * threshold for f in fair.values()), 1e-9])
    body: list[str] = []
    for i, pod in enumerate(names):
        y = 6 + i * row
        value = loads[pod]
        share = fair.get(pod)
        hot = share is not None and share > 0 and value > share * threshold
        width = bar_w * value / scale
        body.append(f'<text x="4" y="{y + 13}">{escape(pod)}</text>')
        body.append(
            f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="16" '
            f'fill="{HOT if hot else AFTER}"><title>{escape(pod)}: {value:.2f}</title></rect>'
        )
        if share:
            x = label_w + bar_w * share / scale
            body.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 2}" y2="{y + 18}" stroke="{FAIR}" '
                'stroke-dasharray="3,2"/>'
            )
        ratio = f"{value / share:.2f}x" if share else "draining"
        body.append(f'<text x="{label_w + bar_w + 8}" y="{y + 13}">{value:.1f} ({ratio})</text>')
    height = 12 + row * max(1, len(names))
    return _svg(label_w + bar_w + 110, height, body, "load per pod (dashed: fair share)")


def skew_line(
    history: Sequence[Sequence[float]], *, threshold: float, clear: float, now: float | None = None
) -> str:
    """Imbalance ratio (peak/mean) over time, with the threshold and clear levels."""
    width, height, pad = 600, 160, 30
    if not history:
        return _svg(width, 40, ['<text x="4" y="24">no samples yet</text>'], "imbalance over time")
    now = time.time() if now is None else now
    t0 = history[0][0]
    span = max(now - t0, 1.0)
    top = max(max(h[1] for h in history), threshold) * 1.1
    bottom = 1.0

    def xy(t: float, v: float) -> str:
        x = pad + (width - 2 * pad) * (t - t0) / span
        y = height - pad - (height - 2 * pad) * (v - bottom) / max(top - bottom, 1e-9)
        return f"{x:.1f},{y:.1f}"

    body = [
        f'<polyline fill="none" stroke="{AFTER}" stroke-width="2" '
        f'points="{" ".join(xy(h[0], h[1]) for h in history)}"/>'
    ]
    for level, colour, label in ((threshold, HOT, "threshold"), (clear, BEFORE, "clear")):
        y = xy(t0, level).split(",")[1]
        body.append(
            f'<line x1="{pad}" x2="{width - pad}" y1="{y}" y2="{y}" stroke="{colour}" '
            'stroke-dasharray="4,3"/>'
        )
        body.append(f'<text x="{width - pad + 2}" y="{y}">{label} {level:g}</text>')
    ago = f"{span:.0f} s ago" if span < 120 else f"{span / 60:.0f} min ago"
    body.append(f'<text x="{pad}" y="{height - 8}">{ago}</text>')
    body.append(f'<text x="{width - pad - 20}" y="{height - 8}">now</text>')
    body.append(f'<text x="4" y="14">peak/mean, last {history[-1][1]:.2f}</text>')
    return _svg(width + 80, height, body, "imbalance ratio over time")


def before_after(plan: Mapping[str, object]) -> str:
    """A plan's load per pod, before (grey) and after (blue), fair share dashed."""
    before = plan.get("before") or {}
    after = plan.get("after") or {}
    fair = plan.get("fair") or {}
    assert isinstance(before, dict) and isinstance(after, dict) and isinstance(fair, dict)
    names = sorted(before)
    group, bar, chart_h, pad = 56, 22, 220, 40
    scale = max([*before.values(), *after.values(), *fair.values(), 1e-9])
    body: list[str] = []
    for i, pod in enumerate(names):
        x = pad + i * group
        for j, (values, colour) in enumerate(((before, BEFORE), (after, AFTER))):
            value = float(values.get(pod, 0.0))
            h = chart_h * value / scale
            body.append(
                f'<rect x="{x + j * bar}" y="{pad + chart_h - h:.1f}" width="{bar - 2}" '
                f'height="{h:.1f}" fill="{colour}"><title>{escape(pod)} '
                f"{'before' if j == 0 else 'after'}: {value:.2f}</title></rect>"
            )
        if pod in fair:
            y = pad + chart_h - chart_h * float(fair[pod]) / scale
            body.append(
                f'<line x1="{x - 2}" x2="{x + 2 * bar}" y1="{y:.1f}" y2="{y:.1f}" '
                f'stroke="{FAIR}" stroke-dasharray="3,2"/>'
            )
        body.append(
            f'<text x="{x}" y="{pad + chart_h + 14}" transform="rotate(30 {x} {pad + chart_h + 14})">'
            f"{escape(pod)}</text>"
        )
    title = f"plan {plan.get('id', '')}: load per pod before and after"
    body.append(f'<text x="{pad}" y="16" font-size="14">{escape(title)}</text>')
    body.append(
        f'<rect x="{pad}" y="22" width="10" height="10" fill="{BEFORE}"/>'
        f'<text x="{pad + 14}" y="31">before</text>'
        f'<rect x="{pad + 70}" y="22" width="10" height="10" fill="{AFTER}"/>'
        f'<text x="{pad + 84}" y="31">after</text>'
        f'<text x="{pad + 130}" y="31">dashed: fair share</text>'
    )
    width = pad * 2 + group * max(1, len(names)) + 40
    width = max(width, int(7.5 * len(title)) + 2 * pad)  # room for the title at 14px
    return _svg(width, chart_h + pad + 60, body, title)
