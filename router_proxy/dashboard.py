"""The guild dashboard at the proxy: relayed from the pod that owns the guild, never
rendered here.

The proxy knows nothing of a guild's data: the owning pod renders the page (it alone
knows its data's shape and its Discord cache) at ``GET /data/guilds/<id>/dashboard``
and the proxy relays its bytes, after checking they are what a page may be (200,
``text/html`` in UTF-8, not encoded, at most ``MAX_PAGE_BYTES``), with its own
security headers: the pod's headers are not passed on. Anything else gets the proxy's
own page (503 when the pod cannot answer, 502 when its answer is not a page), which
names the request id to quote when reporting it.
"""

from __future__ import annotations

from html import escape

MAX_PAGE_BYTES = 2 * 1024 * 1024  # a dashboard is ~20 KiB; a pod's runaway answer is not relayed
MAX_ERROR_BYTES = 64 * 1024  # a refusal's JSON body
# No script runs on these pages (they have none; a name that slipped past escaping
# still could not run one), no one frames them, and nothing is fetched but the page.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # the page holds the session's CSRF token
}

_STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:860px;"
    "color:#1d232a;padding:0 1rem} h1{font-size:1.4rem} .id{font-family:ui-monospace,monospace}"
)


class BadPage(Exception):
    """The pod answered, but not with a page the proxy relays."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def pod_target(guild_id: int) -> str:
    """The owning pod's dashboard route (what the identity is signed for)."""
    return f"/data/guilds/{int(guild_id)}/dashboard"


def render_unavailable(
    guild_id: int, pod: str | None, why: str, retry_after: int, request_id: str | None = None
) -> str:
    rid = (
        f'<p>Request id <span class="id">{escape(request_id)}</span> (quote it when reporting this).</p>'
        if request_id
        else ""
    )
    body = (
        "<h1>This dashboard is briefly unavailable</h1>"
        f"<p>The pod that holds guild {int(guild_id)}'s data"
        + (f" (<b>{escape(pod)}</b>)" if pod else "")
        + f" cannot show it right now: {escape(why)}.</p>"
        f"<p>Nothing is lost. Try again in about {int(retry_after)} seconds.</p>{rid}"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Briefly unavailable - mod-bot</title>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
