"""A hostile and fault review of the moderation features (issue 19), by someone who did not
write them: who may act against whom, forged button presses, racing votes, Discord
answering 429/5xx, a pod killed between Discord and its database, and every feature's
state through a migration's export/import with its checksum."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_URL, eventually
from stack import running_stack
from test_escalation import Guild, answer, settled
from test_honeypot import post
from test_reactji import forwarded, react

from discord_sim.world import User
from gateway_app import storage
from gateway_app.feature_tables import TABLES as POD_FEATURE_TABLES

FEATURE_TABLES = (
    "escalations",
    "escalation_records",
    "honeypot_config",
    "reactji_channeler_config",
    "tickets_config",
    "user_threads",
    "deletion_log_threads",
    *POD_FEATURE_TABLES,
)


@pytest.fixture
async def stack(
    tmp_path: Path, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    monkeypatch.setenv("MODBOT_ESCALATION_TIMEOUT", "600")  # no deadline fires by itself
    monkeypatch.setenv("MODBOT_FEATURE_TICK", "0.2")
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4) as s:
        yield s


async def ready(stack: Any) -> Guild:
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    await g.setup()
    return g


async def fault(stack: Any, **body: Any) -> None:
    """Make the simulated Discord fail (or answer late) the next matching REST calls."""
    async with stack.http.post(f"{stack.sim.url}/control/faults", json=body) as r:
        assert r.status == 200, await r.text()


def calls(stack: Any, method: str, path: str) -> list[dict[str, Any]]:
    return [c for c in stack.calls(path) if c["method"] == method]


def bans(stack: Any, g: Guild) -> set[int]:
    return set(stack.sim.sim.moderation.bans.get(g.guild.id, set()))


# -- who may act against whom -------------------------------------------------------------------


async def test_force_ban_and_escalate_refuse_the_bot_the_owner_and_a_moderators_peers(
    stack: Any,
) -> None:
    """A moderator's role must not let them turn the bot on itself, on the owner, or (for
    the unilateral force-ban) on another moderator; an administrator may ban a moderator."""
    g = await ready(stack)
    owner, bot = g.guild.owner.id, stack.world.bot.id

    async def force_ban(by: int, target: int) -> str:
        reply = await stack.interact(
            g.guild.id, "force-ban", user_id=str(by), options={"user": ["user", target]}
        )
        return answer(reply)

    assert "itself" in await force_ban(g.mods[0], bot)
    assert "owner" in await force_ban(g.mods[0], owner)
    assert "Only an administrator" in await force_ban(g.mods[0], g.mods[1])
    assert "cannot ban yourself" in await force_ban(g.mods[0], g.mods[0])
    assert calls(stack, "PUT", f"/guilds/{g.guild.id}/bans/") == []
    # escalations: a vote about the bot itself or the owner is refused too
    for target in (bot, owner):
        reply = await stack.interact(
            g.guild.id, "escalate", user_id=str(g.mods[0]), options={"user": ["user", target]}
        )
        assert "does not act against" in answer(reply)
    bots_message = await stack.interact(  # Escalate (message command) on the bot's own post
        g.guild.id,
        "Escalate",
        kind=3,
        user_id=str(g.mods[0]),
        target_message_id=str(stack.world.ids.next()),
        target_author_id=str(bot),
        target_content="This channel is a honeypot",
    )
    assert "itself" in answer(bots_message)
    assert g.owner().rows("SELECT count(*) FROM escalations") == [(0,)]
    # the owner (an administrator) may force-ban a moderator
    assert f"Banned <@{g.mods[1]}>" in await force_ban(owner, g.mods[1])
    assert bans(stack, g) == {g.mods[1]}


async def test_the_honeypot_spares_the_owner_and_administrators_but_not_the_rest(
    stack: Any,
) -> None:
    """An administrator without the moderator role, or the owner, posting in the trap (to
    test it, or by mistake) must not be banned; everyone else is."""
    g = await ready(stack)
    trap = next(iter(g.guild.channels))
    reply = await stack.interact(g.guild.id, "honeypot", options={"channel": ["channel", trap]})
    assert "is now a honeypot" in answer(reply)
    # an "Admins" role (Administrator) appears on Discord and is given to a plain member
    admin_role = stack.world.ids.next()
    g.guild.roles[admin_role] = ("Admins", 1 << 3)
    role = {"guild_id": str(g.guild.id), "role": g.guild.role_payload(admin_role)}
    assert stack.sim.sim.dispatch(g.guild.id, "GUILD_ROLE_CREATE", role) >= 1
    admin = g.plain
    g.guild.members[admin][1].append(admin_role)
    await post(stack, g, g.guild.owner.id, "is this channel a trap?")
    await post(stack, g, admin, "testing the honeypot")
    await post(stack, g, g.target, "cheap nitro here")  # posted last: banned
    await eventually(lambda: g.target in bans(stack, g), timeout=10)
    grace = time.monotonic() + 1.0  # the two earlier messages were observed before it
    await eventually(lambda: time.monotonic() > grace, timeout=3, interval=0.1)
    banned = [c["path"].rsplit("/", 1)[1] for c in calls(stack, "PUT", "/bans/")]
    assert banned == [str(g.target)], banned


# -- echoed member text ---------------------------------------------------------------------------


def mentions_of(call: dict[str, Any]) -> Any:
    return (call["body"] or {}).get("allowed_mentions")


async def test_member_text_the_bot_repeats_pings_nobody(stack: Any) -> None:
    """A member's "@everyone" (or a role mention) copied by the bot into a forward, a Track
    log or a report must not ping: the bot often may mention everyone, its author may not."""
    g = await ready(stack)
    bait = f"@everyone @here <@&{g.role}> free nitro"
    options = {
        "emoji": ["string", "⭐"],
        "threshold": ["integer", 1],
        "channel": ["channel", g.mod_log],
    }
    assert "go to" in answer(await stack.interact(g.guild.id, "reactji-channel", options=options))
    body = {
        "guild_id": str(g.guild.id),
        "channel_id": str(next(iter(g.guild.channels))),
        "message_id": str(stack.world.ids.next()),
        "user_id": str(g.plain),
        "emoji": "⭐",
        "author_id": str(g.target),
        "content": bait,
    }
    async with stack.http.post(f"{stack.sim.url}/control/reactions", json=body) as r:
        assert r.status == 200
    await eventually(lambda: forwarded(stack, g, int(body["message_id"])), timeout=10)
    for command in ("Track", "Report"):
        reply = await stack.interact(
            g.guild.id,
            command,
            kind=3,
            user_id=str(g.mods[0]),
            target_message_id=str(stack.world.ids.next()),
            target_author_id=str(g.target),
            target_content=bait,
        )
        assert "did not work" not in await settled(stack, reply)
    echoed = [c for c in calls(stack, "POST", "/messages") if "@everyone" in str(c["body"] or {})]
    assert len(echoed) == 3, [c["path"] for c in echoed]  # forward, Track, report
    for call in echoed:
        assert (mentions_of(call) or {}).get("parse") == [], (call["path"], mentions_of(call))


# -- forged presses and racing votes ----------------------------------------------------------------


async def test_racing_votes_at_the_quorum_resolve_once_and_forged_ids_change_nothing(
    stack: Any,
) -> None:
    g = await ready(stack)
    reply = await stack.interact(
        g.guild.id,
        "escalate",
        user_id=str(g.mods[0]),
        options={"user": ["user", g.target], "quorum": ["integer", 2]},
    )
    assert "Escalation started" in answer(reply)
    vote = next(
        m
        for m in stack.sim.sim.moderation.messages.values()
        if m["channel_id"] == str(g.mod_log) and m["components"]
    )
    pod = g.owner()
    [(esc_id, _, _, _)] = g.row(pod)
    # forged or malformed custom ids: refused, nothing recorded
    long_id = f"esc-vote|{esc_id}|ban|" + "x" * 60  # over Discord's 100 characters
    for custom, expected in (
        (long_id, "not one of mod-bot's"),
        (f"esc-vote|{esc_id}' OR '1'='1|ban", "not found"),
        (f"esc-vote|{esc_id}|ban|extra", "not valid"),
        (f"esc-vote|{esc_id}|BAN", "not valid"),
        ("esc-vote", "not valid"),
        ("|", "not one of mod-bot's"),
        ("ticket|close|1|2", "not valid"),  # a Close pressed outside its ticket
    ):
        got = answer(await g.press(vote, g.mods[0], "ban", custom_id=custom))
        assert expected in got, (custom, got)
    assert pod.rows("SELECT count(*) FROM escalation_records") == [(0,)]
    # three moderators press Ban at once; the quorum is 2: one resolution, one ban
    presses = await asyncio.gather(*(g.press(vote, m, "ban") for m in g.mods))
    texts = [answer(p) for p in presses]
    assert sum("Resolved: Ban" in t for t in texts) == 1, texts
    await eventually(lambda: json.loads(g.row(pod)[0][2]).get("delivered") == 1, timeout=10)
    assert len(g.resolution_notices()) == 1
    assert len(calls(stack, "PUT", f"/guilds/{g.guild.id}/bans/{g.target}")) == 1


# -- Discord failing -------------------------------------------------------------------------------


async def test_discord_429_and_5xx_on_threads_bans_and_forwards(stack: Any) -> None:
    """A 429 is waited out (one thread, not two); a 503 on a force-ban is told to the
    moderator with nothing recorded; a forward that fails is released and made once by
    the next reaction."""
    g = await ready(stack)
    await fault(stack, method="POST", path=f"/channels/{g.mod_log}/threads", status=429)
    reply = await stack.interact(
        g.guild.id,
        "Track",
        kind=3,
        user_id=str(g.mods[0]),
        target_message_id=str(stack.world.ids.next()),
        target_author_id=str(g.target),
        target_content="spam",
    )
    assert "Tracked in" in await settled(stack, reply)
    assert len(calls(stack, "POST", f"/channels/{g.mod_log}/threads")) == 2  # 429, then done
    assert len(stack.sim.sim.moderation.threads) == 1
    assert g.owner().rows("SELECT count(*) FROM user_threads") == [(1,)]

    await fault(stack, method="PUT", path=f"/guilds/{g.guild.id}/bans/", status=503)
    failed = await stack.interact(
        g.guild.id, "force-ban", user_id=str(g.mods[0]), options={"user": ["user", g.target]}
    )
    assert "did not work" in answer(failed) and not g.banned()
    retried = await stack.interact(
        g.guild.id, "force-ban", user_id=str(g.mods[0]), options={"user": ["user", g.target]}
    )
    assert "Banned" in answer(retried) and g.banned()

    options = {
        "emoji": ["string", "⭐"],
        "threshold": ["integer", 1],
        "channel": ["channel", g.mod_log],
    }
    assert "go to" in answer(await stack.interact(g.guild.id, "reactji-channel", options=options))
    await fault(stack, method="POST", path=f"/channels/{g.mod_log}/messages", status=503)
    message = stack.world.ids.next()
    await react(stack, g, message, g.mods[0])
    await eventually(lambda: calls(stack, "POST", f"/channels/{g.mod_log}/messages"), timeout=10)

    def released() -> bool:
        return bool(g.owner().rows("SELECT count(*) FROM reactji_forwarded") == [(0,)])

    await eventually(released, timeout=10)
    await react(stack, g, message, g.mods[1])
    await eventually(lambda: forwarded(stack, g, message), timeout=10)
    await react(stack, g, message, g.mods[2])
    grace = time.monotonic() + 0.5
    await eventually(lambda: time.monotonic() > grace, timeout=3, interval=0.1)
    assert len(forwarded(stack, g, message)) == 1


# -- a pod killed between Discord and its database --------------------------------------------------


@pytest.mark.slow
async def test_a_pod_killed_while_discord_posts_the_resolution_delivers_it_once(stack: Any) -> None:
    """Quorum reached; Discord creates the resolution notice but the pod is killed before
    it hears back (nothing recorded as delivered). After the restart the delivery runs
    again: the ban is repeated harmlessly, the notice is not posted twice (nonce)."""
    g = await ready(stack)
    reply = await stack.interact(
        g.guild.id,
        "escalate",
        user_id=str(g.mods[0]),
        options={"user": ["user", g.target], "quorum": ["integer", 1]},
    )
    assert "Escalation started" in answer(reply)
    vote = next(m for m in stack.sim.sim.moderation.messages.values() if m["components"])
    await fault(stack, method="POST", path=f"/channels/{g.mod_log}/messages", delay=30)
    owner = g.owner()
    assert "Resolved: Ban" in answer(await g.press(vote, g.mods[1], "ban"))
    await eventually(lambda: len(g.resolution_notices()) == 1, timeout=10)  # made, not answered
    owner.kill()
    assert json.loads(g.row(owner)[0][2]).get("delivered") == 0
    owner.start()
    await stack.wait_ready(owner.name)
    await eventually(lambda: json.loads(g.row(owner)[0][2]).get("delivered") == 1, timeout=20)
    assert len(g.resolution_notices()) == 1 and g.banned()
    assert bans(stack, g) == {g.target}
    closed = stack.sim.sim.moderation.messages[int(vote["id"])]
    assert closed["components"] == [] and "Resolved: Ban" in closed["content"]


@pytest.mark.slow
async def test_a_honeypot_ban_interrupted_by_a_kill_happens_after_the_restart(stack: Any) -> None:
    g = await ready(stack)
    trap = next(iter(g.guild.channels))
    reply = await stack.interact(g.guild.id, "honeypot", options={"channel": ["channel", trap]})
    assert "is now a honeypot" in answer(reply)
    await fault(stack, method="PUT", path=f"/guilds/{g.guild.id}/bans/", status=500, count=50)
    owner = g.owner()
    await post(stack, g, g.target)
    # discord.py retries a 500 after 1 s: the second attempt proves the event was long
    # acknowledged (its session position committed)
    await eventually(lambda: len(calls(stack, "PUT", "/bans/")) >= 2, timeout=10)
    owner.kill()
    await fault(stack, clear=True)
    owner.start()
    await stack.wait_ready(owner.name)
    await eventually(lambda: g.banned(), timeout=8)


@pytest.mark.slow
async def test_a_reactji_forward_interrupted_by_a_kill_is_made_after_the_restart(
    stack: Any,
) -> None:
    g = await ready(stack)
    options = {
        "emoji": ["string", "⭐"],
        "threshold": ["integer", 1],
        "channel": ["channel", g.mod_log],
    }
    assert "go to" in answer(await stack.interact(g.guild.id, "reactji-channel", options=options))
    await fault(stack, method="POST", path=f"/channels/{g.mod_log}/messages", status=500, count=50)
    owner = g.owner()
    message = stack.world.ids.next()
    await react(stack, g, message, g.mods[0])
    # claimed, and discord.py is sleeping before its retry of the 500: the worst moment
    await eventually(lambda: calls(stack, "POST", f"/channels/{g.mod_log}/messages"), timeout=10)
    owner.kill()
    await fault(stack, clear=True)
    owner.start()
    await stack.wait_ready(owner.name)
    await react(stack, g, message, g.mods[1])
    await eventually(lambda: forwarded(stack, g, message), timeout=8)


@pytest.mark.slow
async def test_a_reactji_forward_posted_just_before_a_kill_is_not_posted_twice(
    stack: Any,
) -> None:
    """Discord made the post but the pod was killed before it heard back (its claim still
    pending): the restarted pod takes the claim over after its lease and posts again with
    the same nonce, which returns the first message instead of making a second."""
    g = await ready(stack)
    options = {
        "emoji": ["string", "⭐"],
        "threshold": ["integer", 1],
        "channel": ["channel", g.mod_log],
    }
    assert "go to" in answer(await stack.interact(g.guild.id, "reactji-channel", options=options))
    await fault(stack, method="POST", path=f"/channels/{g.mod_log}/messages", delay=60)
    owner = g.owner()
    message = stack.world.ids.next()
    await react(stack, g, message, g.mods[0])
    await eventually(lambda: forwarded(stack, g, message), timeout=10)  # made, unanswered
    assert owner.rows("SELECT state FROM reactji_forwarded") == [("pending",)]
    owner.kill()
    await fault(stack, clear=True)
    owner.start()
    await stack.wait_ready(owner.name)
    done = [("done",)]
    await eventually(lambda: owner.rows("SELECT state FROM reactji_forwarded") == done, timeout=15)
    assert len(calls(stack, "POST", f"/channels/{g.mod_log}/messages")) >= 2  # posted again
    assert len(forwarded(stack, g, message)) == 1


# -- every feature's state through export/import ---------------------------------------------------


G = 1128274547942883330


async def opened(path: Path) -> storage.GuildStore:
    store = storage.GuildStore(str(path))
    await store.open()
    return store


def feature_rows(store: storage.GuildStore) -> Any:
    async def read() -> dict[str, list[tuple[Any, ...]]]:
        await store.flush()
        out = {}
        for table in FEATURE_TABLES:
            cols = ", ".join(storage.EXPORT_COLUMNS[table])
            out[table] = await store._all(
                f"SELECT {cols} FROM {table} WHERE guild_id = ?"
                f" ORDER BY {storage.EXPORT_ORDER[table]}",
                (G,),
            )
        return out

    return read()


async def test_every_feature_table_migrates_whole_and_a_tampered_row_is_refused(
    tmp_path: Path,
) -> None:
    """Each feature's rows leave in the export and arrive identical (types included); one
    changed value in any feature table fails the checksum and writes nothing."""
    for table in FEATURE_TABLES:
        assert table in storage.EXPORT_COLUMNS and table in storage.GUILD_TABLES, table
    source, target = await opened(tmp_path / "a.db"), await opened(tmp_path / "b.db")
    try:
        w = source.enqueue
        w(
            "INSERT INTO escalations (guild_id, id, thread_id, vote_message_id, reported_user_id,"
            " initiator_id, resolution, resolved_at, created_at, flags, voting_strategy,"
            " scheduled_for) VALUES (?, 'e1', '10', '11', '12', '13', NULL, NULL,"
            " '2026-11-27T10:00:00.000Z', ?, 'simple', '2026-11-28T10:00:00.000Z')",
            (G, json.dumps({"quorum": 2, "pod": 1, "delivered": 0})),
        )
        w(
            "INSERT INTO escalation_records (guild_id, id, escalation_id, voter_id, vote,"
            " voted_at) VALUES (?, 'r1', 'e1', '14', 'ban', '2026-11-27T10:01:00.000Z')",
            (G,),
        )
        w("INSERT INTO honeypot_config (guild_id, channel_id) VALUES (?, '15')", (G,))
        w(
            "INSERT INTO reactji_channeler_config (guild_id, id, channel_id, emoji, threshold,"
            " configured_by_id, created_at) VALUES (?, 'c1', '16', '⭐', '3', '17', 'x')",
            (G,),
        )
        w(
            "INSERT INTO tickets_config (guild_id, message_id, channel_id, role_id)"
            " VALUES (?, '18', '19', '20')",
            (G,),
        )
        w("INSERT INTO user_threads VALUES (?, '21', '22', '2026-11-27T10:02:00.000Z')", (G,))
        w(
            "INSERT INTO deletion_log_threads VALUES (?, '23', '24', '2026-11-27T10:03:00.000Z')",
            (G,),
        )
        w(
            "INSERT INTO reactji_forwarded (guild_id, message_id, emoji, channel_id,"
            " forwarded_at, claim, source_channel_id, state)"
            " VALUES (?, 25, '⭐', 26, 1795000000.25, 'tok', 27, 'pending')",
            (G,),
        )
        w(
            "INSERT INTO honeypot_bans VALUES (?, 28, 'honeypot: posted in channel 15',"
            " 1795000000.5, 1, 1795000001.75, 'pending')",
            (G,),
        )
        before = await feature_rows(source)
        assert all(before[t] for t in FEATURE_TABLES), before
        exported = await source.export_guild(G, mode="full")
        for table in FEATURE_TABLES:
            tampered = json.loads(json.dumps(exported))
            row = tampered["rows"][table][0]
            row[-1] = f"{row[-1]}x" if isinstance(row[-1], str) else (row[-1] or 0) + 1
            with pytest.raises(storage.ImportError_):
                await target.import_guild(G, 1, tampered)
            assert all(v == [] for v in (await feature_rows(target)).values()), table
        await target.import_guild(G, 1, json.loads(json.dumps(exported)))  # as over HTTP
        assert await feature_rows(target) == before
    finally:
        await source.close()
        await target.close()


async def test_a_track_or_report_that_discord_refused_can_be_retried(stack: Any) -> None:
    """The report row is written before Discord is asked: when Discord fails, the
    moderator's (or member's) retry must not be refused as "already" done while nothing
    reached the log thread or the mod-log channel."""
    g = await ready(stack)
    message = str(stack.world.ids.next())

    async def run(command: str, user: int) -> str:
        reply = await stack.interact(
            g.guild.id,
            command,
            kind=3,
            user_id=str(user),
            target_message_id=message,
            target_author_id=str(g.target),
            target_content="rule-breaking text",
        )
        return await settled(stack, reply)

    await fault(stack, method="POST", path=f"/channels/{g.mod_log}/threads", status=503)
    assert "did not work" in await run("Track", g.mods[0])
    assert "Tracked in" in await run("Track", g.mods[0])
    [thread] = stack.sim.sim.moderation.threads
    logged = [
        m for m in stack.sim.sim.moderation.messages.values() if m["channel_id"] == str(thread)
    ]
    assert len(logged) == 1 and "rule-breaking text" in logged[0]["content"]

    await fault(stack, method="POST", path=f"/channels/{g.mod_log}/messages", status=503)
    assert "did not work" in await run("Report", g.plain)
    assert "moderators have been told" in await run("Report", g.plain)
    assert len(stack.sim.sim.moderation.find("Anonymous report")) == 1
    counted = await stack.interact(
        g.guild.id, "modreport", user_id=str(g.mods[0]), options={"user": ["user", g.target]}
    )
    assert "2 report(s)" in answer(counted)  # one Track, one report: no leftovers


async def test_a_new_moderator_role_protects_at_once_in_the_honeypot(stack: Any) -> None:
    """/setup names another moderator role: its members posting in the trap right after
    must not be banned on a cached copy of the old settings."""
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))

    async def setup_with_role(members: list[int]) -> None:
        role = stack.world.ids.next()  # a role with no permissions: only the setting spares
        g.guild.roles[role] = (f"mods-{role}", 0)
        for m in members:
            g.guild.members[m][1].append(role)
        reply = await stack.interact(
            g.guild.id,
            "setup",
            options={"moderator_role": ["role", role], "mod_log": ["channel", g.mod_log]},
        )
        assert "Setup saved" in answer(reply)

    await setup_with_role([g.plain])
    trap = next(iter(g.guild.channels))
    reply = await stack.interact(g.guild.id, "honeypot", options={"channel": ["channel", trap]})
    assert "is now a honeypot" in answer(reply)
    await post(stack, g, g.plain, "testing the trap")  # spared by the setting (now cached)
    newcomer = User(stack.world.ids.next(), "new-moderator")
    g.guild.members[newcomer.id] = (newcomer, [])
    await setup_with_role([newcomer.id])
    await post(stack, g, newcomer.id, "testing the trap as a new moderator")
    await post(stack, g, g.target)
    await eventually(lambda: g.target in bans(stack, g), timeout=10)
    grace = time.monotonic() + 1.0
    await eventually(lambda: time.monotonic() > grace, timeout=3, interval=0.1)
    assert bans(stack, g) == {g.target}
