"""The guild dashboard and the proxy's error pages: plain HTML, inline SVG, no JavaScript.

Names (the guild's, its roles' and channels') come from the owning pod's discord.py
cache in the pod's answer (``names``); ids stay beside them, and stand alone, with a
sentence saying why, when the pod's cache does not hold the guild.
"""

from __future__ import annotations

import math
import time
import unicodedata
from html import escape
from typing import Any

_STYLE = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:860px;color:#1d232a;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem;overflow-wrap:anywhere} h1 .id{font-size:.6em;font-weight:400} .muted{color:#68707a;font-size:.9rem}
.id{font-family:ui-monospace,monospace;font-size:.85em;color:#68707a;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.4rem 0 1.2rem;max-width:100%} td,th{padding:.25rem .8rem .25rem 0;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{font-weight:600;color:#45505c} .card{border:1px solid #dde2e8;border-radius:8px;padding:1rem 1.2rem;margin:1rem 0}
.note{background:#eef3fb;border-left:4px solid #2f6fdf;padding:6px 10px}
.chart-box{overflow-x:auto;max-width:100%} svg{display:block} svg text{font-size:12px;fill:#45505c} .bar{fill:#4a7bd0} .empty{color:#68707a}
input{max-width:100%}
@media (max-width:640px){body{padding:0 .6rem;margin:1rem auto} .card{padding:.8rem} svg text{font-size:16px}}
""".strip()

_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def clean(name: object, limit: int = 100) -> str:
    """One line of plain text: no control or bidi-override characters, at most ``limit``."""
    text = "".join(
        ch
        for ch in str(name).replace("\n", " ")
        if ch not in _BIDI and unicodedata.category(ch) != "Cc"
    ).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else (many or word + 's')}"


def _count_ticks(peak: int) -> list[int]:
    """Round whole-number ticks from 0 to at or above ``peak`` (about 4 steps)."""
    top = max(peak, 1)
    raw = top / 4
    magnitude = 10 ** max(0, math.floor(math.log10(raw))) if raw >= 1 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude * 4 >= top)
    return [i * step for i in range(math.ceil(top / step) + 1)]


def _short_count(value: int) -> str:
    if value >= 10_000_000:
        return f"{value / 1e6:.0f}M"
    if value >= 10_000:
        return f"{value / 1e3:.0f}k"
    return str(value)


def _day_label(day: str) -> str:
    try:
        return time.strftime("%b %d", time.strptime(day, "%Y-%m-%d"))
    except ValueError:
        return clean(day, 10)


def sparkline_svg(points: list[dict[str, Any]], width: int = 520, height: int = 190) -> str:
    """Messages per day as bars on a y axis of round counts (messages/day) and a date axis."""
    counts = [max(0, int(p["count"])) for p in points]
    left, right, top, bottom = 66.0, 12.0, 14.0, 40.0
    plot_w, plot_h = width - left - right, height - top - bottom
    y_ticks = _count_ticks(max(counts, default=0))
    scale = y_ticks[-1]
    n = max(len(counts), 1)
    gap = 2.0 if plot_w / n > 6 else 0.0
    slot = plot_w / n
    parts = []
    for v in y_ticks:
        y = top + plot_h - plot_h * v / scale
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e7ec"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_short_count(v)}</text>'
        )
    for i, (point, count) in enumerate(zip(points, counts, strict=True)):
        h = 0 if count == 0 else max(1.0, plot_h * count / scale)
        x = left + i * slot
        parts.append(
            f'<rect class="bar" x="{x + gap / 2:.1f}" y="{top + plot_h - h:.1f}" width="{slot - gap:.1f}" '
            f'height="{h:.1f}"><title>{escape(clean(point["day"], 10))}: '
            f"{escape(plural(count, 'message'))}</title></rect>"
        )
    base = top + plot_h
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{base}" stroke="#45505c"/>'
        f'<line x1="{left}" x2="{width - right}" y1="{base}" y2="{base}" stroke="#45505c"/>'
    )
    every = max(1, math.ceil(80 / slot))  # date labels 80 px apart: room for 16 px text
    for i in range(len(points) - 1, -1, -every):
        x = left + (i + 0.5) * slot
        last = i == len(points) - 1 and len(points) > 1  # the newest day ends at the edge
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{base}" y2="{base + 4}" stroke="#45505c"/>'
            f'<text x="{width - right if last else x:.1f}" y="{base + 16}" '
            f'text-anchor="{"end" if last else "middle"}" class="tick">'
            f"{escape(_day_label(str(points[i]['day'])))}</text>"
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" class="unit">day (UTC)</text>'
        f'<text x="17" y="{top + plot_h / 2:.1f}" text-anchor="middle" class="unit" '
        f'transform="rotate(-90 17 {top + plot_h / 2:.1f})">messages/day</text>'
    )
    if not any(counts):
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
            'class="empty">no messages in these days</text>'
        )
    return (
        f'<div class="chart-box"><svg role="img" aria-label="messages per day" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
        f'font-family="sans-serif" style="width:100%;max-width:{width}px;min-width:{min(width, 300)}px;'
        f'height:auto"><title>messages per day, peak {max(counts, default=0)}</title>'
        f"{''.join(parts)}</svg></div>"
    )


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body>{body}</body></html>"
    )


def _named(value: Any, names: dict[str, str] | None, prefix: str, known: bool) -> str:
    """A role or channel: its name (from the pod's cache) and id, or the id alone."""
    if value in (None, ""):
        return '<span class="empty">not set</span>'
    ident = escape(clean(value, 40))
    name = (names or {}).get(str(value))
    if name:
        return f'<bdi>{prefix}{escape(clean(name))}</bdi> <span class="id">{ident}</span>'
    if known:  # the cache holds the guild, but not this id: deleted, or not a role/channel
        return (
            f'<span class="id">{ident}</span> <span class="empty">(not found in the server)</span>'
        )
    return f'<span class="id">{ident}</span>'


def _counts_table(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return f'<h2>{escape(title)}</h2><p class="empty">None yet.</p>'
    rows = "".join(
        f"<tr><td><bdi>{escape(clean(k))}</bdi></td><td>{int(v)}</td></tr>"
        for k, v in counts.items()
    )
    return f"<h2>{escape(title)}</h2><table><tr><th>kind</th><th>count</th></tr>{rows}</table>"


def render_dashboard(data: dict[str, Any], *, pod: str, reason: str, version: int) -> str:
    gid = escape(clean(data.get("guild_id", ""), 40))
    names = data.get("names") if isinstance(data.get("names"), dict) else None
    guild_name = clean(names.get("guild") or "") if names else ""
    heading = (
        f'<bdi>{escape(guild_name)}</bdi> <span class="id">Guild {gid}</span>'
        if guild_name
        else f"Guild {gid}"
    )
    note = (
        ""
        if names is not None
        else '<p class="note">Names are unavailable: the pod\'s Discord cache does not hold this '
        "guild right now (its shard may be reconnecting), so roles and channels are shown by id.</p>"
    )
    settings = data.get("settings")
    if settings:
        known = names is not None
        roles = names.get("roles") if names else None
        channels = names.get("channels") if names else None
        setup = (
            f"<table><tr><th>moderator role</th><td>{_named(settings.get('moderator_role'), roles, '@', known)}</td></tr>"
            f"<tr><th>mod-log channel</th><td>{_named(settings.get('mod_log'), channels, '#', known)}</td></tr></table>"
        )
    else:
        setup = '<p class="empty">Not set up yet: run <code>/setup</code> in the server.</p>'
    messages = data.get("messages") or {}
    total, authors = int(messages.get("total", 0)), int(messages.get("authors", 0))
    body = (
        f"<h1>{heading}</h1>"
        f'<p class="muted">served by <b>{escape(pod)}</b> ({escape(reason)}), routing table v{int(version)}</p>'
        f"{note}"
        f'<div class="card"><h2>Settings</h2>{setup}</div>'
        f'<div class="card"><h2>Messages, last 30 days</h2>{sparkline_svg(data.get("messages_per_day") or [])}'
        f'<p class="muted">{plural(total, "message")} from {plural(authors, "author")}, '
        f"{int(messages.get('deleted', 0))} deleted</p></div>"
        f'<div class="card">{_counts_table("Reports by reason", data.get("reports_by_reason") or {})}'
        f"{_counts_table('Mod actions by type', data.get('mod_actions_by_type') or {})}</div>"
    )
    title = f"{guild_name} - mod-bot" if guild_name else f"Guild {gid} - mod-bot"
    return _page(title, body)


def render_unavailable(guild_id: int, pod: str | None, why: str, retry_after: int) -> str:
    body = (
        "<h1>This dashboard is briefly unavailable</h1>"
        f"<p>The pod that holds guild {int(guild_id)}'s data"
        + (f" (<b>{escape(pod)}</b>)" if pod else "")
        + f" is not answering: {escape(why)}.</p>"
        f"<p>Nothing is lost. Try again in about {int(retry_after)} seconds.</p>"
    )
    return _page("Briefly unavailable - mod-bot", body)
