"""Targeted shard changes and Discord's IDENTIFY limits.

* the simulator enforces session_start_limit and max_concurrency as Discord documents
  (op 9 over the bucket's limit; token reset on an IDENTIFY with nothing left) and closes
  bad IDENTIFYs with Discord's codes (4004, 4005, 4010-4014);
* a pod's :class:`ShardSupervisor` opens only added shards and closes only removed ones,
  with real discord.py clients against the in-process simulator;
* its :class:`IdentifyGate` paces IDENTIFYs by bucket and waits out an exhausted budget;
* end to end: 100 pin changes on one pod of a running stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import eventually

from discord_sim.server import RunningSim, start_sim
from discord_sim.world import IdentifyLimits
from gateway_app.bot import GatewayClient, RecentEvents
from gateway_app.discordpy import point_at
from gateway_app.events import GatewayEvent
from gateway_app.shards import IdentifyGate, SessionStartLimit, ShardSupervisor

TOKEN = "sim-token"
MOD_BOT_INTENTS = 1 | 2 | 4 | 512 | 32768  # guilds, members, moderation, messages, content


# -- the simulator's limits, as data ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_identify_limits_buckets_budget_and_reset() -> None:
    clock = FakeClock()
    limits = IdentifyLimits(total=3, max_concurrency=2, reset_seconds=60, clock=clock)
    assert limits.payload() == {"total": 3, "remaining": 3, "reset_after": 0, "max_concurrency": 2}
    assert limits.check(0) is None
    limits.take(0)
    assert limits.check(2) == "concurrency"  # same bucket (2 % 2 == 0) within 5 s
    assert limits.check(1) is None  # the other bucket is free
    limits.take(1)
    clock.now += 5.0
    assert limits.check(2) is None
    limits.take(2)
    assert limits.remaining == 0 and limits.check(3) == "exhausted"
    assert limits.payload()["reset_after"] == 55_000
    clock.now += 55.0
    assert limits.remaining == 3 and limits.check(3) is None


def test_identify_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        IdentifyLimits(max_concurrency=0)
    limits = IdentifyLimits(total=10)
    for bad in ({"remaining": 11}, {"remaining": -1}, {"reset_after": -1}, {"max_concurrency": 0}):
        with pytest.raises(ValueError):
            limits.set(**bad)


# -- the pod's gate, with a fake clock ------------------------------------------------------------


class GateHarness:
    def __init__(self, **limits: int) -> None:
        self.clock = FakeClock()
        self.slept: list[float] = []
        self.limits = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        self.limits.update(limits)
        self.fetches = 0
        self.gate = IdentifyGate(clock=self.clock, sleep=self.sleep)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()
        await asyncio.sleep(0)

    on_sleep: Any = None

    async def fetch(self) -> SessionStartLimit:
        self.fetches += 1
        return SessionStartLimit(**self.limits)


async def test_gate_spaces_identifies_of_one_bucket_by_five_seconds() -> None:
    h = GateHarness(max_concurrency=2)
    start = h.clock.now
    await h.gate.acquire(0, h.fetch)
    await h.gate.acquire(1, h.fetch)  # another bucket: at once
    assert h.clock.now == start
    await h.gate.acquire(2, h.fetch)  # bucket 0 again: 5 s (+ margin) after the first
    assert 5.0 <= h.clock.now - start <= 5.5
    assert h.gate.granted == 3 and h.gate.bucket_waits == 1


async def test_gate_waits_for_the_reset_instead_of_identifying_when_exhausted() -> None:
    h = GateHarness(remaining=0, reset_after=90_000)

    def refill() -> None:
        if h.clock.now >= 1090.0:
            h.limits["remaining"] = 1000

    h.on_sleep = refill
    await h.gate.acquire(0, h.fetch)
    assert h.clock.now >= 1090.0  # nothing was let through before the reset
    assert h.gate.exhausted_waits >= 1 and h.gate.granted == 1
    assert max(h.slept) <= 60.0  # re-reads the budget at least once a minute meanwhile
    assert h.fetches <= 4  # ... but does not spin on it
    assert h.gate.blocked_seconds == 0


async def test_gate_keeps_a_reserve_and_survives_a_failing_gateway_endpoint() -> None:
    h = GateHarness(remaining=3, reset_after=1000)
    calls = {"n": 0}

    async def flaky() -> SessionStartLimit:
        calls["n"] += 1
        if calls["n"] == 1:
            raise aiohttp.ClientError("boom")
        if calls["n"] == 2:
            return SessionStartLimit(1000, 3, 1000, 1)  # the reserve: wait
        return SessionStartLimit(1000, 1000, 0, 1)

    await h.gate.acquire(0, flaky)
    assert h.gate.fetch_failures == 1 and h.gate.exhausted_waits == 1 and h.gate.granted == 1


# -- the simulator's gateway, spoken to raw ---------------------------------------------------------


def guild_on(shard: int, n: int, count: int = 8) -> int:
    """A snowflake whose guild lands on ``shard`` of ``count``."""
    return ((1_000_000_000_000 + shard + count * n) << 22) | 1


@pytest.fixture
async def sim() -> AsyncIterator[RunningSim]:
    running = await start_sim(max_concurrency=16)
    for shard in range(8):  # two guilds on each of 8 shards
        for j in range(2):
            running.sim.world.create_guild(f"g{shard}-{j}", guild_id=guild_on(shard, j))
    yield running
    await running.stop()


async def raw_identify(
    http: aiohttp.ClientSession,
    sim: RunningSim,
    shard: Any,
    *,
    token: str = TOKEN,
    intents: Any = MOD_BOT_INTENTS,
    version: str = "10",
    twice: bool = False,
) -> tuple[int | None, dict[str, Any] | None, aiohttp.ClientWebSocketResponse]:
    """IDENTIFY over a raw socket: (close code or None, first op 0/9 frame, socket)."""
    ws = await http.ws_connect(f"{sim.gateway_url}?v={version}&encoding=json")
    hello = await ws.receive_json(timeout=5)
    assert hello["op"] == 10
    d: dict[str, Any] = {"token": token, "intents": intents, "properties": {}}
    if shard is not None:
        d["shard"] = shard
    identify = {"op": 2, "d": d}
    await ws.send_json(identify)
    if twice:
        await ws.send_json(identify)
    first = None
    while True:
        msg = await ws.receive(timeout=5)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return ws.close_code, first, ws
        frame = json.loads(msg.data)
        if first is None and frame["op"] in (0, 9):
            first = frame
            if not twice:
                return None, first, ws


async def test_sim_closes_bad_identifies_with_discords_codes(sim: RunningSim) -> None:
    sim.sim.privileged_intents = 2 | 32768  # members and message content only
    async with aiohttp.ClientSession() as http:
        cases: dict[str, tuple[dict[str, Any], int]] = {
            "invalid shard [5, 4]": (dict(shard=[5, 4]), 4010),
            "negative shard": (dict(shard=[-1, 4]), 4010),
            "shard not a pair": (dict(shard="0,1"), 4010),
            "bad token": (dict(shard=[0, 4], token="nope"), 4004),
            "gateway v6": (dict(shard=[0, 4], version="6"), 4012),
            "undefined intent bit": (dict(shard=[0, 4], intents=1 << 30), 4013),
            "intents not a number": (dict(shard=[0, 4], intents="all"), 4013),
            "presences not enabled": (dict(shard=[0, 4], intents=MOD_BOT_INTENTS | 256), 4014),
            "16 guilds on one shard": (dict(shard=None), 4011),
            "identified twice": (dict(shard=[1, 4], twice=True), 4005),
        }
        got = {}
        for name, (kw, _) in cases.items():
            sim.sim.max_guilds_per_shard = 5 if name.startswith("16 guilds") else 2500
            code, _, ws = await raw_identify(http, sim, kw.pop("shard"), **kw)
            got[name] = code
            await ws.close()
        assert got == {name: code for name, (_, code) in cases.items()}
    counts = sim.sim.gateway_counts
    assert counts["identifies"] == 1  # only the first IDENTIFY of "identified twice"
    assert counts["closed"]["4010"] == 3


async def test_sim_enforces_concurrency_with_op9_and_counts(sim: RunningSim) -> None:
    sim.sim.limits.set(max_concurrency=2)
    async with aiohttp.ClientSession() as http:
        _, ready, ws0 = await raw_identify(http, sim, [0, 4])
        assert ready is not None and ready["t"] == "READY"
        _, refused, ws2 = await raw_identify(http, sim, [2, 4])  # bucket 0 again, within 5 s
        assert refused == {"op": 9, "d": False, "s": None, "t": None}
        _, ready1, ws1 = await raw_identify(http, sim, [1, 4])  # bucket 1: fine
        assert ready1 is not None and ready1["t"] == "READY"
        async with http.get(f"{sim.url}/control/gateway") as r:
            body = await r.json()
        assert body["identifies"] == 2 and body["refused"]["concurrency"] == 1
        assert body["session_start_limit"]["remaining"] == 998
        async with http.get(
            f"{sim.api_url}/gateway/bot", headers={"Authorization": f"Bot {TOKEN}"}
        ) as r:
            limits = (await r.json())["session_start_limit"]
        assert limits["remaining"] == 998 and limits["max_concurrency"] == 2
        assert 0 < limits["reset_after"] <= 86_400_000
        for ws in (ws0, ws1, ws2):
            await ws.close()


async def test_sim_locks_the_bot_out_on_an_identify_with_no_session_starts_left(
    sim: RunningSim,
) -> None:
    async with aiohttp.ClientSession() as http:
        _, ready, live = await raw_identify(http, sim, [0, 4])
        assert ready is not None
        async with http.post(f"{sim.url}/control/gateway/limits", json={"remaining": 0}) as r:
            assert r.status == 200
        code, _, ws = await raw_identify(http, sim, [1, 4])
        assert code == 4004
        msg = await live.receive(timeout=5)  # the running session is terminated too
        while msg.type == aiohttp.WSMsgType.TEXT:  # READY and GUILD_CREATEs first
            msg = await live.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert live.close_code == 4004
        async with http.get(
            f"{sim.api_url}/users/@me", headers={"Authorization": f"Bot {TOKEN}"}
        ) as r:
            assert r.status == 401  # the token was reset
        async with http.get(f"{sim.url}/control/gateway") as r:
            body = await r.json()
        assert body["lockouts"] == 1 and body["refused"]["exhausted"] == 1
        async with http.post(
            f"{sim.url}/control/gateway/limits",
            json={"remaining": 1000, "restore_token": True},
        ) as r:
            assert r.status == 200
        _, ready, ws3 = await raw_identify(http, sim, [1, 4])
        assert ready is not None and ready["t"] == "READY"
        for w in (ws, live, ws3):
            await w.close()


async def test_sim_control_api_refuses_bad_limits(sim: RunningSim) -> None:
    async with aiohttp.ClientSession() as http:
        for body, fragment in (
            ({"remaining": -1}, "remaining"),
            ({"remaining": "lots"}, "invalid literal"),
            ({"max_concurrency": 0}, "max_concurrency"),
            ({"reset_after": -5}, "reset_after"),
            ({"bogus": 1}, "unknown field"),
            ([1, 2], "JSON object"),
        ):
            async with http.post(f"{sim.url}/control/gateway/limits", json=body) as r:
                assert r.status == 400
                assert fragment in (await r.json())["error"]
        async with http.post(f"{sim.url}/control/gateway/limits", data=b"{nope") as r:
            assert r.status == 400 and "error" in await r.json()
        async with http.post(f"{sim.url}/control/shards/x/drop") as r:
            assert r.status == 400 and "error" in await r.json()
    assert sim.sim.limits.remaining == 1000  # nothing half-applied


# -- the supervisor with real discord.py clients -------------------------------------------------------


@dataclass
class FakeTable:
    """What ShardSupervisor reads of a RoutingTable."""

    shard_count: int | None
    shards: tuple[int, ...]
    version: int = 1

    def shards_for(self, pod: str) -> tuple[int, ...]:
        return self.shards


class PodHarness:
    """A ShardSupervisor with GatewayClients that count the messages they receive."""

    def __init__(self, sim: RunningSim) -> None:
        point_at(sim.api_url, sim.gateway_url)
        self.sim = sim
        self.received: Counter[int] = Counter()
        self.recent = RecentEvents()
        self.supervisor = ShardSupervisor("gateway-0", TOKEN, self.make, ready_timeout=20)
        self.version = 0

    def handle(self, guild_id: int, event: GatewayEvent) -> str:
        self.received[guild_id] += 1
        return "written"

    def make(self, shard_ids: list[int], count: int) -> GatewayClient:
        return GatewayClient(
            shard_ids=shard_ids, shard_count=count, handle=self.handle, recent=self.recent
        )

    async def apply(self, shards: set[int], count: int = 8) -> None:
        self.version += 1
        table: Any = FakeTable(count, tuple(sorted(shards)), self.version)
        await self.supervisor.apply(table)
        await eventually(lambda: self.supervisor.converged(table), timeout=20)

    def live_sockets(self) -> dict[int, object]:
        """shard -> its simulator-side websocket (another object after any reconnect). The
        objects, not their id(): a closed socket freed before the next one is made often
        leaves its address, hence its id(), to it, and a reconnect would go unseen."""
        return {s.shard[0]: s.ws for s in self.sim.sim.sessions.values() if s.ws is not None}


@pytest.fixture
async def pod(sim: RunningSim) -> AsyncIterator[PodHarness]:
    harness = PodHarness(sim)
    yield harness
    await harness.supervisor.stop()


def shard_of(guild_id: int, count: int = 8) -> int:
    return (guild_id >> 22) % count


async def test_changes_open_only_added_shards_and_never_touch_the_others(
    sim: RunningSim, pod: PodHarness
) -> None:
    await pod.apply({0, 1})
    assert sim.sim.gateway_counts["identifies"] == 2
    untouched = pod.live_sockets()
    assert set(untouched) == {0, 1}
    steady = [g for g in sim.sim.world.guilds if shard_of(g) in (0, 1)]
    assert steady, "the seeded guilds cover shards 0 and 1"

    async def stream() -> int:
        sent = 0
        for _ in range(40):
            for g in steady:
                guild = sim.sim.world.guild(g)
                user = next(m for m in guild.members if m != sim.sim.world.bot.id)
                message = sim.sim.world.message(guild, next(iter(guild.channels)), user, "hi")
                sim.sim.dispatch(g, "MESSAGE_CREATE", message)
                sent += 1
            await asyncio.sleep(0.02)
        return sent

    streaming = asyncio.create_task(stream())
    added = 0
    current = {0, 1}
    for extra in ({2}, {2, 3}, {3}, {3, 4, 5}, set(), {6}, {6, 7}, {7}):
        wanted = {0, 1} | extra
        added += len(wanted - current)
        await pod.apply(wanted)
        current = wanted
    sent = await streaming
    await eventually(lambda: sum(pod.received[g] for g in steady) == sent, timeout=10)

    counts = sim.sim.gateway_counts
    assert counts["identifies"] == 2 + added  # one IDENTIFY per added shard, nothing else
    assert counts["resumes"] == 0 and counts["refused"]["concurrency"] == 0
    assert all(pod.live_sockets()[s] is untouched[s] for s in (0, 1))  # never reconnected
    assert pod.supervisor.opened == 2 + added and pod.supervisor.connected_shards == [0, 1, 7]
    connected = sorted(s.shard[0] for s in sim.sim.sessions.values() if s.ws is not None)
    assert connected == [0, 1, 7]  # removed shards' sessions are closed


async def test_a_dropped_shard_session_reconnects_alone(sim: RunningSim, pod: PodHarness) -> None:
    await pod.apply({0, 1, 2})
    before = pod.live_sockets()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.url}/control/shards/1/drop") as r,
    ):
        assert (await r.json())["dropped"] == 1
    await eventually(lambda: pod.live_sockets().get(1, before[1]) is not before[1], timeout=15)
    after = pod.live_sockets()
    assert after[0] is before[0] and after[2] is before[2]  # the others never noticed
    counts = sim.sim.gateway_counts
    assert counts["identifies"] == 3 and counts["resumes"] == 1, counts  # shard 1 resumed
    assert pod.supervisor.restarts == 0  # discord.py reconnected it; the client never failed
    await eventually(lambda: pod.supervisor.connected_shards == [0, 1, 2], timeout=10)


async def test_an_exhausted_session_start_budget_is_waited_out_not_burnt(
    sim: RunningSim, pod: PodHarness
) -> None:
    await pod.apply({0})
    sim.sim.limits.set(remaining=0, reset_after=3.0)
    gateway_calls = sum(1 for c in sim.sim.calls if c.path.endswith("/gateway/bot"))
    started = time.monotonic()
    table: Any = FakeTable(8, (0, 1), 99)
    task = asyncio.create_task(pod.supervisor.apply(table))
    await asyncio.sleep(1.5)
    assert pod.supervisor.gate.blocked_seconds > 0  # it says it is waiting (a metric)
    assert sim.sim.gateway_counts["identifies"] == 1  # ... and does not identify meanwhile
    await eventually(lambda: pod.supervisor.converged(table), timeout=15)
    await task
    assert time.monotonic() - started >= 2.5  # shard 1 came up only after the reset
    counts = sim.sim.gateway_counts
    assert counts["lockouts"] == 0 and counts["refused"]["exhausted"] == 0
    assert counts["identifies"] == 2
    polls = sum(1 for c in sim.sim.calls if c.path.endswith("/gateway/bot")) - gateway_calls
    assert polls <= 3  # waited, did not loop on GET /gateway/bot
    assert pod.supervisor.gate.exhausted_waits >= 1 and pod.supervisor.gate.blocked_seconds == 0


async def test_two_pods_in_one_bucket_get_op9_once_and_both_connect(sim: RunningSim) -> None:
    """max_concurrency 1: pods do not coordinate; the loser of a race is told INVALID_SESSION
    and identifies again after the window, never spending the budget meanwhile."""
    sim.sim.limits.set(max_concurrency=1)
    a, b = PodHarness(sim), PodHarness(sim)
    try:
        await asyncio.gather(a.apply({0}, count=2), b.apply({1}, count=2))
        counts = sim.sim.gateway_counts
        assert counts["identifies"] == 2 and counts["lockouts"] == 0
        assert counts["refused"]["concurrency"] <= 1
        assert sim.sim.limits.remaining == 998
    finally:
        await a.supervisor.stop()
        await b.supervisor.stop()


async def test_a_shard_waiting_to_identify_again_does_not_hold_up_the_stop(
    sim: RunningSim,
) -> None:
    """A shard told INVALID_SESSION waits in the gate inside discord.py's re-IDENTIFY,
    which swallows a cancellation: stopping must still end at once (a pod's SIGTERM),
    not when the orchestrator's SIGKILL comes."""
    sim.sim.limits.set(max_concurrency=1)
    a, b = PodHarness(sim), PodHarness(sim)
    try:
        await a.apply({0}, count=2)  # bucket 0 used: b's IDENTIFY of shard 1 gets op 9
        applying = asyncio.create_task(b.supervisor.apply(FakeTable(2, (1,), 1)))
        await eventually(lambda: b.supervisor.gate.bucket_waits >= 1, timeout=10)
        assert sim.sim.gateway_counts["refused"]["concurrency"] == 1
        started = time.monotonic()
        await asyncio.wait_for(b.supervisor.stop(), 10)
        assert time.monotonic() - started < 3
        applying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await applying
        assert sim.sim.gateway_counts["identifies"] == 1  # b never identified again
    finally:
        await a.supervisor.stop()
        await b.supervisor.stop()


async def test_metrics_report_shard_changes_and_the_identify_budget(
    sim: RunningSim, pod: PodHarness
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    pod.supervisor.register_metrics(registry)
    await pod.apply({0, 1})
    await pod.apply({1})
    text = generate_latest(registry).decode()
    assert "modbot_gateway_shards_opened_total 2.0" in text
    assert "modbot_gateway_shards_closed_total 1.0" in text
    assert "modbot_gateway_identifies_total 2.0" in text
    assert "modbot_gateway_identify_blocked_seconds 0.0" in text
    # read before each IDENTIFY (both shards may read it before either identified)
    assert re.search(r"^modbot_gateway_session_starts_remaining (999|1000)\.0$", text, re.M)


# -- end to end: 100 pin changes on one pod of a running stack ------------------------------------------


# 16 shards, 8 of them movable: a shard is pinned again every 16 changes, by when its
# IDENTIFY bucket's 5 s window has mostly passed (with 8, every shard waited it out each
# time: most of the test's 73 s was Discord's pacing, not the pod's work)
SHARDS = 16


@pytest.mark.slow
async def test_100_pin_changes_on_one_pod_identify_only_added_shards(
    tmp_path: Any, pg_schema: str, redis_prefix: str
) -> None:
    from conftest import ADMIN, PG_URL, REDIS_URL
    from stack import running_stack

    async with running_stack(
        tmp_path,
        PG_URL,
        pg_schema,
        pods=2,
        guilds=0,
        shard_count=SHARDS,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
    ) as stack:
        http, sim = stack.http, stack.sim
        for shard in range(SHARDS):
            for j in range(2):
                body = {"guild_id": str(guild_on(shard, j, SHARDS)), "name": f"g{shard}-{j}"}
                async with http.post(f"{sim.url}/control/guilds", json=body) as r:
                    assert r.status == 200, await r.text()
        await stack.converge()
        # Start-up may have moved shards between the pods within seconds (the first pod
        # briefly owns everything): let Discord's 5 s IDENTIFY window of those pass, so any
        # INVALID_SESSION below would be the pod's own pacing failing.
        await asyncio.sleep(5.5)
        table = stack.proxy.tables.table
        own0, own1 = set(table.shards_for("gateway-0")), set(table.shards_for("gateway-1"))
        movable = sorted(own1 - own0)
        assert movable, f"gateway-1 holds shards gateway-0 does not: {own0} {own1}"
        pinned = [guild_on(s, 0, SHARDS) for s in movable]
        every = (guild_on(s, j, SHARDS) for s in range(SHARDS) for j in (0, 1))
        steady = [g for g in every if g not in pinned]
        pod0 = stack.pods["gateway-0"]
        before = dict(sim.sim.gateway_counts, refused=dict(sim.sim.gateway_counts["refused"]))
        identifies_before = before["identifies"]
        sockets = {sid: s.ws for sid, s in sim.sim.sessions.items() if s.ws is not None}
        assert len(sockets) == len(own0 | own1) == SHARDS

        sent: Counter[int] = Counter()
        stop = asyncio.Event()

        async def stream() -> None:  # ~10 messages/s per steady guild throughout the changes
            while not stop.is_set():
                body = {"guild_ids": [str(g) for g in steady], "count": 1}
                async with http.post(f"{sim.url}/control/messages", json=body) as r:
                    assert (await r.json())["sent"] == len(steady)
                sent.update(steady)
                await asyncio.sleep(0.1)

        async def pod0_has(shards: set[int], version: int) -> bool:
            async with http.get(f"{pod0.url}/readyz") as r:
                body = await r.json()
            return (
                r.status == 200
                and (body.get("table_version") or 0) >= version
                and set(body["shards"]) == shards
            )

        streaming = asyncio.create_task(stream())
        added = 0
        started = time.monotonic()
        try:
            for i in range(100):
                guild = pinned[(i // 2) % len(pinned)]
                if i % 2 == 0:  # pin onto gateway-0: its shard set grows by one
                    version = await stack.pin(guild, "gateway-0")
                    wanted = own0 | {shard_of(guild, SHARDS)}
                    added += 1
                else:  # unpin: it shrinks back
                    async with http.delete(
                        f"{stack.config.url}/v1/pins/{guild}",
                        headers={"Authorization": f"Bearer {ADMIN}"},
                    ) as r:
                        assert r.status == 200, await r.text()
                        version = int((await r.json())["version"])
                    wanted = own0
                deadline = time.monotonic() + 30
                while not await pod0_has(wanted, version):
                    assert time.monotonic() < deadline, f"change {i} not applied"
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await streaming
        elapsed = time.monotonic() - started

        counts = sim.sim.gateway_counts
        assert counts["identifies"] - identifies_before == added == 50  # one per added shard
        assert counts["resumes"] == before["resumes"]  # nothing else reconnected
        assert counts["lockouts"] == 0 and counts["refused"]["exhausted"] == 0
        assert counts["refused"]["concurrency"] == before["refused"]["concurrency"]
        assert sim.sim.limits.remaining == 1000 - counts["identifies"] >= 0
        still = {sid: s.ws for sid, s in sim.sim.sessions.items() if s.ws is not None}
        assert all(still.get(sid) is ws for sid, ws in sockets.items())  # 0 reconnects

        async def all_stored() -> bool:
            await stack.flush_pods()
            stored: Counter[int] = Counter()
            for pod in stack.pods.values():
                for g, n in pod.message_counts().items():
                    if g in sent:
                        stored[g] += n
            return stored == sent

        await eventually(all_stored, timeout=30)  # 0 lost, 0 doubled on untouched shards
        assert sum(sent.values()) > 100
        print(f"100 pin changes in {elapsed:.1f}s, {sum(sent.values())} messages streamed")


@pytest.mark.slow
async def test_a_pod_with_no_session_starts_left_waits_and_says_so(
    tmp_path: Any, pg_schema: str
) -> None:
    """A real pod process: an added shard waits for the reset (metric and log), no lockout."""
    from conftest import PG_URL
    from stack import running_stack

    async with running_stack(tmp_path, PG_URL, pg_schema, pods=2, guilds=0, shard_count=4) as stack:
        http, sim = stack.http, stack.sim
        table = stack.proxy.tables.table
        own0 = set(table.shards_for("gateway-0"))
        shard = next(s for s in range(4) if s not in own0)
        guild = guild_on(shard, 0, count=4)
        async with http.post(f"{sim.url}/control/guilds", json={"guild_id": str(guild)}) as r:
            assert r.status == 200
        identifies = sim.sim.gateway_counts["identifies"]
        async with http.post(
            f"{sim.url}/control/gateway/limits", json={"remaining": 0, "reset_after": 6}
        ) as r:
            assert r.status == 200
        await stack.pin(guild, "gateway-0")
        pod0 = stack.pods["gateway-0"]

        async def blocked() -> bool:
            async with http.get(f"{pod0.url}/metrics") as r:
                text = await r.text()
            m = re.search(r"^modbot_gateway_identify_blocked_seconds (\S+)$", text, re.M)
            return m is not None and float(m.group(1)) > 0

        await eventually(blocked, timeout=5)
        async with http.get(f"{pod0.url}/readyz") as r:
            assert r.status == 503  # the added shard is not there yet
        assert sim.sim.gateway_counts["identifies"] == identifies  # waiting, not identifying

        async def has_shard() -> bool:
            async with http.get(f"{pod0.url}/readyz") as r:
                return r.status == 200 and shard in (await r.json())["shards"]

        await eventually(has_shard, timeout=30)
        counts = sim.sim.gateway_counts
        assert counts["identifies"] == identifies + 1
        assert counts["lockouts"] == 0 and counts["refused"]["exhausted"] == 0
        assert "session starts exhausted" in Path(pod0.log_path).read_text()
