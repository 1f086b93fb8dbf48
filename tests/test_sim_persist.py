"""The simulator's world on disk (``serve discord-sim --state-file``): a restarted simulator
is the same Discord (guilds, members, messages, commands, sign-in users and their tokens);
a kill -9 mid-write leaves a file that loads; a corrupt file is refused by name; a full
disk keeps the last good world and the next write catches up. The moderation state (bot
messages with components, reactions, nonces, bans, timeouts, threads, the audit log)
survives too, answering the same REST bodies (validated against Discord's OpenAPI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from conftest import eventually, fill, free_port, small_tmpfs

from discord_sim import commands
from discord_sim.app import DiscordSim, build_sim_app
from discord_sim.moderation import ModerationState
from discord_sim.persist import (
    MESSAGES_KEPT,
    MODERATION_FIELDS,
    SET_KEPT,
    dump,
    load,
    read_state,
)
from discord_sim.server import start_sim
from discord_sim.settings import TEST_SIGNING_SEED
from modbot_runtime.atomic import StateFileError

CLI = str(Path(sys.executable).parent / "modbot-ring")
APP = 900000000000000001
BOT = {"Authorization": "Bot sim-token"}


async def sign_in(http: aiohttp.ClientSession, url: str, user_id: str) -> str:
    """Discord's authorization-code flow against the simulator: an access token."""
    redirect = "http://127.0.0.1:1/cb"
    form = {
        "client_id": str(APP),
        "response_type": "code",
        "redirect_uri": redirect,
        "scope": "identify guilds",
        "user_id": user_id,
        "action": "authorize",
    }
    async with http.post(f"{url}/oauth2/authorize", data=form, allow_redirects=False) as r:
        assert r.status == 302, await r.text()
        code = r.headers["Location"].split("code=")[1].split("&")[0]
    token_form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect,
        "client_id": str(APP),
        "client_secret": "sim-client-secret",
    }
    async with http.post(f"{url}/api/oauth2/token", data=token_form) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["access_token"])


def world_of(path: Path) -> DiscordSim:
    """A fresh simulator loaded from ``path`` (what a restart would see)."""
    sim = DiscordSim(bot_token="sim-token", application_id=APP, signing_seed=TEST_SIGNING_SEED)
    app = build_sim_app(sim)
    load(sim, commands.registry(app), read_state(path))
    return sim


async def test_a_restarted_simulator_is_the_same_discord(tmp_path):
    state = tmp_path / "world.json"
    first = await start_sim(seed_guilds=2, state_file=str(state), port=free_port())
    async with aiohttp.ClientSession() as http:
        url = first.url
        async with http.get(f"{url}/control/guilds") as r:
            guilds = (await r.json())["guilds"]
        gid = guilds[0]["id"]
        report = {"name": "Report", "type": 3}
        async with http.put(
            f"{url}/api/v10/applications/{APP}/commands", json=[report], headers=BOT
        ) as r:
            assert r.status == 200
            registered = (await r.json())[0]
        async with http.post(
            f"{url}/control/oauth/users",
            json={"username": "alice", "guilds": {gid: {"permissions": 8}}},
        ) as r:
            alice = (await r.json())["id"]
        token = await sign_in(http, url, alice)
        async with http.post(
            f"{url}/control/messages", json={"guild_id": gid, "count": 3, "content": "spam"}
        ) as r:
            message_ids = (await r.json())["message_ids"]
    await first.stop()
    assert state.stat().st_mode & 0o777 == 0o600  # it holds access tokens

    again = await start_sim(seed_guilds=5, state_file=str(state), port=free_port())
    try:
        async with aiohttp.ClientSession() as http:
            url = again.url
            async with http.get(f"{url}/control/guilds") as r:
                assert (await r.json())["guilds"] == guilds  # no new seed guilds, same ids
            async with http.get(f"{url}/api/v10/applications/{APP}/commands", headers=BOT) as r:
                assert await r.json() == [registered]  # same id and version
            bearer = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{url}/api/v10/users/@me", headers=bearer) as r:
                assert r.status == 200 and (await r.json())["id"] == alice
            async with http.get(f"{url}/api/v10/users/@me/guilds", headers=bearer) as r:
                assert [g["id"] for g in await r.json()] == [gid]
            async with http.get(f"{url}/control/oauth/users") as r:
                assert [u["username"] for u in (await r.json())["users"]] == ["alice"]
        stored = again.sim.world.stored_message(int(message_ids[1]))
        assert stored is not None and stored[1]["content"] == "spam"
        assert str(stored[0].id) == gid
        fresh = again.sim.world.ids.next()
        assert fresh > max(int(m) for m in message_ids)  # ids go on, never repeat
    finally:
        await again.stop()


async def test_a_corrupt_world_is_refused_by_name_never_reset(tmp_path):
    state = tmp_path / "world.json"
    sim = await start_sim(seed_guilds=1, state_file=str(state), port=free_port())
    await sim.stop()
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])  # torn by something that is not us
    with pytest.raises(StateFileError) as err:
        await start_sim(seed_guilds=1, state_file=str(state), port=free_port())
    text = str(err.value)
    assert str(state) in text and "corrupt" in text and "\n" not in text
    assert state.read_bytes() == good[: len(good) // 2]  # left as it was, for the operator

    backup = state.with_name(state.name + ".bak")
    backup.write_bytes(good)
    with pytest.raises(StateFileError, match="previous version is in .*world.json.bak"):
        await start_sim(state_file=str(state), port=free_port())

    state.write_text(json.dumps({"format": 1, "guilds": "nope"}))  # JSON, but not a world
    with pytest.raises(StateFileError, match=f"{state}.* is corrupt .*KeyError"):
        await start_sim(state_file=str(state), port=free_port())
    state.write_text(json.dumps({"format": 99}))
    with pytest.raises(StateFileError, match="format 1 or 2"):
        await start_sim(state_file=str(state), port=free_port())


def test_serve_discord_sim_refuses_a_corrupt_world_in_one_line(tmp_path):
    state = tmp_path / "world.json"
    state.write_text("{not json")
    assert "corrupt" in refused_by_serve(state)
    assert state.read_text() == "{not json"


def refused_by_serve(state: Path) -> str:
    """``serve discord-sim`` on ``state`` exits 2 with one line naming the file: that line."""
    done = subprocess.run(
        [CLI, "serve", "discord-sim", "--port", str(free_port()), "--state-file", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(state) in lines[0], done.stderr
    return lines[0]


async def _hammer(url: str, stop: asyncio.Event) -> None:
    """Changes as fast as the simulator takes them: guilds (the file grows) and messages."""
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.post(f"{url}/control/guilds", json={"count": 20}) as r:
                    gid = (await r.json())["guilds"][0]["id"]
                async with http.post(
                    f"{url}/control/messages", json={"guild_id": gid, "count": 50}
                ):
                    pass
            await asyncio.sleep(0)  # a yield, not a wait: the server gets its turn


async def kill_9_mid_write(
    state: Path, hammer: Callable[[str, asyncio.Event], Awaitable[None]], rng: random.Random
) -> None:
    """Run ``serve discord-sim`` on ``state``, let ``hammer`` change the world until the file
    has grown by 20 kB, then kill -9 the process at a random moment."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "serve",
        "discord-sim",
        "--port",
        str(port),
        "--seed-guilds",
        "1",
        "--state-file",
        str(state),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:

        async def up() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as http, http.get(f"{url}/control/info") as r:
                    return r.status == 200
            return False

        await eventually(up, timeout=30, interval=0.1)
        task = asyncio.create_task(hammer(url, stop))
        floor = state.stat().st_size if state.exists() else 0
        await eventually(
            lambda: state.exists() and state.stat().st_size > floor + 20_000, timeout=20
        )
        # the sleep is the test: the kill lands somewhere in a write, or between two
        await asyncio.sleep(rng.uniform(0.0, 0.7))
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        stop.set()
        if task is not None:
            await task


@pytest.mark.slow
async def test_kill_9_mid_write_leaves_a_loadable_world(tmp_path):
    state = tmp_path / "world.json"
    rng = random.Random(3)
    seen = 0
    for _ in range(4):
        await kill_9_mid_write(state, _hammer, rng)
        world = world_of(state)  # loads: a whole version, old or new
        assert len(world.world.guilds) >= seen  # and nothing older than what it had
        seen = len(world.world.guilds)
    running = await start_sim(state_file=str(state), port=free_port())  # and starts from it
    await running.stop()
    assert len(running.sim.world.guilds) == seen
    assert not list(tmp_path.glob(".world.json.*.tmp"))  # a killed write's leftovers: gone
    assert seen > 20


async def test_a_full_disk_keeps_the_last_world_and_the_next_write_catches_up(tmp_path):
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        state = disk / "world.json"
        running = await start_sim(seed_guilds=2, state_file=str(state), port=free_port())
        persister = running.persister
        assert persister is not None
        try:
            await eventually(lambda: persister.writes >= 1, timeout=5)
            before = state.read_bytes()
            filler = fill(disk)
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{running.url}/control/guilds", json={"count": 30}) as r,
            ):
                assert r.status == 200
            await eventually(lambda: persister.failures >= 1, timeout=5)
            assert state.read_bytes() == before  # the last good world, whole
            assert len(world_of(state).world.guilds) == 2
            assert not [p for p in disk.iterdir() if p.name.endswith(".tmp")]
            os.unlink(filler)
            await eventually(lambda: not persister.dirty and persister.writes >= 2, timeout=10)
            assert len(world_of(state).world.guilds) == 32
        finally:
            await running.stop()


# -- moderation state (moderation.py) ------------------------------------------------------------

API = "/api/v10"
BUTTONS = [
    {
        "type": 1,
        "components": [{"type": 2, "style": 4, "label": "Ban", "custom_id": "esc-vote|1|ban"}],
    }
]
UNTIL = "2030-01-01T00:00:00.000000+00:00"


async def call(http: aiohttp.ClientSession, method: str, path: str, status: int, **kw):
    async with http.request(method, path, **kw) as r:
        text = await r.text()
        assert r.status == status, (method, path, r.status, text)
        return json.loads(text) if text else None


async def moderate(http: aiohttp.ClientSession, url: str) -> dict:
    """Every kind of moderation state, through the REST API and the control routes."""
    guild = (await call(http, "GET", f"{url}/control/guilds", 200))["guilds"][0]
    gid, channel = guild["id"], next(iter(guild["channels"]))
    users = [m for m in guild["members"] if m not in (guild["owner_id"], str(APP))]
    msgs = f"{url}{API}/channels/{channel}/messages"
    vote_body = {"content": "vote", "components": BUTTONS, "nonce": "v1", "enforce_nonce": True}
    vote = await call(http, "POST", msgs, 200, json=vote_body, headers=BOT)
    await call(http, "PATCH", f"{msgs}/{vote['id']}", 200, json={"content": "1/3"}, headers=BOT)
    react = {"guild_id": gid, "channel_id": channel, "user_id": users[0], "emoji": "⭐"}
    await call(
        http, "POST", f"{url}/control/reactions", 200, json={**react, "message_id": vote["id"]}
    )
    reported = "1234567890123456789"  # a member's message the simulator learns of by a reaction
    await call(
        http,
        "POST",
        f"{url}/control/reactions",
        200,
        json={**react, "message_id": reported, "author_id": users[1], "content": "buy now"},
    )
    thread = await call(
        http, "POST", f"{msgs[: -len('/messages')]}/threads", 201, json={"name": "t"}, headers=BOT
    )
    tid = thread["id"]
    await call(
        http, "PUT", f"{url}{API}/channels/{tid}/thread-members/{users[1]}", 204, headers=BOT
    )
    in_thread = await call(
        http,
        "POST",
        f"{url}{API}/channels/{tid}/messages",
        200,
        json={"content": "log", "components": BUTTONS},
        headers=BOT,
    )
    await call(http, "PATCH", f"{url}{API}/channels/{tid}", 200, json={"locked": True}, headers=BOT)
    await call(
        http,
        "PATCH",
        f"{url}{API}/guilds/{gid}/members/{users[2]}",
        200,
        json={"communication_disabled_until": UNTIL},
        headers={**BOT, "X-Audit-Log-Reason": "spam"},
    )
    await call(http, "PUT", f"{url}{API}/guilds/{gid}/bans/{users[0]}", 204, json={}, headers=BOT)
    await call(
        http,
        "POST",
        f"{url}/control/moderate",
        200,
        json={"guild_id": gid, "user_id": users[1], "action": "timeout", "reason": "by hand"},
    )
    return {
        "gid": gid,
        "channel": channel,
        "users": users,
        "vote": vote,
        "vote_body": vote_body,
        "reported": reported,
        "thread": tid,
        "in_thread": in_thread["id"],
    }


async def rest_answers(http: aiohttp.ClientSession, url: str, w: dict) -> dict:
    """What the REST API (and the control view) answers about that state."""
    ch, tid = w["channel"], w["thread"]
    member = await call(
        http,
        "PATCH",
        f"{url}{API}/guilds/{w['gid']}/members/{w['users'][2]}",
        200,
        json={"communication_disabled_until": UNTIL},  # the same: no change, no audit entry
        headers=BOT,
    )
    member.pop("joined_at")  # the simulator stamps it per answer
    return {
        "vote": await call(
            http, "GET", f"{url}{API}/channels/{ch}/messages/{w['vote']['id']}", 200, headers=BOT
        ),
        "reported": await call(
            http, "GET", f"{url}{API}/channels/{ch}/messages/{w['reported']}", 200, headers=BOT
        ),
        "in_thread": await call(
            http, "GET", f"{url}{API}/channels/{tid}/messages/{w['in_thread']}", 200, headers=BOT
        ),
        "thread": await call(
            http, "PATCH", f"{url}{API}/channels/{tid}", 200, json={"name": "t"}, headers=BOT
        ),
        "member": member,
        "control": await call(http, "GET", f"{url}/control/moderation", 200),
    }


async def test_moderation_state_survives_a_restart_with_the_same_rest_answers(tmp_path):
    from test_sim_spec import validate

    state = tmp_path / "world.json"
    first = await start_sim(seed_guilds=1, state_file=str(state), port=free_port())
    try:
        async with aiohttp.ClientSession() as http:
            w = await moderate(http, first.url)
            before = await rest_answers(http, first.url, w)
        assert first.sim.moderation is not None
        audit = [dict(e) for e in first.sim.moderation.audit_log]
    finally:
        await first.stop()
    assert [e["action_type"] for e in audit] == [24, 22, 24]  # timeout, ban, a moderator's timeout
    assert before["vote"]["reactions"][0]["count"] == 1
    assert before["vote"]["components"][0]["components"][0]["custom_id"] == "esc-vote|1|ban"
    assert before["thread"]["thread_metadata"]["locked"] is True
    assert before["control"]["bans"] == {w["gid"]: [w["users"][0]]}
    saved = json.loads(state.read_text())
    assert saved["format"] == 2 and saved["moderation"]["created"] == 2

    again = await start_sim(seed_guilds=1, state_file=str(state), port=free_port())
    try:
        url = again.url
        async with aiohttp.ClientSession() as http:
            after = await rest_answers(http, url, w)
            assert after == before
            assert again.sim.moderation is not None
            assert again.sim.moderation.audit_log == audit
            # the ban is there: banning again changes nothing and writes no audit entry
            await call(
                http,
                "PUT",
                f"{url}{API}/guilds/{w['gid']}/bans/{w['users'][0]}",
                204,
                json={},
                headers=BOT,
            )
            assert len(again.sim.moderation.audit_log) == len(audit)
            # the nonce is there (within Discord's few minutes): the first message, no new one
            msgs = f"{url}{API}/channels/{w['channel']}/messages"
            dup = await call(http, "POST", msgs, 200, json=w["vote_body"], headers=BOT)
            assert dup["id"] == w["vote"]["id"] and again.sim.moderation.created == 2
            # the thread is still a channel the bot can write in
            await call(
                http,
                "POST",
                f"{url}{API}/channels/{w['thread']}/messages",
                200,
                json={"content": "x"},
                headers=BOT,
            )
    finally:
        await again.stop()
    schemas = {
        "vote": "MessageResponse",
        "reported": "MessageResponse",
        "in_thread": "MessageResponse",
        "thread": "ThreadResponse",
    }
    errors = validate(
        [
            {"id": k, "schema": schema, "body": after[k], "list": False}
            for k, schema in schemas.items()
        ]
    )
    assert not errors, errors


def fresh_sim() -> tuple[DiscordSim, commands.CommandRegistry]:
    sim = DiscordSim(bot_token="sim-token", application_id=APP, signing_seed=TEST_SIGNING_SEED)
    app = build_sim_app(sim)
    return sim, commands.registry(app)


def test_every_moderation_field_is_saved():
    """A field added to ModerationState must be added to persist.py too (or this fails)."""
    sim, _ = fresh_sim()
    assert set(vars(ModerationState(sim))) - {"sim"} == MODERATION_FIELDS


def test_saved_moderation_is_bounded_and_always_loads():
    """The newest MESSAGES_KEPT bot messages are saved (the simulator keeps 10,000); ids a
    control call made up outside a snowflake's range are not written, so the file loads."""
    sim, registry = fresh_sim()
    guild = sim.world.create_guild("g")
    channel = next(iter(guild.channels))
    mod = sim.moderation
    assert mod is not None
    for i in range(MESSAGES_KEPT + 50):
        made = sim.world.message(guild, channel, sim.world.bot.id, f"m{i}")
        mod.created_message({"content": f"m{i}", "components": BUTTONS}, made)
    member = next(m for m in guild.members if m != guild.owner.id)
    mod.bans[guild.id] = {member, 0, 2**64}
    mod.timeouts[(guild.id, 2**63)] = UNTIL
    mod.reactions[2**70] = {"x": {member}}
    mod.audit_log.append(
        {"id": "1", "user_id": "-3", "target_id": "2", "guild_id": str(guild.id), "action_type": 22}
    )
    doc = json.loads(json.dumps(dump(sim, registry)))
    saved = doc["moderation"]
    assert len(saved["messages"]) == MESSAGES_KEPT
    assert saved["messages"][-1][1]["content"] == f"m{MESSAGES_KEPT + 49}"  # the newest
    assert saved["messages"][0][1]["content"] == "m50"
    assert saved["bans"] == {str(guild.id): [str(member)]}
    assert saved["timeouts"] == [] and saved["reactions"] == {} and saved["audit_log"] == []
    again, registry2 = fresh_sim()
    load(again, registry2, doc)
    assert again.moderation is not None and len(again.moderation.messages) == MESSAGES_KEPT
    assert again.moderation.created == MESSAGES_KEPT + 50
    assert again.moderation.guild_of[int(saved["messages"][0][1]["id"])] == guild.id


def test_a_format_1_world_loads_with_no_moderation_state():
    sim, registry = fresh_sim()
    guild = sim.world.create_guild("g")
    assert sim.moderation is not None
    sim.moderation.bans[guild.id] = {5}
    doc = json.loads(json.dumps(dump(sim, registry)))
    old = {k: v for k, v in doc.items() if k != "moderation"} | {"format": 1}
    target, registry2 = fresh_sim()
    assert target.moderation is not None
    target.moderation.bans[1] = {2}  # whatever was there is replaced
    load(target, registry2, old)
    assert list(target.world.guilds) == [guild.id]
    assert target.moderation.bans == {} and not target.moderation.messages
    assert target.moderation.audit_log == [] and target.moderation.created == 0
    load(target, registry2, doc)  # and format 2 brings it
    assert target.moderation.bans == {guild.id: {5}}


def _set(path: str, value):
    """A hand edit: ``moderation.<path>`` (dots and [i]) set to ``value``."""

    def edit(doc: dict) -> None:
        keys = path.replace("[", ".").replace("]", "").split(".")
        node = doc["moderation"]
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


HOSTILE = {
    # wrong types
    "bans-not-lists": (_set("bans", {"123": "nope"}), "moderation.bans.123: not a list"),
    "message-not-object": (_set("messages[0]", [1, "x"]), "moderation.messages[0]: not an object"),
    "audit-int-id": (_set("audit_log[0].user_id", 12), "moderation.audit_log[0].user_id"),
    "timeout-shape": (_set("timeouts[0]", ["1", "2"]), "moderation.timeouts[0]"),
    "created-string": (_set("created", "3"), "moderation.created: not a count"),
    "thread-name": (_set("threads[0].name", ""), "moderation.threads[0]"),
    "section-not-object": (lambda d: d.__setitem__("moderation", []), "moderation: not a dict"),
    "section-missing": (lambda d: d.pop("moderation"), "KeyError: 'moderation'"),
    # huge lists
    "many-messages": (
        lambda d: d["moderation"].__setitem__(
            "messages", d["moderation"]["messages"][:1] * (MESSAGES_KEPT + 1)
        ),
        f"moderation.messages: {MESSAGES_KEPT + 1} entries, more than the {MESSAGES_KEPT} saved",
    ),
    "many-reactors": (
        lambda d: d["moderation"]["reactions"].__setitem__(
            "7", {"x": [str(i + 1) for i in range(SET_KEPT + 1)]}
        ),
        "moderation.reactions.7",
    ),
    # ids out of range
    "ban-id-zero": (_set("bans", {"123": ["0"]}), "0 is out of a snowflake's range"),
    "ban-id-2**64": (_set("bans", {"123": [str(2**64)]}), f"{2**64} is out of a snowflake's range"),
    "negative-thread-member": (
        _set("thread_members", {"5": ["-1"]}),
        "moderation.thread_members.5",
    ),
    "thread-guild-unknown": (_set("threads[0].guild_id", "77"), "guild 77 is not in the world"),
}


@pytest.fixture(scope="module")
def saved_world(tmp_path_factory) -> dict:
    """A saved world with something in every moderation section."""
    state = tmp_path_factory.mktemp("hostile") / "world.json"

    async def make() -> None:
        running = await start_sim(seed_guilds=1, state_file=str(state), port=free_port())
        try:
            async with aiohttp.ClientSession() as http:
                await moderate(http, running.url)
        finally:
            await running.stop()

    asyncio.run(make())
    doc = json.loads(state.read_text())
    assert all(
        doc["moderation"][k] for k in ("messages", "bans", "timeouts", "threads", "audit_log")
    )
    return doc


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_a_hand_edited_moderation_section_is_refused_by_name(tmp_path, saved_world, case):
    edit, expected = HOSTILE[case]
    doc = json.loads(json.dumps(saved_world))
    edit(doc)
    state = tmp_path / "world.json"
    state.write_text(json.dumps(doc))
    written = state.read_bytes()
    with pytest.raises(StateFileError) as err:
        await start_sim(state_file=str(state), port=free_port())
    text = str(err.value)
    assert str(state) in text and "is corrupt" in text and "\n" not in text, text
    assert expected in text, text
    assert state.read_bytes() == written  # left for the operator to look at


def test_serve_discord_sim_refuses_a_bad_moderation_section_in_one_line(tmp_path, saved_world):
    doc = json.loads(json.dumps(saved_world))
    doc["moderation"]["bans"] = {"123": [str(2**64)]}
    state = tmp_path / "world.json"
    state.write_text(json.dumps(doc))
    assert "moderation.bans" in refused_by_serve(state)


async def _moderate_hard(url: str, stop: asyncio.Event) -> None:
    """Moderation as fast as the simulator takes it: bot messages with buttons (and
    nonces), bans (each one an audit entry), reactions and threads."""
    n = 0
    async with aiohttp.ClientSession() as http:
        guild = (await call(http, "GET", f"{url}/control/guilds", 200))["guilds"][0]
        gid, channel = guild["id"], next(iter(guild["channels"]))
        voter = next(m for m in guild["members"] if m not in (guild["owner_id"], str(APP)))
        while not stop.is_set():
            n += 1
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, AssertionError):
                body = {
                    "content": f"vote {n}",
                    "components": BUTTONS,
                    "nonce": f"n{n}",
                    "enforce_nonce": True,
                }
                vote = await call(
                    http,
                    "POST",
                    f"{url}{API}/channels/{channel}/messages",
                    200,
                    json=body,
                    headers=BOT,
                )
                await call(
                    http,
                    "POST",
                    f"{url}/control/moderate",
                    200,
                    json={"guild_id": gid, "user_id": str(10**17 + n), "action": "ban"},
                )
                await call(
                    http,
                    "POST",
                    f"{url}/control/reactions",
                    200,
                    json={
                        "guild_id": gid,
                        "channel_id": channel,
                        "message_id": vote["id"],
                        "user_id": voter,
                        "emoji": "⭐",
                    },
                )
                if n % 5 == 0:
                    await call(
                        http,
                        "POST",
                        f"{url}{API}/channels/{channel}/threads",
                        201,
                        json={"name": f"t{n}"},
                        headers=BOT,
                    )
            await asyncio.sleep(0)  # a yield, not a wait: the server gets its turn


@pytest.mark.slow
async def test_kill_9_mid_write_keeps_the_moderation_state_loadable(tmp_path):
    """As the kill test above, with the moderation section growing: every kill leaves a
    whole version that loads, with no fewer bans or created messages than before."""
    state = tmp_path / "world.json"
    rng = random.Random(7)
    seen_bans = seen_created = 0
    for _ in range(3):
        await kill_9_mid_write(state, _moderate_hard, rng)
        world = world_of(state)  # loads: a whole version, old or new
        mod = world.moderation
        assert mod is not None
        bans = sum(len(u) for u in mod.bans.values())
        assert bans >= seen_bans and mod.created >= seen_created
        assert len(mod.messages) <= MESSAGES_KEPT and len(mod.audit_log) <= MESSAGES_KEPT
        seen_bans, seen_created = bans, mod.created
    running = await start_sim(state_file=str(state), port=free_port())
    await running.stop()
    assert running.sim.moderation is not None
    assert sum(len(u) for u in running.sim.moderation.bans.values()) == seen_bans
    assert not list(tmp_path.glob(".world.json.*.tmp"))
    assert seen_bans > 50 and seen_created > 50
