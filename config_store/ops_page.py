"""``GET /ops``: one HTML page an operator can read at a glance (no JavaScript)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape
from typing import Any

from .charts import load_bars, skew_line
from .store import PodRecord

STEPS = ("prepared", "precopy", "frozen", "imported", "flipped", "replayed", "done")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1100px }
h1 { font-size: 1.4em } h2 { font-size: 1.1em; margin-top: 1.6em }
table { border-collapse: collapse } td, th { padding: 3px 10px; text-align: left }
tr:nth-child(even) { background: #f4f6f8 } .muted { color: #777 }
.advice { background: #fff7e0; border-left: 4px solid #f0ad4e; padding: 6px 10px; margin: 4px 0 }
code { background: #eef; padding: 1px 4px }
progress { width: 140px }
"""


def _rows(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(
    *,
    version: int,
    balance: dict[str, Any],
    pods: Sequence[PodRecord],
    pins: Sequence[dict[str, Any]],
    migrations: Sequence[dict[str, Any]],
    plans: Sequence[dict[str, Any]],
) -> str:
    now = time.time()
    policy = balance["policy"]
    pod_rows = [
        [
            escape(p.name),
            escape(p.state),
            "online" if p.online else "<b>offline</b>",
            "never" if p.last_heartbeat is None else f"{now - p.last_heartbeat:.0f}s ago",
            f"{balance['loads'].get(p.name, 0.0):.1f}",
            f"{(p.load or {}).get('db_bytes', 0) / 1e6:.1f} MB",
        ]
        for p in pods
    ]
    advice = "".join(f'<div class="advice">{escape(a)}</div>' for a in balance["advice"])
    migration_rows = [
        [
            str(m["id"]),
            escape(str(m["guild_id"])),
            f"{escape(m['source'])} &rarr; {escape(m['target'])}",
            escape(m["state"]),
            f'<progress max="{len(STEPS) - 1}" value="{STEPS.index(m["state"]) if m["state"] in STEPS else 0}"></progress>',
            escape(str(m.get("plan_id") or "")),
        ]
        for m in migrations
    ]
    plan_rows = [
        [
            escape(p["id"]),
            escape(p["actor"]),
            str(len(p["plan"].get("moves", []))),
            f"{p['plan'].get('peak_to_mean_before', 0):.2f}x &rarr; {p['plan'].get('peak_to_mean_after', 0):.2f}x",
            escape(p["plan"].get("reason", "")),
            f"<code>modbot-ring apply {escape(p['id'])}</code>",
        ]
        for p in plans
    ]
    pin_rows = [
        [escape(str(p["guild_id"])), escape(p["pod"]), escape(p["kind"]), escape(p["reason"])]
        for p in pins[:100]
    ]
    hot_rows = [
        [escape(h["guild_id"]), escape(h["pod"]), f"{h['load']:.2f}", f"{h['share']:.2f}x"]
        for h in balance["hot"]
    ]
    imbalance = balance["imbalance"]
    headline = (
        "no load reported yet"
        if imbalance is None
        else f"imbalance {imbalance:.2f} (peak/mean), skew {balance['skew']:.2f}, "
        f"total {balance['total']:.1f} events/s"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modbot-ring ops</title>
<meta http-equiv="refresh" content="15"><style>{STYLE}</style></head><body>
<h1>modbot-ring operations &middot; table v{version}</h1>
<p>{escape(headline)}<br>
balancer: <b>{escape(balance["mode"])}</b>{" (leader)" if balance["leader"] else ""} &middot;
{escape(balance["decision"])}</p>
{advice}
<h2>Pods</h2>
{load_bars(balance["loads"], balance["fair"], threshold=policy["threshold"])}
{_rows(["pod", "state", "health", "heartbeat", "events/s", "SQLite"], pod_rows, "no pods registered")}
<h2>Imbalance over time</h2>
{skew_line(balance["history"], threshold=policy["threshold"], clear=policy["clear"], now=now)}
<h2>Waiting plans</h2>
{_rows(["plan", "by", "moves", "peak/fair", "why", "apply"], plan_rows, "no plan is waiting")}
<h2>Running migrations</h2>
{_rows(["id", "guild", "move", "state", "progress", "plan"], migration_rows, "no migration is running")}
<h2>Hottest guilds</h2>
{_rows(["guild", "pod", "events/s", "of a fair share"], hot_rows, "no per-guild load reported")}
<h2>Pins</h2>
{_rows(["guild", "pod", "kind", "reason"], pin_rows, "no pins")}
<p class="muted">policy: threshold {policy["threshold"]}, clear {policy["clear"]}, hold-down
{policy["hold_down"]:g}s, cool-down {policy["cooldown"]:g}s, plans aim at &plusmn;{policy["target_epsilon"]:.0%},
move budget {policy["move_budget_per_hour"]}/h. Refreshes every 15 s.</p>
</body></html>"""
