"""Escalations end to end on a 2-pod stack: /escalate and vote buttons through signed
webhooks (the proxy routes MESSAGE_COMPONENT interactions like commands), resolution at
quorum or at the deadline, exactly once, across a migration and a killed pod."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from conftest import PG_URL, eventually
from stack import running_stack

from config_store.api import MIGRATOR_KEY
from discord_sim.world import User
from modbot_client.monolith_schema import seconds

TIMEOUT = "60"  # MODBOT_ESCALATION_TIMEOUT for the stack: no deadline fires unless a test wants


@pytest.fixture
async def stack(tmp_path, pg_schema, monkeypatch):
    monkeypatch.setenv("MODBOT_ESCALATION_TIMEOUT", TIMEOUT)
    monkeypatch.setenv("MODBOT_FEATURE_TICK", "0.2")
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=4, shard_count=4) as s:
        yield s


def answer(reply: dict[str, Any]) -> str:
    assert reply["status"] == 200, reply
    body = json.loads(reply["body"])
    assert body["type"] == 4 and body["data"]["flags"] == 64, (body, reply["elapsed_ms"])
    return str(body["data"]["content"])


async def settled(stack, reply: dict[str, Any]) -> str:
    """The answer a user finally sees: at once, or (deferred by the proxy, e.g. while the
    table still marks the guild as moving) the edit of the deferred response that follows."""
    body = json.loads(reply["body"])
    if body["type"] == 4:
        return answer(reply)
    assert reply["status"] == 200 and body == {"type": 5, "data": {"flags": 64}}, reply
    token = reply["interaction"]["token"]
    path = f"/webhooks/{stack.world.application_id}/{token}/messages/@original"

    def edits() -> list[dict[str, Any]]:
        return [c for c in stack.calls(path) if c["method"] == "PATCH"]

    await eventually(edits, timeout=20)
    return str(edits()[0]["body"]["content"])


class Guild:
    """A set-up guild: three moderators, a plain member, a target, the mod-log channel."""

    def __init__(self, stack, guild) -> None:
        self.stack, self.guild = stack, guild
        self.role = next(r for r in guild.roles if r != guild.id)
        self.mod_log = list(guild.channels)[1]
        while len(guild.members) < 7:  # owner, bot, and five members
            user = User(stack.world.ids.next(), f"{guild.name}-extra-{len(guild.members)}")
            guild.members[user.id] = (user, [])
        members = [m for m in guild.members if m not in (guild.owner.id, stack.world.bot.id)]
        for m in members[:3]:
            roles = guild.members[m][1]
            if self.role not in roles:
                roles.append(self.role)
        self.mods, self.plain, self.target = members[:3], members[3], members[4]

    async def setup(self) -> None:
        reply = await self.stack.interact(
            self.guild.id,
            "setup",
            options={"moderator_role": ["role", self.role], "mod_log": ["channel", self.mod_log]},
        )
        assert "Setup saved" in answer(reply)

    async def escalate(self, user: int, **options: Any) -> dict[str, Any]:
        """Start a vote as the first moderator; the vote message the bot posted."""
        before = {int(m["id"]) for m in self.stack.sim.sim.moderation.messages.values()}
        opts: dict[str, Any] = {"user": ["user", self.target]}
        opts.update({k: ["string", v] for k, v in options.items()})
        reply = await self.stack.interact(
            self.guild.id, "escalate", user_id=str(user), options=opts
        )
        assert "Escalation started" in answer(reply), reply
        fresh = [
            m
            for m in self.stack.sim.sim.moderation.messages.values()
            if int(m["id"]) not in before and m["channel_id"] == str(self.mod_log)
        ]
        assert len(fresh) == 1 and len(fresh[0]["components"][0]["components"]) == 4, fresh
        return fresh[0]

    async def press(self, message: dict[str, Any], user: int, choice: str, **kw: Any) -> Any:
        custom = kw.pop("custom_id", None) or self.custom_id(message, choice)
        async with self.stack.http.post(
            f"{self.stack.sim.url}/control/components",
            json={
                "url": f"{self.stack.proxy.url}/webhooks/discord",
                "guild_id": str(self.guild.id),
                "user_id": str(user),
                "message_id": message["id"],
                "custom_id": custom,
                **kw,
            },
        ) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    @staticmethod
    def custom_id(message: dict[str, Any], choice: str) -> str:
        ids = [c["custom_id"] for c in message["components"][0]["components"]]
        return next(i for i in ids if i.endswith(f"|{choice}"))

    def resolution_notices(self) -> list[dict[str, Any]]:
        return [
            m
            for m in self.stack.sim.sim.moderation.messages.values()
            if m["channel_id"] == str(self.mod_log) and "resolved:" in m["content"]
        ]

    def banned(self) -> bool:
        bans = self.stack.sim.sim.moderation.bans.get(self.guild.id, set())
        return self.target in bans

    def owner(self) -> Any:
        return self.stack.pods[self.stack.proxy.tables.table.owner(self.guild.id)]

    def row(self, pod: Any) -> list[tuple[Any, ...]]:
        return pod.rows(
            "SELECT id, resolution, flags, scheduled_for FROM escalations WHERE guild_id = ?",
            (self.guild.id,),
        )


async def ready(stack) -> Guild:
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    await g.setup()
    return g


async def test_vote_resolves_at_quorum_once_and_refuses_hostile_presses(stack):
    g = await ready(stack)
    vote = await g.escalate(g.mods[0], strategy="simple")  # quorum: 3 (mod-bot's default)
    pod = g.owner()
    [(esc_id, resolution, flags, _)] = g.row(pod)
    assert resolution is None and json.loads(flags)["quorum"] == 3
    kick = g.custom_id(vote, "kick")

    # a plain member pressing a vote button: refused, nothing recorded
    refused = await g.press(vote, g.plain, "ban")
    assert "Only moderators" in answer(refused)
    # a vote, the same vote again (a double click), then a change of mind: one record
    assert "Vote recorded: Ban" in answer(await g.press(vote, g.mods[0], "ban"))
    again = await g.press(vote, g.mods[0], "ban")
    assert "Ban 1" in answer(again)
    # a replay of the very same signed interaction: refused by the proxy, not run twice
    async with stack.http.post(
        f"{stack.sim.url}/control/components",
        json={"url": f"{stack.proxy.url}/webhooks/discord", "payload": again["interaction"]},
    ) as r:
        assert (await r.json())["status"] == 409
    assert "Kick 1" in answer(await g.press(vote, g.mods[1], "kick"))
    changed = answer(await g.press(vote, g.mods[1], "ban"))  # changed: kick -> ban
    assert "Kick 0" in changed and "Ban 2" in changed
    assert pod.rows(
        "SELECT voter_id, vote FROM escalation_records WHERE escalation_id = ? ORDER BY voter_id",
        (esc_id,),
    ) == sorted([(str(g.mods[0]), "ban"), (str(g.mods[1]), "ban")])
    # a forged custom id: another guild's escalation, pressed here
    other = Guild(stack, list(stack.world.guilds.values())[1])
    await other.setup()
    other_vote = await other.escalate(other.mods[0])
    forged = await g.press(vote, g.mods[0], "ban", custom_id=other.custom_id(other_vote, "ban"))
    assert "not found" in answer(forged)
    garbage = await g.press(vote, g.mods[0], "ban", custom_id="esc-vote|x")
    assert "not valid" in answer(garbage)
    unknown = await g.press(vote, g.mods[0], "ban", custom_id="something-else|1")
    assert "not one of mod-bot's" in answer(unknown)

    # the third moderator reaches the quorum: resolved at once, delivered once
    assert "Resolved: Ban" in answer(await g.press(vote, g.mods[2], "ban"))
    await eventually(lambda: g.banned() and len(g.resolution_notices()) == 1, timeout=10)
    await eventually(lambda: json.loads(g.row(pod)[0][2]).get("delivered") == 1, timeout=10)
    assert g.row(pod)[0][1] == "ban"
    closed = stack.sim.sim.moderation.messages[int(vote["id"])]
    assert closed["components"] == [] and "Resolved: Ban" in closed["content"]
    # the message command starts the same vote about a message's author (moderators only)
    for user, expected in ((g.plain, "Only moderators"), (g.mods[1], "Escalation started")):
        reply = await stack.interact(
            g.guild.id,
            "Escalate",
            kind=3,
            user_id=str(user),
            target_message_id=str(stack.world.ids.next()),
            target_author_id=str(g.mods[2]),
            target_content="escalate this",
        )
        assert expected in answer(reply)
    started = [r for r in g.row(pod) if r[1] is None]
    assert len(started) == 1
    # presses of the old buttons (a client that has not seen the edit yet)
    late = await g.press(vote, g.plain, "kick", custom_id=kick)  # not a moderator: refused
    assert "Only moderators" in answer(late)
    # a moderator after the resolution: told, nothing changes
    stack.world.guilds[g.guild.id].members[g.plain][1].append(g.role)
    assert "already resolved" in answer(await g.press(vote, g.plain, "kick", custom_id=kick))
    assert len(g.resolution_notices()) == 1
    assert sorted(stack.sim.sim.moderation.bans[g.guild.id]) == [g.target]


async def test_a_vote_survives_a_migration_and_resolves_once_on_the_new_owner(stack):
    """The acceptance test: vote, migrate mid-vote, vote on the new owner, one resolution."""
    g = await ready(stack)
    vote = await g.escalate(g.mods[0])
    assert "Vote recorded" in answer(await g.press(vote, g.mods[0], "kick"))
    source = g.owner()
    target = next(n for n in stack.pods if n != source.name)
    migration = await stack.migrate(g.guild.id, target)
    done = await stack.wait_migration(migration["id"])
    assert done["state"] == "done", done
    await stack.converge()
    assert g.owner().name == target and g.row(source) == []
    [(esc_id, resolution, _, _)] = g.row(stack.pods[target])
    assert resolution is None
    assert "Kick 2" in await settled(stack, await g.press(vote, g.mods[1], "kick"))
    assert "Resolved: Kick" in await settled(stack, await g.press(vote, g.mods[2], "kick"))
    await eventually(lambda: len(g.resolution_notices()) == 1, timeout=10)
    assert g.target not in stack.world.guilds[g.guild.id].members  # kicked
    new_owner = stack.pods[target]
    await eventually(lambda: json.loads(g.row(new_owner)[0][2]).get("delivered") == 1, timeout=10)
    assert new_owner.rows(
        "SELECT count(*) FROM escalation_records WHERE escalation_id = ?", (esc_id,)
    ) == [(3,)]


SHORT = 3.5  # seconds: one voter moves the deadline to 3.1 s after the start


@pytest.fixture
async def short_stack(tmp_path, pg_schema, monkeypatch):
    """Short deadlines: they fall due within a test."""
    monkeypatch.setenv("MODBOT_ESCALATION_TIMEOUT", str(SHORT))
    monkeypatch.setenv("MODBOT_FEATURE_TICK", "0.1")
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4) as s:
        yield s


@pytest.fixture
async def slow_stack(tmp_path, pg_schema, monkeypatch):
    """A slow migration (4 s a step) and a deadline 12 s after the vote starts: the source
    freezes about 4 s into the migration, well before the deadline (a loaded machine has
    7 s of margin there); the test then holds the flip until the deadline has passed."""
    monkeypatch.setenv("MODBOT_ESCALATION_TIMEOUT", "13.5")  # x (1 - 1/9): 12 s
    monkeypatch.setenv("MODBOT_FEATURE_TICK", "0.1")
    async with running_stack(
        tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4, migration_step_delay=4.0
    ) as s:
        yield s


@pytest.mark.slow
async def test_a_deadline_passing_during_the_migration_resolves_once_on_the_new_owner(slow_stack):
    stack = slow_stack
    g = await ready(stack)
    vote = await g.escalate(g.mods[0], strategy="majority")
    assert "Vote recorded" in answer(await g.press(vote, g.mods[0], "ban"))
    source = g.owner()
    target = next(n for n in stack.pods if n != source.name)
    [(_, _, _, scheduled)] = g.row(source)
    due = seconds(scheduled)
    migration = await stack.migrate(g.guild.id, target)
    migrator = stack.config.app[MIGRATOR_KEY]
    due_while_moving = False
    while True:
        # Read the notices, then the state: a notice seen then was posted in that state or
        # an earlier one. Before the flip no pod serves the guild (frozen on the source,
        # held on the target), so none may resolve it; from the target's replay on (which
        # may precede the record of ``replayed``) the target may.
        now, notices = time.time(), g.resolution_notices()
        m = await stack.migration(migration["id"])
        if m["state"] in ("done", "rolled_back"):
            break
        if m["state"] in ("frozen", "imported"):
            # hold the flip until the deadline has passed by 3 s, however slow the machine:
            # the step after ``imported`` sleeps what step_delay is when it starts
            migrator.step_delay = max(0.2, due + 3 - time.time())
            if now > due + 0.5:
                due_while_moving = True  # due, but frozen on the source, not live on the target
                assert notices == [], (m["state"], m["detail"], due)
        elif m["state"] != "prepared":
            migrator.step_delay = 0.2  # past the flip: no need to wait any longer
        await asyncio.sleep(0.05)  # the poll's pace
    assert m["state"] == "done", m
    assert due_while_moving, ("the deadline must fall due while frozen", m["detail"], due)
    await eventually(lambda: g.banned() and len(g.resolution_notices()) == 1, timeout=15)
    await eventually(
        lambda: json.loads(g.row(stack.pods[target])[0][2]).get("delivered") == 1, timeout=10
    )
    assert g.row(source) == []
    assert len(g.resolution_notices()) == 1 and g.row(stack.pods[target])[0][1] == "ban"


@pytest.mark.slow
async def test_a_pod_killed_mid_vote_resolves_once_after_its_restart(short_stack):
    stack = short_stack
    g = await ready(stack)
    vote = await g.escalate(g.mods[0], strategy="majority")
    assert "Vote recorded" in answer(await g.press(vote, g.mods[0], "timeout"))
    owner = g.owner()
    owner.kill()  # SIGKILL while the vote runs; its deadline passes while it is down
    dead_until = time.monotonic() + 3.0
    await eventually(lambda: time.monotonic() > dead_until, timeout=5, interval=0.1)
    assert g.resolution_notices() == []
    owner.start()
    await stack.wait_ready(owner.name)
    await eventually(lambda: len(g.resolution_notices()) == 1, timeout=15)
    timeouts = stack.sim.sim.moderation.timeouts
    assert (g.guild.id, g.target) in timeouts
    await eventually(lambda: json.loads(g.row(owner)[0][2]).get("delivered") == 1, timeout=10)
    assert len(g.resolution_notices()) == 1


@pytest.mark.slow
async def test_a_failing_delivery_is_retried_boundedly_and_then_given_up(short_stack):
    stack = short_stack
    g = await ready(stack)
    vote = await g.escalate(g.mods[0], strategy="majority")
    assert "Vote recorded" in answer(await g.press(vote, g.mods[0], "track"))
    guild = stack.world.guilds[g.guild.id]
    name = guild.channels.pop(g.mod_log)  # the mod-log channel is gone: 404 Unknown Channel
    pod = g.owner()

    def attempts() -> int:
        rows = g.row(pod)
        return int(json.loads(rows[0][2]).get("attempts", 0)) if rows and rows[0][1] else 0

    await eventually(lambda: attempts() >= 2, timeout=15)
    guild.channels[g.mod_log] = name  # back: the next retry delivers, once
    await eventually(lambda: json.loads(g.row(pod)[0][2]).get("delivered") == 1, timeout=15)
    assert len(g.resolution_notices()) == 1 and g.row(pod)[0][1] == "track"

    # a second escalation whose channel never comes back: given up after 5 attempts
    second = await g.escalate(g.mods[0], strategy="majority")
    assert "Vote recorded" in answer(await g.press(second, g.mods[0], "track"))
    guild.channels.pop(g.mod_log)
    esc = next(r for r in g.row(pod) if r[1] is None)[0]

    def state() -> dict[str, Any]:
        row = next(r for r in g.row(pod) if r[0] == esc)
        return dict(json.loads(row[2]))

    await eventually(lambda: state().get("delivered") == -1, timeout=30)
    assert state()["attempts"] == 5
    nonce = "e" + esc.replace("-", "")[:24]
    posts = [
        c
        for c in stack.calls(f"/channels/{g.mod_log}/messages")
        if c["method"] == "POST" and (c["body"] or {}).get("nonce") == nonce
    ]
    assert len(posts) == 5  # bounded: five attempts, then given up (logged)
