"""``GET /ops``: one HTML page an operator can read at a glance (no JavaScript).

Readable from a laptop (1280 px) down to a phone (390 px): charts scale to the width,
tables turn into one card per row on narrow screens, long names wrap. Guild names come
from the pods' Discord caches (``names``); where a pod could not be asked the page says
so and shows ids.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from .charts import before_after, clean, human_bytes, load_bars, plural, skew_line
from .store import PodRecord

STEPS = ("prepared", "precopy", "frozen", "imported", "flipped", "replayed", "done")
PLAN_PICTURES = 3  # waiting plans drawn in full; the rest are table rows

STYLE = """
* { box-sizing: border-box }
body { font-family: system-ui, sans-serif; margin: 1em auto; padding: 0 14px; color: #222;
  max-width: 1100px; line-height: 1.4 }
h1 { font-size: 1.4em; overflow-wrap: anywhere } h2 { font-size: 1.1em; margin-top: 1.6em }
table { border-collapse: collapse; max-width: 100% }
td, th { padding: 3px 10px; text-align: left; vertical-align: top; overflow-wrap: break-word }
.name, code, .id { overflow-wrap: anywhere } .short { white-space: nowrap }
tr:nth-child(even) { background: #f4f6f8 } .muted, .id { color: #68707a }
.id { font-family: ui-monospace, monospace; font-size: .85em }
.advice { background: #fff7e0; border-left: 4px solid #f0ad4e; padding: 6px 10px; margin: 4px 0 }
.note { background: #eef3fb; border-left: 4px solid #2f6fdf; padding: 6px 10px; margin: 4px 0 }
.empty { color: #68707a; font-style: italic }
code { background: #eef; padding: 1px 4px; overflow-wrap: anywhere }
progress { width: 120px; max-width: 100% }
.chart-box { overflow-x: auto; max-width: 100%; margin: 6px 0 }
svg.chart { display: block }
@media (max-width: 640px) {
  body { padding: 0 10px }
  table, tbody, tr, td { display: block; width: 100% }
  tr.head { display: none }
  tr { border: 1px solid #dde2e8; border-radius: 6px; margin: 6px 0; padding: 4px 0 }
  td { padding: 2px 8px }
  td::before { content: attr(data-label) ": "; color: #68707a }
}
"""


def guild_cell(guild_id: object, names: Mapping[str, str]) -> str:
    """A guild's name (from a pod's cache) with its id beside it; the id alone without."""
    ident = escape(str(guild_id))
    name = names.get(str(guild_id))
    if not name:
        return f'<span class="id">{ident}</span>'
    return f'<bdi class="name">{escape(clean(name, 100))}</bdi> <span class="id">{ident}</span>'


def pod_cell(name: str, limit: int = 60) -> str:
    """A pod's name: kept on one line when short (tables squeeze it otherwise), free to
    wrap anywhere when long."""
    text = clean(name, limit)
    return f'<bdi class="{"short" if len(text) <= 24 else "name"}">{escape(text)}</bdi>'


def _rows(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    """A table, or a sentence saying it is empty; cells are HTML already escaped."""
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td data-label="{escape(h)}">{c}</td>' for h, c in zip(headers, row, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table><tr class="head">{head}</tr>{body}</table>'


def _migration_unit(m: Mapping[str, Any], names: Mapping[str, str]) -> str:
    if m.get("guild_id") is not None:
        return guild_cell(m["guild_id"], names)
    return f"shard {escape(str(m.get('shard')))}"


def _chart(svg: str) -> str:
    """A chart scales down with the page to 80 % of its size, then scrolls in its own box
    (the page itself never scrolls sideways) so its text stays readable on a phone."""
    return f'<div class="chart-box">{svg}</div>'


def _page(body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modbot-ring ops</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="15"><style>{STYLE}</style></head><body>
{body}
</body></html>"""


def render_unavailable(why: str) -> str:
    """The page when the config database cannot be read: what is wrong, not a 500."""
    return _page(
        "<h1>modbot-ring operations</h1>"
        '<p class="advice">The config database is not answering, so there is nothing to show '
        f"yet: {escape(clean(why, 300))}.</p>"
        '<p class="muted">Routing goes on from the last table the proxies and pods hold. '
        "This page refreshes every 15 s.</p>"
    )


def render(
    *,
    version: int | None,
    balance: dict[str, Any],
    pods: Sequence[PodRecord],
    pins: Sequence[dict[str, Any]],
    migrations: Sequence[dict[str, Any]],
    plans: Sequence[dict[str, Any]],
    names: Mapping[str, str] | None = None,
    names_note: str | None = None,
) -> str:
    """The page. ``names``: guild id -> name from the pods' caches; ``names_note``: why
    some names are missing (a pod that did not answer), shown above everything."""
    names = names or {}
    now = time.time()
    policy = balance["policy"]
    unit = "events/s"
    loads = balance.get("loads") or {}
    history = balance.get("history") or []
    pod_rows = [
        [
            pod_cell(p.name, 100),
            escape(p.state),
            "online" if p.online else "<b>offline</b>",
            "never" if p.last_heartbeat is None else f"{max(now - p.last_heartbeat, 0):.0f} s ago",
            f"{float(loads.get(p.name, 0.0)):.1f}",
            plural(int((p.load or {}).get("guild_count", 0)), "guild"),
            human_bytes((p.load or {}).get("db_bytes", 0)),
        ]
        for p in pods
    ]
    advice = "".join(f'<div class="advice">{escape(a)}</div>' for a in balance["advice"])
    migration_rows = [
        [
            escape(str(m["id"])),
            _migration_unit(m, names),
            f"{pod_cell(m['source'])} &rarr; {pod_cell(m['target'])}",
            escape(m["state"]),
            f'<progress max="{len(STEPS) - 1}" value="{STEPS.index(m["state"]) if m["state"] in STEPS else 0}"></progress>',
            escape(str(m.get("plan_id") or "")),
        ]
        for m in migrations
    ]
    plan_rows = [
        [
            escape(p["id"]),
            escape(clean(p["actor"], 60)),
            plural(len(p["plan"].get("moves", [])), "move"),
            f"{p['plan'].get('peak_to_mean_before', 0):.2f}x &rarr; {p['plan'].get('peak_to_mean_after', 0):.2f}x",
            escape(p["plan"].get("reason", "")),
            f"<code>modbot-ring apply {escape(p['id'])}</code>",
        ]
        for p in plans
    ]
    plan_pictures = "".join(
        _chart(before_after({**p["plan"], "id": p["id"]}, names)) for p in plans[:PLAN_PICTURES]
    )
    pin_rows = [
        [
            guild_cell(p["guild_id"], names),
            pod_cell(p["pod"]),
            escape(p["kind"]),
            escape(clean(p["reason"], 200)),
        ]
        for p in pins[:100]
    ]
    hot_rows = [
        [
            guild_cell(h["guild_id"], names),
            pod_cell(h["pod"]),
            f"{h['load']:.2f}",
            f"{h['share']:.2f}x",
        ]
        for h in balance["hot"]
    ]
    imbalance = balance["imbalance"]
    online = sum(1 for p in pods if p.online)
    headline = f"{plural(len(pods), 'pod')} ({online} online) \u00b7 " + (
        "no load reported yet"
        if imbalance is None
        else f"imbalance {imbalance:.2f} (peak/mean), skew {balance['skew']:.2f}, "
        f"total {balance['total']:.1f} {unit}"
    )
    table = "no routing table yet" if version is None else f"table v{version}"
    note = f'<p class="note">{escape(names_note)}</p>' if names_note else ""
    return _page(f"""<h1>modbot-ring operations &middot; {table}</h1>
<p>{escape(headline)}<br>
balancer: <b>{escape(balance["mode"])}</b>{" (leader)" if balance["leader"] else ""} &middot;
{escape(balance["decision"])}</p>
{note}{advice}
<h2>Pods</h2>
{_chart(load_bars(loads, balance.get("fair") or {}, threshold=policy["threshold"], unit=unit)) if loads else '<p class="empty">no pod has reported its load yet</p>'}
{_rows(["pod", "state", "health", "heartbeat", unit, "guilds", "SQLite"], pod_rows, "no pods registered")}
<h2>Imbalance over time</h2>
{_chart(skew_line(history, threshold=policy["threshold"], clear=policy["clear"], now=now)) if history else '<p class="empty">no samples yet: the balancer has not measured any load</p>'}
<h2>Waiting plans</h2>
{_rows(["plan", "by", "moves", "peak/fair", "why", "apply"], plan_rows, "no plan is waiting")}
{plan_pictures}
<h2>Running migrations</h2>
{_rows(["id", "guild", "move", "state", "progress", "plan"], migration_rows, "no migration is running")}
<h2>Hottest guilds</h2>
{_rows(["guild", "pod", unit, "of a fair share"], hot_rows, "no per-guild load reported")}
<h2>Pins</h2>
{_rows(["guild", "pod", "kind", "reason"], pin_rows, "no pins")}
<p class="muted">Load is in {unit} (decayed rate of Discord events). Policy: threshold
{policy["threshold"]}, clear {policy["clear"]}, hold-down {policy["hold_down"]:g} s, cool-down
{policy["cooldown"]:g} s, plans aim at &plusmn;{policy["target_epsilon"]:.0%}, move budget
{policy["move_budget_per_hour"]}/h. Refreshes every 15 s.</p>""")
