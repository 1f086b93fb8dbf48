"""The audit log: every attempted change, its actor and outcome, newest first."""

from __future__ import annotations

from aiohttp import web

from .auth import role
from .context import STORE_KEY
from .parsing import non_negative_int


@role("read")
async def get_audit(request: web.Request) -> web.Response:
    limit = max(1, min(non_negative_int(request.query.get("limit", "50"), "limit"), 1000))
    before = (
        non_negative_int(request.query["before"], "before") if "before" in request.query else None
    )
    entries = await request.app[STORE_KEY].audit(limit, before)
    return web.json_response({"entries": [e.to_json() for e in entries]})
