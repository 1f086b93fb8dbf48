"""The guild dashboard and the proxy's error pages: plain HTML, inline SVG, no JavaScript."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:860px;color:#1d232a;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem} .muted{color:#68707a;font-size:.9rem}
table{border-collapse:collapse;margin:.4rem 0 1.2rem} td,th{padding:.25rem .8rem .25rem 0;text-align:left}
th{font-weight:600;color:#45505c} .card{border:1px solid #dde2e8;border-radius:8px;padding:1rem 1.2rem;margin:1rem 0}
svg text{font-size:10px;fill:#68707a} .bar{fill:#4a7bd0} .empty{color:#68707a}
""".strip()


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body>{body}</body></html>"
    )


def sparkline_svg(points: list[dict[str, Any]], width: int = 800, height: int = 160) -> str:
    """Messages per day as bars, with the peak and the first/last day labelled."""
    counts = [int(p["count"]) for p in points]
    peak = max(counts, default=0) or 1
    n = max(len(counts), 1)
    gap = 2
    bar_w = (width - gap * (n - 1)) / n
    plot_h = height - 20
    bars = []
    for i, (point, count) in enumerate(zip(points, counts, strict=True)):
        h = 0 if count == 0 else max(1.0, plot_h * count / peak)
        x = i * (bar_w + gap)
        bars.append(
            f'<rect class="bar" x="{x:.1f}" y="{plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
            f"<title>{escape(str(point['day']))}: {count}</title></rect>"
        )
    first = escape(str(points[0]["day"])) if points else ""
    last = escape(str(points[-1]["day"])) if points else ""
    return (
        f'<svg role="img" aria-label="messages per day" width="100%" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(bars)}'
        f'<text x="0" y="{height - 4}">{first}</text>'
        f'<text x="{width}" y="{height - 4}" text-anchor="end">{last}</text>'
        f'<text x="0" y="10">peak {max(counts, default=0)}/day</text></svg>'
    )


def _counts_table(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return f'<h2>{escape(title)}</h2><p class="empty">None yet.</p>'
    rows = "".join(
        f"<tr><td>{escape(str(k))}</td><td>{int(v)}</td></tr>" for k, v in counts.items()
    )
    return f"<h2>{escape(title)}</h2><table><tr><th>kind</th><th>count</th></tr>{rows}</table>"


def render_dashboard(data: dict[str, Any], *, pod: str, reason: str, version: int) -> str:
    gid = escape(str(data.get("guild_id", "")))
    settings = data.get("settings")
    if settings:
        setup = (
            f"<table><tr><th>moderator role</th><td>{escape(str(settings.get('moderator_role', '-')))}</td></tr>"
            f"<tr><th>mod-log channel</th><td>{escape(str(settings.get('mod_log', '-')))}</td></tr></table>"
        )
    else:
        setup = '<p class="empty">Not set up yet: run <code>/setup</code> in the server.</p>'
    messages = data.get("messages") or {}
    body = (
        f"<h1>Guild {gid}</h1>"
        f'<p class="muted">served by <b>{escape(pod)}</b> ({escape(reason)}), routing table v{int(version)}</p>'
        f'<div class="card"><h2>Settings</h2>{setup}</div>'
        f'<div class="card"><h2>Messages, last 30 days</h2>{sparkline_svg(data.get("messages_per_day") or [])}'
        f'<p class="muted">{int(messages.get("total", 0))} messages from {int(messages.get("authors", 0))} authors, '
        f"{int(messages.get('deleted', 0))} deleted</p></div>"
        f'<div class="card">{_counts_table("Reports by reason", data.get("reports_by_reason") or {})}'
        f"{_counts_table('Mod actions by type', data.get('mod_actions_by_type') or {})}</div>"
    )
    return _page(f"Guild {gid} - mod-bot", body)


def render_unavailable(guild_id: int, pod: str | None, why: str, retry_after: int) -> str:
    body = (
        "<h1>This dashboard is briefly unavailable</h1>"
        f"<p>The pod that holds guild {int(guild_id)}'s data"
        + (f" (<b>{escape(pod)}</b>)" if pod else "")
        + f" is not answering: {escape(why)}.</p>"
        f"<p>Nothing is lost. Try again in about {int(retry_after)} seconds.</p>"
    )
    return _page("Briefly unavailable - mod-bot", body)
