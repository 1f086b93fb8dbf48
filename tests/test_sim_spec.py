"""The Discord simulator answers as Discord does: every REST route it serves is called,
and every answer is validated against the schemas generated from Discord's published
OpenAPI description (npm ``discord-api-spec``, built from discord/discord-api-spec, API v10;
``tests/spec``). Code that works against the simulator must not break on Discord.

The route table below names, for each (method, route) the simulator registers, Discord's
schema for its answer (the mapping of discord/discord-api-spec's ``specs/openapi.json``).
A route the simulator serves without an entry here fails the test, and so does a route
registered for every method (``*``): Discord serves each path with the methods it
documents only, and answers the others 405 ``{"message": "405: Method Not Allowed",
"code": 0}``. Every error answer must have Discord's error shape ``{"message", "code"}``."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from conftest import AppServer, free_port
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from discord_sim.server import RunningSim, start_sim

SPEC_DIR = Path(__file__).resolve().parent / "spec"
API = "/api/v10"
CMDS = f"{API}/applications/{{app_id}}/commands"
GUILD_CMDS = f"{API}/applications/{{app_id}}/guilds/{{guild_id}}/commands"
WEBHOOK = f"{API}/webhooks/{{app_id}}/{{token}}"
WEBHOOK_MESSAGE = f"{WEBHOOK}/messages/{{message_id}}"
TOKEN = f"{API}/oauth2/token"

# POST /oauth2/token is not in Discord's OpenAPI description. Its answer is checked against
# the shape Discord documents at
# https://discord.com/developers/docs/topics/oauth2#authorization-code-grant-access-token-response
# (access_token, token_type "Bearer", expires_in seconds, refresh_token, scope space-separated).
OAUTH2_TOKEN_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "refresh_token", "scope"],
    "properties": {
        "access_token": {"type": "string", "minLength": 1},
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer", "minimum": 1},
        "refresh_token": {"type": "string", "minLength": 1},
        "scope": {"type": "string", "pattern": r"^[a-z0-9._]+( [a-z0-9._]+)*$"},
    },
}
# Discord's JSON error body (https://discord.com/developers/docs/reference#error-messages).
DISCORD_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["message", "code"],
    "properties": {
        "message": {"type": "string", "minLength": 1},
        "code": {"type": "integer"},
        "errors": {"type": "object"},
    },
}

# (method, route as registered) -> (schema name, is a list); None: no body (204)
ROUTES: dict[tuple[str, str], tuple[str | None, bool]] = {
    ("GET", f"{API}/users/@me"): ("UserPIIResponse", False),
    ("GET", f"{API}/oauth2/applications/@me"): ("PrivateApplicationResponse", False),
    ("GET", f"{API}/gateway/bot"): ("GatewayBotResponse", False),
    ("PATCH", f"{API}/applications/@me"): ("PrivateApplicationResponse", False),
    ("POST", f"{API}/channels/{{channel_id}}/messages"): ("MessageResponse", False),
    ("POST", f"{API}/interactions/{{interaction_id}}/{{token}}/callback"): (
        "InteractionCallbackResponse",
        False,
    ),
    ("GET", WEBHOOK_MESSAGE): ("MessageResponse", False),
    ("PATCH", WEBHOOK_MESSAGE): ("MessageResponse", False),
    ("DELETE", WEBHOOK_MESSAGE): (None, False),
    ("POST", WEBHOOK): ("MessageResponse", False),
    ("GET", CMDS): ("ApplicationCommandResponse", True),
    ("PUT", CMDS): ("ApplicationCommandResponse", True),
    ("POST", CMDS): ("ApplicationCommandResponse", False),
    ("GET", f"{CMDS}/{{command_id}}"): ("ApplicationCommandResponse", False),
    ("PATCH", f"{CMDS}/{{command_id}}"): ("ApplicationCommandResponse", False),
    ("DELETE", f"{CMDS}/{{command_id}}"): (None, False),
    ("GET", GUILD_CMDS): ("ApplicationCommandResponse", True),
    ("PUT", GUILD_CMDS): ("ApplicationCommandResponse", True),
    ("POST", GUILD_CMDS): ("ApplicationCommandResponse", False),
    ("GET", f"{GUILD_CMDS}/{{command_id}}"): ("ApplicationCommandResponse", False),
    ("PATCH", f"{GUILD_CMDS}/{{command_id}}"): ("ApplicationCommandResponse", False),
    ("DELETE", f"{GUILD_CMDS}/{{command_id}}"): (None, False),
    ("POST", TOKEN): ("json-schema:OAUTH2_TOKEN_RESPONSE", False),
    ("GET", f"{API}/users/@me/guilds"): ("MyGuildResponse", True),
    ("GET", f"{API}/users/@me/guilds/{{guild_id}}/member"): ("PrivateGuildMemberResponse", False),
    # moderation (discord_sim/moderation.py): edit a message, ban, kick, timeout
    ("PATCH", f"{API}/channels/{{channel_id}}/messages/{{message_id}}"): ("MessageResponse", False),
    ("GET", f"{API}/channels/{{channel_id}}/messages/{{message_id}}"): ("MessageResponse", False),
    ("POST", f"{API}/channels/{{channel_id}}/threads"): ("CreatedThreadResponse", False),
    ("PUT", f"{API}/channels/{{channel_id}}/thread-members/{{user_id}}"): (None, False),
    ("PATCH", f"{API}/channels/{{channel_id}}"): ("ThreadResponse", False),
    ("PUT", f"{API}/guilds/{{guild_id}}/bans/{{user_id}}"): (None, False),
    ("DELETE", f"{API}/guilds/{{guild_id}}/members/{{user_id}}"): (None, False),
    ("PATCH", f"{API}/guilds/{{guild_id}}/members/{{user_id}}"): ("GuildMemberResponse", False),
}


def validate(documents: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Errors per document id, from the schemas (one node process for all of them)."""
    node = shutil.which("node")
    assert node, "node is needed for the spec check (CI installs it with tests/spec)"
    assert (SPEC_DIR / "node_modules" / "discord-api-spec").exists(), (
        "run `npm ci --prefix tests/spec` (.ci/run does)"
    )
    out = subprocess.run(
        [node, str(SPEC_DIR / "validate.mjs")],
        input="".join(json.dumps(d) + "\n" for d in documents),
        capture_output=True,
        text=True,
        cwd=SPEC_DIR,
        timeout=120,
        check=True,
    ).stdout
    results = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(results) == len(documents), "the validator skipped documents"
    return {r["id"]: r["errors"] for r in results if not r["ok"]}


def json_schema_errors(schema: dict[str, Any], body: Any) -> list[str]:
    return [
        f"{'.'.join(map(str, e.path))}: {e.message}"
        for e in jsonschema.Draft202012Validator(schema).iter_errors(body)
    ]


def served_routes(
    sim: RunningSim,
) -> tuple[set[tuple[str, str]], list[str], set[tuple[str, str]]]:
    """Every (method, path template) the simulator answers under the REST API, the paths
    registered for any method (``*``), which Discord never does, and the unversioned
    ``/api/...`` aliases (Discord serves those too), named by their ``/api/v10`` route."""
    out, wildcard, aliases = set(), [], set()
    for route in sim.runner.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or ""
        if not path.startswith("/api/") or "{tail" in path:  # the catch-all 404 is no route
            continue
        if route.method == "*":
            wildcard.append(path)
        elif route.method == "HEAD":
            continue
        elif path.startswith(f"{API}/"):
            out.add((route.method, path))
        else:
            aliases.add((route.method, API + path.removeprefix("/api")))
    return out, wildcard, aliases


@contextlib.asynccontextmanager
async def interactions_endpoint(
    sim: RunningSim, verifies: Any, status: int = 200
) -> AsyncIterator[tuple[str, list[bool]]]:
    """An app's Interactions Endpoint URL on loopback: answers PING with ``{"type": 1}``
    and, while ``verifies()``, a bad signature with 401 (as Discord's docs require).
    Yields its URL and one entry per request (was the signature good?)."""
    key = VerifyKey(bytes.fromhex(sim.sim.signer.public_key_hex))
    seen: list[bool] = []

    async def endpoint(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            key.verify(
                request.headers["X-Signature-Timestamp"].encode() + raw,
                bytes.fromhex(request.headers["X-Signature-Ed25519"]),
            )
            seen.append(True)
        except (BadSignatureError, KeyError, ValueError):
            seen.append(False)
            if verifies():
                return web.json_response({"error": "invalid request signature"}, status=401)
        if status != 200:
            return web.json_response({"error": "down"}, status=status)
        return web.Response(text='{"type": 1}', content_type="application/json")

    async with AppServer({("POST", "/interactions"): endpoint}) as url:
        yield f"{url}/interactions", seen


async def test_interactions_endpoint_url_is_checked_when_saved(sim: RunningSim) -> None:
    """PATCH /applications/@me runs Discord's save-time checks (a signed PING must get
    {"type": 1}, a bad signature 401): happy, then a careless app (accepts anything), a
    URL off loopback (never called), a malformed body, and an endpoint that is down."""
    bot = {"Authorization": f"Bot {sim.sim.bot_token}"}
    me = f"{API}/applications/@me"
    async with aiohttp.ClientSession(sim.url) as http:

        async def patch(body: Any, status: int) -> Any:
            async with http.patch(me, json=body, headers=bot) as r:
                assert r.status == status, await r.text()
                assert r.headers["Content-Type"] == "application/json"
                return await r.json()

        async with interactions_endpoint(sim, lambda: True) as (good, seen):
            assert (await patch({"interactions_endpoint_url": good}, 200))[
                "interactions_endpoint_url"
            ] == good
            assert seen == [True, False]  # a signed PING, then a badly signed one
            guild = next(iter(sim.sim.world.guilds))
            # interactions now go to the saved URL (a cut-over switches traffic with it)
            async with http.post(
                "/control/interactions", json={"guild_id": str(guild), "command": "modreport"}
            ) as r:
                assert r.status == 200 and (await r.json())["status"] == 200
            assert seen == [True, False, True]
        async with interactions_endpoint(sim, lambda: False) as (careless, _):
            refused = await patch({"interactions_endpoint_url": careless}, 400)
        assert refused["code"] == 50035
        assert refused["errors"]["interactions_endpoint_url"]["_errors"][0]["code"] == (
            "APPLICATION_INTERACTIONS_ENDPOINT_URL_INVALID"
        )
        calls = len(sim.sim.calls)
        await patch({"interactions_endpoint_url": "https://example.com/interactions"}, 400)
        await patch({"interactions_endpoint_url": 5}, 400)
        await patch([1], 400)
        async with http.patch(me, json={"interactions_endpoint_url": good}) as r:
            assert r.status == 401  # no bot token
        async with interactions_endpoint(sim, lambda: True, status=503) as (down, _):
            await patch({"interactions_endpoint_url": down}, 400)
        dead = f"http://127.0.0.1:{free_port()}/interactions"
        await patch({"interactions_endpoint_url": dead}, 400)
        assert len(sim.sim.calls) > calls
        # nothing half-applied: the last good URL stands until cleared
        async with http.get(f"{API}/oauth2/applications/@me", headers=bot) as r:
            assert (await r.json())["interactions_endpoint_url"] == good
        assert (await patch({"interactions_endpoint_url": None}, 200))[
            "interactions_endpoint_url"
        ] is None
        async with http.post(
            "/control/interactions", json={"guild_id": str(guild), "command": "modreport"}
        ) as r:
            assert r.status == 400  # nowhere to send it


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start_sim(seed_guilds=2, require_commands=False)
    try:
        yield running
    finally:
        await running.stop()


def test_the_validator_rejects_what_discord_would_not_send() -> None:
    """The harness itself: a user without Discord's required fields fails, a token answer
    without a refresh token fails, an error without a code fails."""
    errors = validate([{"id": "bad", "schema": "UserResponse", "body": {"id": "1"}}])
    assert errors["bad"], "a bare {'id'} must not pass as a user"
    assert json_schema_errors(OAUTH2_TOKEN_RESPONSE, {"access_token": "x", "token_type": "Bearer"})
    assert json_schema_errors(DISCORD_ERROR, {"error": "nope"})
    # timestamps: RFC 3339 with an offset (what Discord sends) passes, anything else fails
    stamps = [
        {"id": f"t{i}", "schema": "PrivateGuildMemberResponse", "body": {"joined_at": t}}
        for i, t in enumerate(("2024-01-01T00:00:00.000000+00:00", "yesterday"))
    ]
    errors = validate(stamps)
    assert not [e for e in errors["t0"] if e.startswith("joined_at")], errors["t0"]
    assert [e for e in errors["t1"] if e.startswith("joined_at")], errors["t1"]


class Walk:
    """Calls routes, checks statuses, and collects 2xx bodies to validate and error bodies."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.documents: list[dict[str, Any]] = []
        self.local_errors: dict[str, list[str]] = {}
        self.called: set[tuple[str, str]] = set()
        self.error_bodies: list[tuple[str, int, Any]] = []

    async def call(self, method: str, route: str, path: str, status: int = 200, **kw: Any) -> Any:
        schema, is_list = ROUTES[(method, route)]
        async with self.http.request(method, path, allow_redirects=False, **kw) as r:
            text = await r.text()
            assert r.status == status, (method, path, r.status, text)
            if r.status != 204:
                assert r.headers["Content-Type"] == "application/json", (method, path)
            body = json.loads(text) if r.status != 204 else None
        if r.status == 204:
            assert text == "", (method, path, "a 204 has no body")
        self.called.add((method, route))
        doc_id = f"{method} {route} -> {status} #{len(self.documents)}"
        if schema is not None and status != 204:
            if schema.startswith("json-schema:"):
                errs = json_schema_errors(globals()[schema.split(":", 1)[1]], body)
                if errs:
                    self.local_errors[doc_id] = errs
            else:
                self.documents.append(
                    {"id": doc_id, "schema": schema, "body": body, "list": is_list}
                )
        return body

    async def error(self, method: str, path: str, status: int, **kw: Any) -> Any:
        async with self.http.request(method, path, allow_redirects=False, **kw) as r:
            text = await r.text()
            assert r.status == status, (method, path, r.status, text)
            assert r.headers["Content-Type"] == "application/json", (method, path, text)
            body = json.loads(text)
        self.error_bodies.append((f"{method} {path}", status, body))
        return body


async def test_every_rest_answer_validates_against_discords_openapi(sim: RunningSim) -> None:
    served, wildcard, aliases = served_routes(sim)
    assert not wildcard, f"routes registered for every method (Discord never does): {wildcard}"
    unmapped = sorted((served | aliases) - set(ROUTES))
    assert not unmapped, f"routes the simulator serves with no schema here: {unmapped}"
    bot = {"Authorization": f"Bot {sim.sim.bot_token}"}
    guild = next(iter(sim.sim.world.guilds.values()))
    channel = next(iter(guild.channels))
    app_id = sim.sim.world.application_id
    async with aiohttp.ClientSession(sim.url) as http:
        w = Walk(http)
        for route in (f"{API}/users/@me", f"{API}/oauth2/applications/@me", f"{API}/gateway/bot"):
            await w.call("GET", route, route, headers=bot)
        async with interactions_endpoint(sim, lambda: True) as (good, _):
            me = f"{API}/applications/@me"
            saved = await w.call(
                "PATCH", me, me, json={"interactions_endpoint_url": good}, headers=bot
            )
            assert saved["interactions_endpoint_url"] == good
        async with interactions_endpoint(sim, lambda: False) as (careless, _):
            await w.error(
                "PATCH", me, 400, json={"interactions_endpoint_url": careless}, headers=bot
            )
        await w.call(
            "POST",
            f"{API}/channels/{{channel_id}}/messages",
            f"{API}/channels/{channel}/messages",
            json={"content": "hello"},
            headers=bot,
        )
        await moderation_walk(w, sim, guild, channel, bot)
        # application commands, global and per guild: the whole life cycle
        for template, scope in (
            (CMDS, f"{API}/applications/{app_id}/commands"),
            (GUILD_CMDS, f"{API}/applications/{app_id}/guilds/{guild.id}/commands"),
        ):
            one = f"{template}/{{command_id}}"
            listed = await w.call(
                "PUT",
                template,
                scope,
                json=[
                    {"name": "modreport", "description": "report a user", "type": 1},
                    {"name": "Report", "type": 3},
                ],
                headers=bot,
            )
            assert [c["name"] for c in listed] == ["modreport", "Report"]
            await w.call("GET", template, scope, headers=bot)
            created = await w.call(
                "POST",
                template,
                scope,
                201,
                json={
                    "name": "setup",
                    "description": "set the bot up",
                    "default_member_permissions": "32",
                    "options": [
                        {"type": 7, "name": "modlog", "description": "mod log", "required": True}
                    ],
                },
                headers=bot,
            )
            again = await w.call(
                "POST",
                template,
                scope,
                200,  # an upsert of an existing name: 200, as Discord documents
                json={"name": "setup", "description": "set the bot up again"},
                headers=bot,
            )
            assert again["id"] == created["id"]
            cid = f"{scope}/{created['id']}"
            await w.call("GET", one, cid, headers=bot)
            patched = await w.call(
                "PATCH", one, cid, json={"description": "set up mod-bot"}, headers=bot
            )
            assert patched["description"] == "set up mod-bot" and patched["name"] == "setup"
            refused = await w.error("PATCH", cid, 400, json={"name": "modreport"}, headers=bot)
            assert refused["code"] == 50035, refused  # a rename onto an existing command
            await w.error("PATCH", cid, 400, json=["not", "an", "object"], headers=bot)
            await w.call("DELETE", one, cid, 204, headers=bot)
            await w.error("GET", cid, 404, headers=bot)
            await w.error("PATCH", scope, 405, json={}, headers=bot)
            await w.error("DELETE", scope, 405, headers=bot)
            await w.error("POST", cid, 405, json={}, headers=bot)
            await w.error("PUT", scope, 400, json={"name": "not a list"}, headers=bot)
            await w.error("POST", scope, 400, json={"name": "Bad Name!"}, headers=bot)
        # an interaction, its callback, and the follow-up webhook
        interaction = sim.sim.world.interaction(guild, guild.owner.id, "modreport")
        token = interaction["token"]
        cb_route = f"{API}/interactions/{{interaction_id}}/{{token}}/callback"
        callback = f"{API}/interactions/{interaction['id']}/{token}/callback"
        await w.call(
            "POST",
            cb_route,
            f"{callback}?with_response=true",
            json={"type": 4, "data": {"content": "done"}},
        )
        second = sim.sim.world.interaction(guild, guild.owner.id, "modreport")
        await w.call(
            "POST",
            cb_route,
            f"{API}/interactions/{second['id']}/{second['token']}/callback",
            204,  # without with_response Discord answers 204 No Content
            json={"type": 5},
        )
        third = sim.sim.world.interaction(guild, guild.owner.id, "modreport")
        deferred = await w.call(
            "POST",
            cb_route,  # discord.py's form: ?with_response=1, a deferred ephemeral answer
            f"{API}/interactions/{third['id']}/{third['token']}/callback?with_response=1",
            json={"type": 5, "data": {"flags": 64}},
        )
        assert deferred["interaction"]["response_message_loading"] is True
        assert deferred["interaction"]["response_message_ephemeral"] is True
        assert "resource" not in deferred  # Discord's resource is a created/updated message
        original = f"{API}/webhooks/{app_id}/{token}/messages/@original"
        await w.call("PATCH", WEBHOOK_MESSAGE, original, json={"content": "edited"})
        await w.call("GET", WEBHOOK_MESSAGE, original)
        followup = await w.call(
            "POST",
            WEBHOOK,
            f"{API}/webhooks/{app_id}/{token}?wait=true",
            json={"content": "follow-up"},
        )
        await w.call(
            "POST", WEBHOOK, f"{API}/webhooks/{app_id}/{token}", 204, json={"content": "x"}
        )
        by_id = f"{API}/webhooks/{app_id}/{token}/messages/{followup['id']}"
        await w.call("GET", WEBHOOK_MESSAGE, by_id)
        await w.call("PATCH", WEBHOOK_MESSAGE, by_id, json={"content": "follow-up, edited"})
        await w.call("DELETE", WEBHOOK_MESSAGE, by_id, 204)
        await w.call("DELETE", WEBHOOK_MESSAGE, original, 204)
        await w.error("POST", original, 405, json={"content": "no"})
        await w.error("PUT", original, 405, json={"content": "no"})
        # OAuth2: a user logs in through the authorize page, then the user API
        user_token = await oauth_user_token(sim, http, w, guild)
        user = {"Authorization": f"Bearer {user_token}"}
        await w.call("GET", f"{API}/users/@me", f"{API}/users/@me", headers=user)
        await w.call("GET", f"{API}/users/@me/guilds", f"{API}/users/@me/guilds", headers=user)
        await w.call(
            "GET",
            f"{API}/users/@me/guilds/{{guild_id}}/member",
            f"{API}/users/@me/guilds/{guild.id}/member",
            headers=user,
        )
        # the unversioned /api aliases answer the same documents
        assert aliases, "the OAuth2 module serves /api/oauth2/token and /api/users/@me..."
        alias_token = await oauth_user_token(sim, http, w, guild, token_path="/api/oauth2/token")
        alias_user = {"Authorization": f"Bearer {alias_token}"}
        for method, route in sorted(aliases - {("POST", TOKEN)}):
            assert method == "GET", (method, route)
            path = route.replace(API, "/api").replace("{guild_id}", str(guild.id))
            await w.call(method, route, path, headers=alias_user)
        # error answers: Discord's shape everywhere
        await w.error("GET", f"{API}/users/@me", 401)
        await w.error("GET", f"{API}/users/@me", 401, headers={"Authorization": "Bot wrong"})
        await w.error("GET", f"{API}/no/such/route", 404, headers=bot)
        await w.error("POST", f"{API}/channels/1/messages", 404, json={"content": "x"}, headers=bot)
        await w.error("POST", f"{API}/users/@me", 405, headers=bot)
        await w.error("DELETE", f"{API}/gateway/bot", 405, headers=bot)
        await w.error("GET", f"{API}/users/@me/guilds/1/member", 404, headers=user)
        await w.error("GET", f"{API}/applications/1/commands", 404, headers=bot)
        await w.error("POST", f"{API}/channels/general/messages", 400, json={}, headers=bot)
        bad_json = {**bot, "Content-Type": "application/json"}
        assert (
            await w.error(
                "POST", f"{API}/channels/{channel}/messages", 400, data=b"{no", headers=bad_json
            )
        )["code"] == 50109
        await w.error(
            "PUT", f"{API}/applications/{app_id}/commands", 400, data=b"[", headers=bad_json
        )
    not_called = sorted(set(ROUTES) - w.called)
    assert not not_called, f"routes in the table the walk never called: {not_called}"
    errors = validate(w.documents) | w.local_errors
    assert not errors, json.dumps(errors, indent=1)[:6000]
    bad_errors = {
        f"{where} -> {status}": json_schema_errors(DISCORD_ERROR, body)
        for where, status, body in w.error_bodies
        if json_schema_errors(DISCORD_ERROR, body)
    }
    assert not bad_errors, json.dumps(bad_errors, indent=1)


async def moderation_walk(w: Walk, sim: RunningSim, guild: Any, channel: int, bot: Any) -> None:
    """A message with buttons (and its nonce), its edit, a timeout, a kick and a ban."""
    msgs = f"{API}/channels/{{channel_id}}/messages"
    buttons = [
        {
            "type": 1,
            "components": [{"type": 2, "style": 4, "label": "Ban", "custom_id": "esc-vote|x|ban"}],
        }
    ]
    body = {"content": "vote", "components": buttons, "nonce": "n1", "enforce_nonce": True}
    first = await w.call("POST", msgs, f"{API}/channels/{channel}/messages", json=body, headers=bot)
    again = await w.call("POST", msgs, f"{API}/channels/{channel}/messages", json=body, headers=bot)
    assert again["id"] == first["id"], "enforce_nonce: the first message, no second one"
    assert first["components"][0]["components"][0]["custom_id"] == "esc-vote|x|ban"
    edit = f"{API}/channels/{{channel_id}}/messages/{{message_id}}"
    edited = await w.call(
        "PATCH",
        edit,
        f"{API}/channels/{channel}/messages/{first['id']}",
        json={"content": "closed", "components": []},
        headers=bot,
    )
    assert edited["content"] == "closed" and edited["components"] == []
    await w.error("PATCH", f"{API}/channels/{channel}/messages/1", 404, json={}, headers=bot)
    voter = next(m for m in guild.members if m not in (guild.owner.id, sim.sim.world.bot.id))
    async with w.http.post(
        "/control/reactions",
        json={
            "guild_id": str(guild.id),
            "channel_id": str(channel),
            "message_id": first["id"],
            "user_id": str(voter),
            "emoji": "⭐",
        },
    ) as r:
        assert r.status == 200 and (await r.json())["count"] == 1
    read = await w.call(
        "GET", edit, f"{API}/channels/{channel}/messages/{first['id']}", headers=bot
    )
    assert read["reactions"][0]["count"] == 1 and read["reactions"][0]["emoji"]["name"] == "⭐"
    await w.error("GET", f"{API}/channels/{channel}/messages/1", 404, headers=bot)
    threads = f"{API}/channels/{{channel_id}}/threads"
    thread = await w.call(
        "POST",
        threads,
        f"{API}/channels/{channel}/threads",
        201,
        json={"name": "user logs", "type": 11, "auto_archive_duration": 10080},
        headers=bot,
    )
    in_thread = await w.call(
        "POST", msgs, f"{API}/channels/{thread['id']}/messages", json={"content": "x"}, headers=bot
    )
    assert in_thread["channel_id"] == thread["id"]
    await w.error("POST", f"{API}/channels/1/threads", 404, json={"name": "x"}, headers=bot)
    users = [m for m in guild.members if m not in (guild.owner.id, sim.sim.world.bot.id)]
    await w.call(
        "PUT",
        f"{API}/channels/{{channel_id}}/thread-members/{{user_id}}",
        f"{API}/channels/{thread['id']}/thread-members/{users[2]}",
        204,
        headers=bot,
    )
    await w.error("PUT", f"{API}/channels/{thread['id']}/thread-members/1", 404, headers=bot)
    closed = await w.call(
        "PATCH",
        f"{API}/channels/{{channel_id}}",
        f"{API}/channels/{thread['id']}",
        json={"archived": True, "locked": True},
        headers=bot,
    )
    assert closed["thread_metadata"]["archived"] and closed["thread_metadata"]["locked"]
    await w.error("PATCH", f"{API}/channels/1", 404, json={"archived": True}, headers=bot)
    await w.error("POST", f"{API}/channels/{channel}/threads", 400, json={}, headers=bot)
    member = f"{API}/guilds/{{guild_id}}/members/{{user_id}}"
    until = "2030-01-01T00:00:00.000000+00:00"
    timed = await w.call(
        "PATCH",
        member,
        f"{API}/guilds/{guild.id}/members/{users[0]}",
        json={"communication_disabled_until": until},
        headers=bot,
    )
    assert timed["communication_disabled_until"] == until
    await w.call("DELETE", member, f"{API}/guilds/{guild.id}/members/{users[0]}", 204, headers=bot)
    await w.error("DELETE", f"{API}/guilds/{guild.id}/members/{users[0]}", 404, headers=bot)
    ban = f"{API}/guilds/{{guild_id}}/bans/{{user_id}}"
    await w.call("PUT", ban, f"{API}/guilds/{guild.id}/bans/{users[1]}", 204, json={}, headers=bot)
    await w.error("PUT", f"{API}/guilds/1/bans/{users[1]}", 404, json={}, headers=bot)
    assert sim.sim.moderation is not None and users[1] in sim.sim.moderation.bans[guild.id]
    # nobody bans the owner: 403 Missing Permissions (features review)
    owner_ban = f"{API}/guilds/{guild.id}/bans/{guild.owner.id}"
    assert (await w.error("PUT", owner_ban, 403, json={}, headers=bot))["code"] == 50013
    # /control/faults: a 5xx in Discord's error shape, then a 429 as Discord sends it
    for status in (500, 429):
        async with w.http.post(
            "/control/faults", json={"method": "PUT", "path": "/bans/", "status": status}
        ) as r:
            assert r.status == 200
    await w.error("PUT", f"{API}/guilds/{guild.id}/bans/{users[2]}", 500, json={}, headers=bot)
    async with w.http.put(f"{API}/guilds/{guild.id}/bans/{users[2]}", json={}, headers=bot) as r:
        limited = await r.json()
        assert r.status == 429 and r.headers["Via"] and int(r.headers["Retry-After"]) >= 1
    assert limited["retry_after"] > 0 and limited["global"] is False and limited["message"]
    assert users[2] not in sim.sim.moderation.bans[guild.id]  # a refused call did nothing


async def oauth_user_token(
    sim: RunningSim, http: aiohttp.ClientSession, w: Walk, guild: Any, token_path: str = TOKEN
) -> str:
    """A user access token through the simulator's real authorization-code flow."""
    async with http.post(
        "/control/oauth/users",
        json={
            "username": "dashboard-user",
            "guilds": {str(guild.id): {"permissions": "32", "owner": False}},
        },
    ) as r:
        assert r.status == 200, await r.text()
        user_id = (await r.json())["id"]
    redirect = "http://127.0.0.1:1/callback"
    client_id = str(sim.sim.world.application_id)
    async with http.post(
        "/oauth2/authorize",
        data={
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": redirect,
            "scope": "identify guilds guilds.members.read",
            "state": "s1",
            "user_id": user_id,
            "action": "authorize",
        },
        allow_redirects=False,
    ) as r:
        assert r.status == 302, await r.text()
        code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
    secret = sim.sim.oauth.client_secret if sim.sim.oauth is not None else ""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect}
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    auth = {"Authorization": f"Basic {basic}"}
    body = await w.call("POST", TOKEN, token_path, data=form, headers=auth)
    # a used code is refused with OAuth2's own error shape (RFC 6749 5.2), as on Discord
    async with http.post(token_path, data=form, headers=auth) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_grant"
    return str(body["access_token"])
