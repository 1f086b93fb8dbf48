"""Every use of discord.py's non-public surface, in one place.

* :func:`point_at` sends discord.py's REST and gateway traffic to another Discord (the
  local simulator): ``Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY`` are read on
  every request and connection.
* :func:`run_forwarded_interaction` feeds an interaction that arrived over HTTP (verified
  and forwarded by the proxy) to discord.py's normal command handling, and captures the
  first response discord.py would have POSTed to Discord's callback endpoint, so the pod
  can return it as the HTTP answer within Discord's 3-second budget. If the command is
  slower than the deadline, the pod answers "deferred" instead and the late response is
  sent as an edit of the original message: the user always sees the real answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import discord
import yarl
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

__all__ = ["DEFERRED_EPHEMERAL", "point_at", "run_forwarded_interaction"]

DEFERRED_EPHEMERAL: dict[str, Any] = {"type": 5, "data": {"flags": 64}}


def point_at(api_url: str, gateway_url: str) -> None:
    """Use this Discord (``.../api/v10`` and ``ws://.../gw``) for REST and the gateway."""
    discord.VoiceClient.warn_dave = False  # mod-bot has no voice features: no warning at start
    discord.http.Route.BASE = api_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class _CapturingAdapter(AsyncWebhookAdapter):
    """Answers discord.py's interaction callback locally instead of over REST."""

    def __init__(self, application_id: int) -> None:
        super().__init__()
        self.application_id = application_id
        self.first: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.too_late = False

    async def create_interaction_response(  # type: ignore[override]
        self,
        interaction_id: int,
        token: str,
        *,
        session: aiohttp.ClientSession,
        proxy: str | None = None,
        proxy_auth: aiohttp.BasicAuth | None = None,
        params: Any,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = dict(params.payload or {})
        kind = payload.get("type", 4)
        flags = (payload.get("data") or {}).get("flags", 0)
        if not self.too_late and not self.first.done():
            self.first.set_result(payload)
        elif kind in (4, 7):  # the pod already answered "deferred": show the real answer
            await self.edit_webhook_message(
                self.application_id,
                token,
                "@original",
                session=session,
                proxy=proxy,
                proxy_auth=proxy_auth,
                payload=payload.get("data") or {},
            )
        return {
            "interaction": {
                "id": str(interaction_id),
                "type": 2,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(flags & 64),
            },
            "resource": {"type": kind},
        }


async def run_forwarded_interaction(
    client: discord.Client,
    payload: dict[str, Any],
    deadline: float,
    *,
    already_deferred: bool = False,
) -> dict[str, Any]:
    """Dispatch ``payload`` to ``client``'s command tree; return the response body.

    Returns within ``deadline`` seconds: the command's own first response, or a deferred
    ephemeral response when the command is slower (its answer then follows as an edit).
    ``already_deferred``: Discord was already told "deferred" (by the proxy), so every
    answer becomes an edit and this returns at once.
    """
    if payload.get("type") == 1:
        return {"type": 1}
    assert client.application_id is not None, "log the client in first"
    adapter = _CapturingAdapter(client.application_id)
    adapter.too_late = already_deferred
    token = async_context.set(adapter)
    try:
        # The command task is created here and inherits the adapter through the context.
        client._connection.parse_interaction_create(payload)  # type: ignore[arg-type]
    finally:
        async_context.reset(token)
    if already_deferred:
        return DEFERRED_EPHEMERAL
    try:
        return await asyncio.wait_for(asyncio.shield(adapter.first), deadline)
    except TimeoutError:
        adapter.too_late = True
        if adapter.first.done():  # answered in the same instant
            with contextlib.suppress(Exception):
                return adapter.first.result()
        return DEFERRED_EPHEMERAL
