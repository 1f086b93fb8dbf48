"""The mod-action log from audit-log entries: kicks, timeouts and bans with executor and
reason, written once on the owning pod, also when entries repeat or arrive while the pod
is down."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from conftest import PG_URL, eventually
from stack import running_stack
from test_escalation import Guild

from gateway_app.features.modlog import audit_event


def test_audit_entries_become_events_and_others_are_ignored():
    base = {"id": "11", "user_id": "22", "target_id": "33", "guild_id": "44"}
    kick = audit_event({**base, "action_type": 20, "reason": "rude"}, now=100.0)
    assert kick is not None
    assert kick.action == "kick" and kick.executor_id == 22 and kick.reason == "rude"
    assert kick.user_id == 33 and kick.entry_id == "11" and kick.duration is None
    ban = audit_event({**base, "action_type": 22}, now=100.0)
    assert ban is not None and ban.action == "ban" and ban.reason is None
    change = {"key": "communication_disabled_until", "new_value": "1970-01-01T00:11:40+00:00"}
    timeout = audit_event({**base, "action_type": 24, "changes": [change]}, now=100.0)
    assert timeout is not None and timeout.action == "timeout" and timeout.duration == 600
    lifted = {**change, "new_value": None}
    for other in (
        {**base, "action_type": 24, "changes": [lifted]},  # a timeout lifted
        {**base, "action_type": 24, "changes": [{"key": "nick", "new_value": "x"}]},
        {**base, "action_type": 72},  # a message deleted: not a mod action here
        {**base, "action_type": True},
        {**base, "action_type": 20, "target_id": None},
        {**base, "action_type": 20, "id": 11},
        {**base, "action_type": 24, "changes": [{**change, "new_value": "soon"}]},
        {**base, "action_type": 24, "changes": 7},
    ):
        assert audit_event(other, now=100.0) is None, other


@pytest.fixture
async def stack(tmp_path, pg_schema):
    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=2, shard_count=4) as s:
        yield s


async def moderate(stack, g: Guild, action: str, user: int, **kw: Any) -> dict[str, Any]:
    body = {"guild_id": str(g.guild.id), "user_id": str(user), "action": action, **kw}
    async with stack.http.post(f"{stack.sim.url}/control/moderate", json=body) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


def actions(pod: Any, g: Guild) -> list[tuple[Any, ...]]:
    return pod.rows(
        "SELECT action_type, user_id, executor_id, reason, duration FROM mod_actions"
        " WHERE guild_id = ? AND action_type != 'leave' ORDER BY action_type",
        (g.guild.id,),
    )


async def test_kicks_timeouts_and_bans_are_logged_once_with_executor_and_reason(stack):
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    owner = g.owner()
    mod = g.mods[0]
    await moderate(
        stack, g, "timeout", g.plain, executor_id=str(mod), reason="cool off", seconds=600
    )
    kicked = await moderate(stack, g, "kick", g.mods[2], executor_id=str(mod), reason="rude")
    await moderate(stack, g, "ban", g.target, executor_id=str(mod), reason="spam")

    async def logged() -> list[tuple[Any, ...]]:
        await stack.flush_pods()
        return actions(owner, g)

    await eventually(lambda: _len(logged(), 3), timeout=10)
    rows = {r[0]: r for r in await logged()}
    assert rows["kick"][1:4] == (g.mods[2], mod, "rude")
    assert rows["timeout"][1:4] == (g.plain, mod, "cool off") and 590 < rows["timeout"][4] <= 600
    assert rows["ban"][1:4] == (g.target, mod, "spam")  # GUILD_BAN_ADD's row, completed

    # hostile: the same entry again (a replayed dispatch) and malformed entries
    entry = kicked["audit_log_entry"]
    stack.sim.sim.dispatch(g.guild.id, "GUILD_AUDIT_LOG_ENTRY_CREATE", entry)
    for bad in (
        {**entry, "id": "not-a-snowflake"},
        {**entry, "target_id": None},
        {**entry, "action_type": "20"},
        {"guild_id": entry["guild_id"]},
    ):
        stack.sim.sim.dispatch(g.guild.id, "GUILD_AUDIT_LOG_ENTRY_CREATE", bad)
    await moderate(stack, g, "timeout", g.mods[1], executor_id=str(mod), seconds=60)  # a marker
    await eventually(lambda: _len(logged(), 4), timeout=10)
    counts = Counter(r[0] for r in await logged())
    assert counts == Counter({"kick": 1, "timeout": 2, "ban": 1})
    other = next(p for p in stack.pods.values() if p.name != owner.name)
    assert actions(other, g) == []


async def test_entries_sent_while_the_owner_is_down_are_logged_once_after_its_restart(stack):
    await stack.converge()
    g = Guild(stack, next(iter(stack.world.guilds.values())))
    owner = g.owner()
    owner.kill()
    await moderate(stack, g, "kick", g.plain, executor_id=str(g.mods[0]), reason="gone")
    await moderate(stack, g, "ban", g.target, executor_id=str(g.mods[0]))
    owner.start()
    await stack.wait_ready(owner.name)

    async def logged() -> list[tuple[Any, ...]]:
        await stack.flush_pods()
        return actions(owner, g)

    await eventually(lambda: _len(logged(), 2), timeout=20)
    assert Counter(r[0] for r in await logged()) == Counter({"kick": 1, "ban": 1})


async def _len(coro: Any, n: int) -> bool:
    return len(await coro) >= n
