"""Registering mod-bot's commands with Discord: ``modbot-ring commands sync`` and pod start.

Discord shows a command only once the application registered it (``PUT
/applications/{app}/commands``, or per guild), and sends interactions only for those.
The definitions come from the pods' own discord.py tree (:func:`command_definitions`,
built offline: no login). Discord answers a definition with fields it fills in
(``id``, ``version``, ``default_member_permissions`` as a string, ``integration_types``
``[0]``, ``required: false`` left out...), so both sides are normalized
(:func:`normalize`) before they are compared, and the list is overwritten only when they
differ: re-running changes nothing, and every pod may run it at start (as mod-bot did).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
from discord import app_commands

log = logging.getLogger("modbot.gateway.commands")

DISCORD_API = "https://discord.com/api/v10"


class SyncError(Exception):
    """Discord refused or could not be reached: one line for the operator."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def tree_payload(
    tree: app_commands.CommandTree[Any], guild_id: int | None = None
) -> list[dict[str, Any]]:
    """What ``tree.sync()`` would PUT, without a login.

    discord.py's one private call here (``_get_all_commands``, as ``tree.sync`` uses it;
    gateway_app/discordpy.py keeps the others): ``get_commands`` would leave out the
    context menus."""
    guild = discord.Object(guild_id) if guild_id is not None else None
    return [command.to_dict(tree) for command in tree._get_all_commands(guild=guild)]


def command_definitions(guild_id: int | None = None) -> list[dict[str, Any]]:
    """The pods' command definitions: the tree of :func:`gateway_app.bot.build_commands`.

    For one guild (``--guild``): the same commands, registered in that guild only (Discord
    shows guild commands at once: a way to try a release in a test guild first)."""
    from .bot import build_commands

    intents = discord.Intents.none()
    intents.guilds = True  # nothing connects: this only silences discord.py's warning
    tree = build_commands(discord.Client(intents=intents), None)  # type: ignore[arg-type]
    if guild_id is not None:
        tree.copy_global_to(guild=discord.Object(guild_id))
    return tree_payload(tree, guild_id)


def _option(option: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": option.get("type"),
        "name": option.get("name"),
        "description": option.get("description") or "",
        "required": bool(option.get("required", False)),
        "choices": option.get("choices") or [],
        "channel_types": sorted(option.get("channel_types") or []),
        "min_value": option.get("min_value"),
        "max_value": option.get("max_value"),
        "min_length": option.get("min_length"),
        "max_length": option.get("max_length"),
        "autocomplete": bool(option.get("autocomplete", False)),
        "options": [_option(o) for o in option.get("options") or []],
        "name_localizations": option.get("name_localizations") or None,
        "description_localizations": option.get("description_localizations") or None,
    }


def normalize(command: dict[str, Any]) -> dict[str, Any]:
    """The fields that define a command, with Discord's defaults filled in on both sides."""
    perms = command.get("default_member_permissions")
    contexts = command.get("contexts")
    return {
        "type": command.get("type") or 1,
        "name": command["name"],
        "description": command.get("description") or "",
        "options": [_option(o) for o in command.get("options") or []],
        "default_member_permissions": None if perms is None else str(perms),
        "nsfw": bool(command.get("nsfw", False)),
        "contexts": None if contexts is None else sorted(contexts),
        "integration_types": sorted(command.get("integration_types") or [0]),
        "name_localizations": command.get("name_localizations") or None,
        "description_localizations": command.get("description_localizations") or None,
    }


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)  # command -> fields

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def lines(self) -> list[str]:
        return [
            *(f"+ {n}" for n in self.added),
            *(f"- {n}" for n in self.removed),
            *(f"~ {n} ({', '.join(f)})" for n, f in self.changed.items()),
        ]


def _label(c: dict[str, Any]) -> str:
    kind = {1: "/", 2: "user: ", 3: "message: "}.get(c["type"], "")
    return f"{kind}{c['name']}"


def diff(local: list[dict[str, Any]], remote: list[dict[str, Any]]) -> Diff:
    mine = {(c["type"], c["name"]): c for c in map(normalize, local)}
    theirs = {(c["type"], c["name"]): c for c in map(normalize, remote)}
    out = Diff()
    out.added = [_label(mine[k]) for k in mine if k not in theirs]
    out.removed = [_label(theirs[k]) for k in theirs if k not in mine]
    for key in mine.keys() & theirs.keys():
        fields = [f for f in mine[key] if mine[key][f] != theirs[key][f]]
        if fields:
            out.changed[_label(mine[key])] = fields
    return out


@dataclass
class SyncResult:
    scope: str
    diff: Diff
    put: bool
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "added": self.diff.added,
            "removed": self.diff.removed,
            "changed": self.diff.changed,
            "put": self.put,
            "dry_run": self.dry_run,
        }

    def human(self) -> str:
        if self.diff.empty:
            return f"{self.scope}: commands are up to date (nothing sent)"
        verb = "would overwrite" if self.dry_run else "overwrote"
        return "\n".join([f"{self.scope}: {verb} the command list:", *self.diff.lines()])


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> Any:
    headers = {"Authorization": f"Bot {token}", "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    try:
        async with http.request(method, url, data=data, headers=headers) as r:
            text = await r.text()
            if r.status < 300:
                return json.loads(text) if text else None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SyncError(f"cannot reach Discord at {url}: {type(exc).__name__}: {exc}", 4) from None
    try:
        message = json.loads(text).get("message", text)
    except (ValueError, AttributeError):
        message = text[:200]
    if r.status == 401:
        raise SyncError(f"Discord refused the bot token (HTTP 401: {message})", 4)
    raise SyncError(f"Discord answered HTTP {r.status} to {method} {url}: {message}", 1)


async def sync(
    api_url: str,
    token: str,
    *,
    guild_id: int | None = None,
    dry_run: bool = False,
    definitions: list[dict[str, Any]] | None = None,
) -> SyncResult:
    """GET what Discord has, compare, PUT the whole list only if it differs."""
    if not token:
        raise SyncError("a bot token is required (--discord-token / DISCORD_TOKEN)", 2)
    local = command_definitions(guild_id) if definitions is None else definitions
    base = api_url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        app = await _call(http, "GET", f"{base}/oauth2/applications/@me", token)
        app_id = str(app["id"])
        path = f"{base}/applications/{app_id}" + (
            f"/guilds/{guild_id}/commands" if guild_id is not None else "/commands"
        )
        remote = await _call(http, "GET", path, token)
        changes = diff(local, remote if isinstance(remote, list) else [])
        scope = f"guild {guild_id}" if guild_id is not None else "global"
        if changes.empty or dry_run:
            return SyncResult(scope, changes, False, dry_run)
        await _call(http, "PUT", path, token, local)
        return SyncResult(scope, changes, True, dry_run)


async def sync_at_start(api_url: str, token: str) -> None:
    """A pod's start: register the global commands if Discord's differ (logged, not fatal:
    a pod serves its guilds' events even if Discord refuses the list)."""
    try:
        result = await sync(api_url, token)
    except SyncError as exc:
        log.warning("command sync at start failed: %s", exc)
        return
    log.info("%s", result.human().replace("\n", "; "))
