"""Application commands in the simulator, as Discord keeps them.

* REST: ``GET``/``PUT`` (bulk overwrite)/``POST`` (upsert one: 201 new, 200 overwritten) on
  ``/applications/{app}/commands`` and ``/applications/{app}/guilds/{guild}/commands``,
  ``GET``/``PATCH``/``DELETE`` of one command; other methods get 405. Stored with Discord's shapes: ``id`` (kept while a
  command of that name and type exists), ``application_id``, ``version`` (a new snowflake
  when the definition changes), ``default_member_permissions`` as a string, ``type``,
  ``nsfw``, ``contexts``, ``integration_types`` (Discord's default ``[0]``), options...
* Interactions: the control API builds and delivers interactions only for registered
  commands (global, or the guild's), as Discord only sends those; ``enforce = False``
  (``--allow-unregistered-commands``) turns that off for old scripts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .app import DiscordSim

NAME = re.compile(r"^[-_\w]{1,32}$")
LIMITS = {1: 100, 2: 5, 3: 5}  # per type: chat input, user, message commands
KINDS = {1: "slash", 2: "user", 3: "message"}


@dataclass
class CommandRegistry:
    application_id: int
    enforce: bool = True
    # (guild id or None for global) -> {(type, name): stored command}
    scopes: dict[int | None, dict[tuple[int, str], dict[str, Any]]] = field(default_factory=dict)

    def commands(self, guild_id: int | None) -> list[dict[str, Any]]:
        return list(self.scopes.get(guild_id, {}).values())

    def registered(self, guild_id: int | None, name: str, kind: int) -> dict[str, Any] | None:
        key = (kind, name)
        return self.scopes.get(None, {}).get(key) or self.scopes.get(guild_id, {}).get(key)


COMMANDS_KEY: web.AppKey[CommandRegistry] = web.AppKey("commands")


def registry(app: web.Application) -> CommandRegistry:
    return app[COMMANDS_KEY]


def _error(status: int, message: str, code: int = 0, errors: Any = None) -> web.Response:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors is not None:
        body["errors"] = errors
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"}
    )


def _ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
    )


class InvalidCommand(ValueError):
    pass


def _validate(item: Any) -> dict[str, Any]:
    """A command as sent -> its stored fields (without id/version), or InvalidCommand."""
    if not isinstance(item, dict):
        raise InvalidCommand("a command must be an object")
    kind = item.get("type", 1) or 1
    if kind not in KINDS:
        raise InvalidCommand(f"type must be 1, 2 or 3, got {kind!r}")
    name = item.get("name")
    if (
        not isinstance(name, str)
        or not NAME.match(name if kind == 1 else "x")
        or not 1 <= len(name) <= 32
    ):
        raise InvalidCommand(f"invalid command name {name!r}")
    if kind == 1 and name != name.lower():
        raise InvalidCommand(f"slash command names are lower case: {name!r}")
    description = item.get("description") or ""
    if kind == 1 and not 1 <= len(description) <= 100:
        raise InvalidCommand(f"{name}: a slash command needs a description of 1-100 characters")
    if kind != 1 and description:
        raise InvalidCommand(f"{name}: context menu commands have no description")
    options = item.get("options") or []
    if not isinstance(options, list) or len(options) > 25:
        raise InvalidCommand(f"{name}: options must be a list of at most 25")
    perms = item.get("default_member_permissions")
    if perms is not None:
        if type(perms) is int or (isinstance(perms, str) and perms.isdigit()):
            perms = str(int(perms))
        else:
            raise InvalidCommand(f"{name}: default_member_permissions must be a bit set")
    stored: dict[str, Any] = {
        "type": kind,
        "name": name,
        "name_localizations": item.get("name_localizations"),
        "description": description,
        "description_localizations": item.get("description_localizations"),
        "default_member_permissions": perms,
        "nsfw": bool(item.get("nsfw", False)),
        "contexts": item.get("contexts"),
        "integration_types": item.get("integration_types") or [0],
    }
    if options:
        stored["options"] = options
    return stored


def _store(
    reg: CommandRegistry, sim: DiscordSim, guild_id: int | None, items: list[Any], replace: bool
) -> list[dict[str, Any]]:
    scope = reg.scopes.get(guild_id, {})
    fresh: dict[tuple[int, str], dict[str, Any]] = {} if replace else dict(scope)
    seen: set[tuple[int, str]] = set()
    for item in items:
        body = _validate(item)
        key = (body["type"], body["name"])
        if key in seen:
            raise InvalidCommand(f"duplicate command name {body['name']!r} of type {body['type']}")
        seen.add(key)
        old = scope.get(key)
        if (
            old is not None
            and ("options" in old) == ("options" in body)
            and all(old.get(k) == v for k, v in body.items())
        ):
            fresh[key] = old  # same id and version: Discord does not count it as an update
            continue
        command = {
            "id": old["id"] if old else str(sim.world.ids.next()),
            "application_id": str(reg.application_id),
            "version": str(sim.world.ids.next()),
            **body,
        }
        if guild_id is None:
            command["dm_permission"] = bool(item.get("dm_permission", True))
        else:
            command["guild_id"] = str(guild_id)
        fresh[key] = command
    for kind, limit in LIMITS.items():
        if sum(1 for k in fresh if k[0] == kind) > limit:
            raise InvalidCommand(f"at most {limit} {KINDS[kind]} commands")
    reg.scopes[guild_id] = fresh
    return [fresh[k] for k in fresh]


def install(app: web.Application, sim: DiscordSim) -> CommandRegistry:
    """Add the command routes (before the API's catch-all) and the interaction check."""
    reg = CommandRegistry(sim.world.application_id)
    app[COMMANDS_KEY] = reg

    def scope_of(request: web.Request) -> tuple[int | None, web.Response | None]:
        if request.match_info["app_id"] != str(reg.application_id):
            return None, _error(404, "Unknown Application", 10002)
        raw = request.match_info.get("guild_id")
        if raw is None:
            return None, None
        if not raw.isdigit() or int(raw) not in sim.world.guilds:
            return None, _error(404, "Unknown Guild", 10004)
        return int(raw), None

    async def collection(request: web.Request) -> web.Response:
        body = await sim._body(request) if request.can_read_body else None
        sim.record(request, body)
        guild_id, refusal = scope_of(request)
        if refusal is not None:
            return refusal
        if request.method == "GET":
            return _ok(reg.commands(guild_id))
        replace = request.method == "PUT"
        if replace and not isinstance(body, list):
            return _error(400, "Invalid Form Body: a list of commands", 50035)
        items: list[Any] = body if isinstance(body, list) else [body]
        existed = set(reg.scopes.get(guild_id, {}))
        try:
            stored = _store(reg, sim, guild_id, items, replace)
        except InvalidCommand as exc:
            return _error(400, "Invalid Form Body", 50035, {"_errors": [{"message": str(exc)}]})
        if replace:
            return _ok(stored)
        one = _validate(body)
        key = (one["type"], one["name"])
        created = next(c for c in stored if (c["type"], c["name"]) == key)
        # Discord: 201 when no command of that name existed, 200 when it was overwritten
        return _ok(created, 200 if key in existed else 201)

    async def one(request: web.Request) -> web.Response:
        body = await sim._body(request) if request.method == "PATCH" else None
        sim.record(request, body)
        guild_id, refusal = scope_of(request)
        if refusal is not None:
            return refusal
        scope = reg.scopes.get(guild_id, {})
        key = next(
            (k for k, c in scope.items() if c["id"] == request.match_info["command_id"]), None
        )
        if key is None:
            return _error(404, "Unknown application command", 10063)
        if request.method == "DELETE":
            del scope[key]
            return web.Response(status=204)
        if request.method == "PATCH":
            return edit(guild_id, scope, key, body)
        return _ok(scope[key])

    def edit(
        guild_id: int | None,
        scope: dict[tuple[int, str], dict[str, Any]],
        key: tuple[int, str],
        body: Any,
    ) -> web.Response:
        """PATCH one command (Discord: every field optional, the type cannot change; the
        id stays, a changed definition gets a new version)."""
        if not isinstance(body, dict):
            return _error(400, "Invalid Form Body", 50035)
        current = scope[key]
        merged = {k: v for k, v in current.items() if k not in ("id", "version")}
        merged.update({k: v for k, v in body.items() if k != "type"})
        try:
            fields = _validate(merged)
        except InvalidCommand as exc:
            return _error(400, "Invalid Form Body", 50035, {"_errors": [{"message": str(exc)}]})
        new_key = (fields["type"], fields["name"])
        if new_key != key and new_key in scope:
            return _error(
                400,
                "Invalid Form Body",
                50035,
                {
                    "name": {
                        "_errors": [
                            {
                                "code": "APPLICATION_COMMAND_ALREADY_EXISTS",
                                "message": "already exists",
                            }
                        ]
                    }
                },
            )
        changed = any(current.get(k) != v for k, v in fields.items()) or ("options" in current) != (
            "options" in fields
        )
        command = {
            "id": current["id"],
            "application_id": current["application_id"],
            "version": str(sim.world.ids.next()) if changed else current["version"],
            **fields,
        }
        if guild_id is None:
            command["dm_permission"] = bool(merged.get("dm_permission", True))
        else:
            command["guild_id"] = str(guild_id)
        rebuilt = {
            (new_key if k == key else k): (command if k == key else c) for k, c in scope.items()
        }
        scope.clear()
        scope.update(rebuilt)
        return _ok(command)

    async def control(request: web.Request) -> web.Response:
        if request.method == "POST":
            body = await request.json()
            reg.enforce = bool(body.get("enforce", True))
        return _ok(
            {
                "enforce": reg.enforce,
                "scopes": {
                    "global" if g is None else str(g): list(c.values())
                    for g, c in reg.scopes.items()
                },
            }
        )

    @web.middleware
    async def only_registered(request: web.Request, handler: Any) -> web.StreamResponse:
        """Discord sends interactions only for commands it has: so does the simulator."""
        if request.method == "POST" and request.path == "/control/interactions" and reg.enforce:
            try:
                body = await request.json()  # cached: the handler reads it again
                name, kind = str(body["command"]), int(body.get("kind", 1))
                guild_id = int(body["guild_id"]) if body.get("guild_id") else None
            except (ValueError, KeyError, TypeError, AttributeError):
                return _ok({"error": "an interaction needs a command name and a guild_id"}, 400)
            if reg.registered(guild_id, name, kind) is None:
                return _ok(
                    {
                        "error": f"command {name!r} ({KINDS.get(kind, kind)}) is not registered for"
                        f" application {reg.application_id} (globally or in guild {guild_id}):"
                        " Discord would never send it; run `modbot-ring commands sync`"
                    },
                    404,
                )
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(only_registered)
    api = "/api/v10/applications/{app_id}"
    r = app.router
    for base in (f"{api}/commands", f"{api}/guilds/{{guild_id}}/commands"):
        # exactly the methods Discord documents; the others get 405 (app.py's catch-all)
        for method in ("GET", "PUT", "POST"):
            r.add_route(method, base, collection)
        for method in ("GET", "PATCH", "DELETE"):
            r.add_route(method, f"{base}/{{command_id}}", one)
    r.add_route("GET", "/control/commands", control)
    r.add_route("POST", "/control/commands", control)
    return reg
