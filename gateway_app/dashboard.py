"""The guild dashboard, rendered by the pod that owns the guild: plain HTML, inline SVG,
no JavaScript.

The pod renders it because only the pod knows its data's shape (``Storage.dashboard``)
and its discord.py cache; the proxy relays the bytes (issue 16) and adds its security
headers. The page is served at ``GET /data/guilds/<id>/dashboard`` behind the same
identity check as every guild read (``identity.py``): a signed-in user with Manage
Server or the guild's moderator role.

Names (the guild's, its roles' and channels') come from the cache; ids stay beside
them, and stand alone, with a sentence saying why, when the cache does not hold the
guild. Everything a user or guild owner can choose (names, report reasons, token owner
names) is escaped and cleaned of control and bidi-override characters.

What only the proxy knows comes in request headers it sets (a client's ``X-Modbot-*``
never arrives): how it routed the request (``X-Modbot-Route``,
``X-Modbot-Table-Version``) and, for a signed-in session, the session's CSRF token and
display name (``X-Modbot-Csrf``, ``X-Modbot-User-Name``, percent-encoded UTF-8), for
the forms that post back to the proxy.
"""

from __future__ import annotations

import math
import time
import unicodedata
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from . import identity

ROUTE_HEADER = "X-Modbot-Route"
VERSION_HEADER = "X-Modbot-Table-Version"
CSRF_HEADER = "X-Modbot-Csrf"
USER_HEADER = "X-Modbot-User-Name"
# the page holds a CSRF token: never cached; and never sniffed as anything but HTML
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
ENDED_TOKENS_SHOWN = 50  # revoked and expired tokens accumulate: the newest are enough

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


def render_dashboard(
    data: dict[str, Any],
    *,
    pod: str,
    reason: str,
    version: int | None,
    viewer: Viewer | None = None,
) -> str:
    """The whole page; ``viewer`` adds the signed-in panel (absent: a read-only page)."""
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
    route = f" ({escape(clean(reason, 20))})" if reason else ""
    table = f", routing table v{int(version)}" if version is not None else ""
    how = f"{route}{table}"
    messages = data.get("messages") or {}
    total, authors = int(messages.get("total", 0)), int(messages.get("authors", 0))
    body = (
        f"<h1>{heading}</h1>"
        f'<p class="muted">served by <b>{escape(clean(pod, 64))}</b>{how}</p>'
        f"{note}"
        f'<div class="card"><h2>Settings</h2>{setup}</div>'
        f'<div class="card"><h2>Messages, last 30 days</h2>{sparkline_svg(data.get("messages_per_day") or [])}'
        f'<p class="muted">{plural(total, "message")} from {plural(authors, "author")}, '
        f"{int(messages.get('deleted', 0))} deleted</p></div>"
        f'<div class="card">{_counts_table("Reports by reason", data.get("reports_by_reason") or {})}'
        f"{_counts_table('Mod actions by type', data.get('mod_actions_by_type') or {})}</div>"
    )
    if viewer is not None:
        body += _panel(gid, settings or {}, viewer)
    title = f"{guild_name} - mod-bot" if guild_name else f"Guild {gid} - mod-bot"
    return _page(title, body)


@dataclass
class Viewer:
    """Who is looking, for the signed-in panel: the sign-out form (sessions) and, for
    those who manage the guild, the settings form and the guild's API tokens."""

    manages: bool = False
    csrf: str = ""
    session_name: str | None = None
    tokens: list[dict[str, Any]] = field(default_factory=list)


def _panel(gid: str, settings: dict[str, Any], viewer: Viewer) -> str:
    csrf = escape(viewer.csrf)
    hidden = f'<input type="hidden" name="csrf" value="{csrf}">'
    parts = []
    if viewer.session_name is not None:
        parts.append(
            f'<form method="post" action="/logout">{hidden}'
            f"<p>Signed in as <b><bdi>{escape(clean(viewer.session_name, 64))}</bdi></b> "
            '<button type="submit" id="logout">Log out</button></p></form>'
        )
    if not viewer.manages:
        return "".join(parts)
    role = escape(clean(settings.get("moderator_role") or "", 40))
    log = escape(clean(settings.get("mod_log") or "", 40))
    parts.append(
        f'<div class="card"><h2>Change settings</h2><form method="post" action="/guild/{gid}/settings">'
        f'{hidden}<label>moderator role <input name="moderator_role" id="moderator_role" value="{role}"></label> '
        f'<label>mod-log channel <input name="mod_log" id="mod_log" value="{log}"></label> '
        '<button type="submit" id="save">Save</button></form></div>'
    )
    rows = []
    for t in viewer.tokens:
        tid = escape(clean(t.get("id", ""), 64))
        revoked = bool(t.get("revoked_at"))
        when = "revoked" if revoked else _date(t.get("expires_at"))
        revoke = (
            ""
            if revoked
            else f'<form method="post" action="/guild/{gid}/tokens/{tid}/revoke">{hidden}'
            '<button type="submit">Revoke</button></form>'
        )
        rows.append(
            f'<tr><td class="id">{tid}</td><td><bdi>{escape(clean(t.get("user_name", ""), 64))}</bdi></td>'
            f"<td>{escape(clean(t.get('scope', ''), 10))}</td><td>{when}</td><td>{revoke}</td></tr>"
        )
    parts.append(
        '<div class="card"><h2>API tokens</h2>'
        f"<table><tr><th>id</th><th>owner</th><th>scope</th><th>expires</th><th></th></tr>{''.join(rows)}</table>"
        f'<form method="post" action="/guild/{gid}/tokens">{hidden}'
        '<select name="scope"><option value="read">read</option><option value="write">write</option></select> '
        '<button type="submit" id="new-token">New token</button></form></div>'
    )
    return "".join(parts)


def _date(value: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d", time.gmtime(float(value)))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def shown_tokens(tokens: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """Every live token, and the newest ``ENDED_TOKENS_SHOWN`` revoked or expired ones
    (in creation order): the page stays small however many were made over the years."""
    now = time.time() if now is None else now

    def live(t: dict[str, Any]) -> bool:
        return not t.get("revoked_at") and float(t.get("expires_at") or 0) > now

    ended = [id(t) for t in tokens if not live(t)][-ENDED_TOKENS_SHOWN:]
    keep = set(ended)
    return [t for t in tokens if live(t) or id(t) in keep]


def _version(text: str | None) -> int | None:
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text)


async def respond(
    request: web.Request,
    data: dict[str, Any],
    *,
    names: dict[str, Any] | None,
    pod: str,
    version: int | None,
) -> web.Response:
    """The page for a request the identity check let through (``request["identity"]``)."""
    ident: identity.Identity = request["identity"]
    viewer = Viewer(manages=ident.manages)
    if ident.kind == "session":
        viewer.csrf = request.headers.get(CSRF_HEADER, "")
        viewer.session_name = unquote(request.headers.get(USER_HEADER, ""), errors="replace")
    if ident.manages:
        guard = request.app[identity.IDENTITY_KEY]
        viewer.tokens = shown_tokens(await guard.tokens.list(int(data["guild_id"])))
    html = render_dashboard(
        {**data, "names": names},
        pod=pod,
        reason=request.headers.get(ROUTE_HEADER, ""),
        version=_version(request.headers.get(VERSION_HEADER)) or version,
        viewer=viewer,
    )
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)
