"""Request parsing every handler shares (path parameters, headers, strict JSON bodies),
and the replies that carry a table version."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web

from modbot_ring import InvalidGuildId, parse_guild_id

from ..errors import Invalid
from ..publisher import Snapshot
from ..schema import load
from .context import PUBLISHER_KEY

MAX_BODY = 1 << 20
MAX_INT = 2**63 - 1  # ids, versions and cursors are signed 64-bit in every store
ACTOR_HEADER = "X-Modbot-Actor"
T = TypeVar("T")


def guild(request: web.Request) -> int:
    """The ``{guild_id}`` path parameter."""
    try:
        return parse_guild_id(request.match_info["guild_id"])
    except InvalidGuildId as exc:
        raise Invalid(str(exc)) from None


def non_negative_int(value: object, name: str) -> int:
    """A JSON int or a decimal ASCII string as an int in 0 .. 2**63-1, else Invalid (400).

    ``int()`` alone accepts ``True``, ``1.5``, ``" 7"`` and non-ASCII digits, and raises
    past Python's digit limit on 5,000-digit strings (a 500); stores overflow past 2**63-1."""
    if type(value) is int:
        number = value
    elif isinstance(value, str) and 0 < len(value) <= 19 and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise Invalid(f"{name} must be a non-negative integer, got {str(value)[:40]!r}")
    if not 0 <= number <= MAX_INT:
        raise Invalid(f"{name} must be in 0 .. 2**63-1, got {str(number)[:40]}")
    return number


def int_param(request: web.Request, name: str) -> int:
    """An integer path parameter (a migration id)."""
    return non_negative_int(request.match_info[name], name)


def actor(request: web.Request) -> str:
    """Who asked (``X-Modbot-Actor``, printable, 64 characters), for the audit log."""
    actor = request.headers.get(ACTOR_HEADER, "admin").strip()
    return "".join(c for c in actor if c.isprintable())[:64] or "admin"


def expected_version(request: web.Request) -> int | None:
    """``If-Match``: the table version a compare-and-set write expects (None: any)."""
    value = request.headers.get("If-Match")
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    try:
        return non_negative_int(text, "If-Match")
    except Invalid:
        raise Invalid(f'If-Match must be a table version like "42", got {value[:40]!r}') from None


async def body(request: web.Request, model: type[T]) -> T:
    """The JSON object body as a ``model`` (``config_store/models.py``): exactly its
    required fields, maybe its optional ones, each of its type; anything else is Invalid
    (400)."""
    raw = await request.read()
    if not raw:
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            raise Invalid("request body is not valid JSON") from None
    return load(model, data)


async def snapshot(request: web.Request) -> Snapshot:
    """The routing table this replica serves (read from the store if it has none yet)."""
    publisher = request.app[PUBLISHER_KEY]
    if publisher.snapshot is None:
        await publisher.refresh()
    assert publisher.snapshot is not None
    return publisher.snapshot


def version_reply(version: int, status: int = 200, **extra: Any) -> web.Response:
    return web.json_response(
        {"version": version, **extra}, status=status, headers={"ETag": f'"{version}"'}
    )
