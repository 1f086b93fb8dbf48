"""What operators open: the operations page, the balancer's state, the OpenAPI document."""

from __future__ import annotations

import base64

from aiohttp import web

from modbot_runtime.auth import same_token
from modbot_runtime.observability import json_error

from ..errors import StoreError
from ..names import guild_names
from ..openapi import OPENAPI
from ..ops_page import PLAN_PICTURES
from ..ops_page import render as render_ops
from ..ops_page import render_unavailable as render_ops_unavailable
from .auth import role
from .context import BALANCER_KEY, MIGRATOR_KEY, PUBLISHER_KEY, SETTINGS_KEY, STORE_KEY


@role("read")
async def get_balance(request: web.Request) -> web.Response:
    return web.json_response(request.app[BALANCER_KEY].status())


def _admin_credentials(request: web.Request) -> bool:
    """Bearer admin token, or HTTP Basic with the admin token as the password (so a
    browser can open the page: it prompts for Basic credentials on a 401)."""
    admin = request.app[SETTINGS_KEY]["admin_token"]
    header = request.headers.get("Authorization", "")
    token = ""
    if header.startswith("Bearer "):
        token = header[7:]
    elif header.startswith("Basic "):
        try:
            token = base64.b64decode(header[6:], validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            token = ""
    return same_token(token, admin)


async def ops_page(request: web.Request) -> web.Response:
    if not _admin_credentials(request):
        return json_error(
            401,
            "the operations page needs the admin token (Bearer, or Basic with it as the password)",
            **{"WWW-Authenticate": 'Basic realm="modbot-ring ops", charset="UTF-8"'},
        )
    headers = {"Cache-Control": "no-store"}
    store = request.app[STORE_KEY]
    migrator = request.app[MIGRATOR_KEY]
    try:  # an operator's browser gets a page that says what is wrong, not JSON or a 500
        publisher = request.app[PUBLISHER_KEY]
        snap = publisher.snapshot or await publisher.refresh()
        pods = await store.pods()
        pins = await store.pins()
        migrations = await migrator.migrations.list(open_only=True)
        plans = await migrator.migrations.plans_in_state(("proposed",))
    except StoreError as exc:
        html = render_ops_unavailable(str(exc))
        return web.Response(text=html, status=503, content_type="text/html", headers=headers)
    balance = request.app[BALANCER_KEY].status()
    shown = [
        *(h["guild_id"] for h in balance["hot"]),
        *(p.guild_id for p in pins[:100]),
        *(m.guild_id for m in migrations if m.guild_id is not None),
        *(
            m["id"]
            for p in plans[:PLAN_PICTURES]
            for m in p.plan.get("moves", [])[:20]
            if m.get("kind") == "guild"
        ),
    ]
    names = await guild_names(pods, shown, migrator.migration_token)
    html = render_ops(
        version=None if snap is None else snap.version,
        balance=balance,
        pods=pods,
        pins=[p.to_json() for p in pins],
        migrations=[m.to_json() for m in migrations],
        plans=[p.to_json() for p in plans],
        names=names.names,
        names_note=names.note(),
    )
    return web.Response(text=html, content_type="text/html", headers=headers)


async def openapi(_: web.Request) -> web.Response:
    return web.json_response(OPENAPI)
