"""Retention (issue 15): old rows pruned in small batches, the newest kept, guilds that a
migration touches left alone, bad settings refused at start, a guild with a million old
rows pruned without blocking the batch writer or the event loop, and kill -9 mid-prune."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import eventually, free_port
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from stack import CLI

from gateway_app import storage
from gateway_app.retention import RETENTION_FLAGS, Retention, RetentionPolicy, retention_days
from gateway_app.storage import GuildStore, ImportError_, MessageRow
from modbot_cli.main import main

NOW = 1_790_000_000.0  # a fixed "now": rows are dated relative to it
DAY = 86400.0
G1, G2 = 111_111_111_111_111_111, 222_222_222_222_222_222


def seed_messages(path: str, guild: int, count: int, age_days: float, first_id: int) -> None:
    """``count`` message rows of ``guild``, ``age_days`` old (one second apart), in C."""
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute(
            "WITH RECURSIVE c(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM c WHERE n + 1 < ?)"
            " INSERT INTO message_stats (guild_id, message_id, channel_id, author_id,"
            " word_count, char_count, sent_at) SELECT ?, ? + n, 5, 7 + n % 50, 3, 15, ? + n FROM c",
            (count, guild, first_id, NOW - age_days * DAY),
        )
        conn.commit()


def seed_small_tables(path: str, guild: int, age_days: float, n: int, first: int) -> None:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        at = NOW - age_days * DAY
        conn.executemany(
            "INSERT INTO reported_messages (guild_id, reporter_id, reported_user_id, message_id,"
            " channel_id, reason, content, created_at) VALUES (?, 1, 2, ?, 5, 'spam', 'x', ?)",
            [(guild, first + i, at + i) for i in range(n)],
        )
        conn.executemany(
            "INSERT INTO mod_actions (guild_id, user_id, action_type, created_at)"
            " VALUES (?, ?, 'ban', ?)",
            [(guild, first + i, at + i) for i in range(n)],
        )
        conn.commit()


def count(path: str, sql: str, params: tuple[object, ...] = ()) -> int:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        return int(conn.execute(sql, params).fetchone()[0])


async def opened(path: Path) -> GuildStore:
    store = GuildStore(str(path))
    await store.open()
    return store


def policy(**days: int | None) -> RetentionPolicy:
    base: dict[str, int | None] = {
        "message_stats": 90,
        "reported_messages": None,
        "mod_actions": None,
    }
    return RetentionPolicy(days={**base, **days}, batch=7, pause=0.0)


# -- happy path ----------------------------------------------------------------------------------


async def test_old_rows_are_pruned_in_batches_and_the_newest_kept(tmp_path):
    db = tmp_path / "pod.db"
    store = await opened(db)
    try:
        seed_messages(str(db), G1, 30, age_days=120, first_id=1_000)  # past 90 days
        seed_messages(str(db), G1, 10, age_days=89, first_id=5_000)  # inside
        seed_messages(str(db), G2, 15, age_days=91, first_id=9_000)
        seed_small_tables(str(db), G1, age_days=40, n=4, first=100)  # reports: 30 days
        seed_small_tables(str(db), G1, age_days=5, n=3, first=200)
        retention = Retention(store, policy(reported_messages=30))
        report = await retention.run_once(now=NOW)
        assert report.deleted == {"message_stats": 45, "reported_messages": 4}
        # batches of 7: 30 -> 5 batches (the last one short), 15 -> 3, 4 -> 1
        assert report.batches == 5 + 3 + 1
        assert report.longest_batch > 0 and not report.skipped
        path = str(db)
        assert count(path, "SELECT count(*) FROM message_stats WHERE guild_id = ?", (G1,)) == 10
        assert count(path, "SELECT count(*) FROM message_stats WHERE guild_id = ?", (G2,)) == 0
        assert count(path, "SELECT min(message_id) FROM message_stats") == 5_000, "newest kept"
        assert count(path, "SELECT count(*) FROM reported_messages") == 3
        assert count(path, "SELECT count(*) FROM mod_actions") == 7, "forever: all kept"
        again = await retention.run_once(now=NOW)  # nothing left to do
        assert again.deleted == {"message_stats": 0, "reported_messages": 0}
        assert again.batches == 0
        # the counters, as Prometheus scrapes them
        registry = CollectorRegistry()
        registry.register(retention)
        fams = {
            f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
        }
        deleted = {
            s.labels["table"]: s.value
            for s in fams["modbot_gateway_retention_rows_deleted"].samples
        }
        assert deleted == {"message_stats": 45, "reported_messages": 4, "mod_actions": 0}
        assert fams["modbot_gateway_retention_batches"].samples[0].value == 9
        assert fams["modbot_gateway_retention_last_run_timestamp_seconds"].samples[0].value > 0
        for fam in fams.values():
            assert len(fam.documentation.split()) >= 3
            for sample in fam.samples:
                assert sample.name.endswith("_total") == (fam.type == "counter"), sample.name
    finally:
        await store.close()


async def test_guilds_a_migration_touches_or_not_owned_are_left_alone(tmp_path):
    db = tmp_path / "pod.db"
    store = await opened(db)
    try:
        seed_messages(str(db), G1, 20, age_days=100, first_id=1)
        seed_messages(str(db), G2, 20, age_days=100, first_id=100)
        report = await Retention(store, policy(), allowed=lambda g: g != G2).run_once(now=NOW)
        assert report.skipped == {G2} and report.deleted["message_stats"] == 20
        seed_messages(str(db), G1, 20, age_days=100, first_id=1_000)
        await store.export_guild(G1, mode="precopy")  # a migration's pre-copy
        report = await Retention(store, policy()).run_once(now=NOW)
        assert G1 in report.skipped
        assert count(str(db), "SELECT count(*) FROM message_stats WHERE guild_id = ?", (G1,)) == 20
    finally:
        await store.close()


async def test_it_runs_periodically_and_a_failed_run_is_counted_not_fatal(tmp_path):
    db = tmp_path / "pod.db"
    store = await opened(db)
    broken = {"yes": True}

    def allowed(_guild: int) -> bool:
        if broken["yes"]:
            raise RuntimeError("table not loaded")
        return True

    retention = Retention(
        store,
        RetentionPolicy(
            days={"message_stats": 1, "reported_messages": None}, interval=0.05, pause=0.0
        ),
        allowed,
    )
    task = asyncio.create_task(retention.run_forever())
    try:
        seed_messages(str(db), G1, 50, age_days=3 + (NOW - time.time()) / DAY, first_id=1)
        await eventually(lambda: retention.errors >= 2, timeout=5)
        assert count(str(db), "SELECT count(*) FROM message_stats") == 50
        broken["yes"] = False  # the next run succeeds
        await eventually(lambda: retention.deleted_total["message_stats"] == 50, timeout=5)
        assert retention.last_run_at > 0 and not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def test_under_disk_pressure_it_runs_now_not_at_the_next_interval(tmp_path):
    db = tmp_path / "pod.db"
    store = await opened(db)
    retention = Retention(
        store, RetentionPolicy(days={"message_stats": 1}, interval=3600, pause=0.0)
    )
    seed_messages(str(db), G1, 30, age_days=3 + (NOW - time.time()) / DAY, first_id=1)
    store.pressure = "disk almost full (test)"  # what check_disk sets
    task = asyncio.create_task(retention.run_forever())
    try:
        await eventually(lambda: retention.deleted_total["message_stats"] == 30, timeout=5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.pressure = None
        await store.close()


async def test_the_pod_prunes_guilds_it_owns_unless_a_migration_holds_them(tmp_path):
    """The pod's rule (server.Pod._may_prune): owned, not migrating, not frozen or holding.
    "released" is where a migration's target stays once the guild is its own: pruned."""
    from gateway_app.server import Pod, PodSettings
    from modbot_ring import Pod as RingPod
    from modbot_ring import RoutingTable

    pod = Pod(PodSettings(name="gateway-0", database=str(tmp_path / "pod.db")))
    try:
        assert not pod._may_prune(G1), "no table yet: nothing is pruned"
        one = RoutingTable([RingPod("gateway-0")], version=1)
        pod.table_client.table = one
        assert pod._may_prune(G1)
        for state, allowed in (("released", True), ("frozen", False), ("holding", False)):
            pod.gate.fences[G1] = (2, state)
            assert pod._may_prune(G1) is allowed, state
        pod.gate.fences.pop(G1)
        pod.table_client.table = RoutingTable(
            [RingPod("gateway-0"), RingPod("gateway-1")], version=2, migrating={G1: "gateway-1"}
        )
        assert not pod._may_prune(G1), "migrating away"
        pod.table_client.table = RoutingTable(
            [RingPod("gateway-0"), RingPod("gateway-1")], version=3, pins={G1: "gateway-1"}
        )
        assert not pod._may_prune(G1), "another pod owns it"
    finally:
        await pod.commands.close()
        await pod.config.close()


# -- migrations: a prune never splits an export, nor lands between pre-copy and delta --------------


async def test_exports_taken_while_pruning_match_their_counts_and_checksum(tmp_path):
    source = await opened(tmp_path / "source.db")
    targets = []
    try:
        seed_messages(source.path, G1, 6_000, age_days=100, first_id=1)
        seed_messages(source.path, G1, 500, age_days=1, first_id=100_000)
        retention = Retention(
            source, RetentionPolicy(days={"message_stats": 90}, batch=300, pause=0.0)
        )
        # EXPORT_QUIET would skip the guild after the first export: here every export must
        # interleave with the prune, which the export lock alone keeps consistent
        storage.EXPORT_QUIET, quiet = 0.0, storage.EXPORT_QUIET
        try:
            pruning = asyncio.create_task(retention.run_once(now=NOW))
            exports = []
            while not pruning.done():
                exports.append(await source.export_guild(G1, mode="full"))
                await asyncio.sleep(0)  # a yield, not a wait: the prune runs in between
            await pruning
        finally:
            storage.EXPORT_QUIET = quiet
        sizes = {e["counts"]["message_stats"] for e in exports}
        assert len(sizes) >= 2, f"the exports did not interleave with the prune: {sizes}"
        for exported in exports:
            assert exported["counts"]["message_stats"] == exported["totals"]["message_stats"]
        distinct = {e["counts"]["message_stats"]: e for e in exports}
        for n, exported in enumerate(list(distinct.values())[:5]):
            target = await opened(tmp_path / f"target{n}.db")
            targets.append(target)
            # verifies counts, checksum and the read-back totals, or raises
            await target.import_guild(G1, 1, exported)
    finally:
        for store in [source, *targets]:
            await store.close()


async def test_a_prune_between_pre_copy_and_delta_is_what_the_quiet_rule_prevents(tmp_path):
    """A migration copies the bulk first and the rows changed since inside the freeze. A
    prune in between would leave the target with rows the source no longer counts: the
    delta import refuses (counts differ). The store skips a guild it exported lately."""
    for quiet in (storage.EXPORT_QUIET, 0.0):
        src = await opened(tmp_path / f"src-{quiet}.db")
        dst = await opened(tmp_path / f"dst-{quiet}.db")
        storage.EXPORT_QUIET, saved = quiet, storage.EXPORT_QUIET
        try:
            seed_messages(src.path, G1, 200, age_days=100, first_id=1)
            seed_messages(src.path, G1, 50, age_days=1, first_id=10_000)
            precopy = await src.export_guild(G1, mode="precopy")
            await dst.import_guild(G1, 1, precopy)
            report = await Retention(src, policy()).run_once(now=NOW)
            delta = await src.export_guild(G1, mode="delta", message_ids=set())
            if quiet:
                assert G1 in report.skipped
                await dst.import_guild(G1, 1, delta)
                assert count(dst.path, "SELECT count(*) FROM message_stats") == 250
            else:  # the failure the rule prevents
                assert report.deleted["message_stats"] == 200
                with pytest.raises(ImportError_, match="message_stats: 250 rows stored, 50"):
                    await dst.import_guild(G1, 1, delta)
        finally:
            storage.EXPORT_QUIET = saved
            await src.close()
            await dst.close()


# -- hostile: settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1", "90", "36500", " 30 ", "FOREVER", "forever"])
def test_retention_days_accepts_whole_days_or_forever(text):
    expected = None if text.strip().lower() == "forever" else int(text)
    assert retention_days(text) == expected


BAD = [
    ("MODBOT_RETENTION_MESSAGE_STATS_DAYS", "0", "would delete every row"),
    ("MODBOT_RETENTION_MESSAGE_STATS_DAYS", "-5", "would delete every row"),
    ("MODBOT_RETENTION_REPORTED_MESSAGES_DAYS", "1.5", "whole number of days"),
    ("MODBOT_RETENTION_MOD_ACTIONS_DAYS", "ninety", "whole number of days"),
    ("MODBOT_RETENTION_MESSAGE_STATS_DAYS", "", "whole number of days"),
    ("MODBOT_RETENTION_MESSAGE_STATS_DAYS", "99999999", "at most 36500"),
    ("MODBOT_RETENTION_INTERVAL", "0", "above 0"),
    ("MODBOT_RETENTION_INTERVAL", "nan", "above 0"),
    ("MODBOT_RETENTION_BATCH", "0", "at least 1"),
    ("MODBOT_RETENTION_BATCH", "2.5", "whole number"),
    ("MODBOT_RETENTION_PAUSE", "-1", "at least 0"),
    ("MODBOT_DISK_RESERVE_BYTES", "-1", "at least 0"),
    ("MODBOT_DISK_RESERVE_BYTES", "64Mi", "whole number"),
    ("MODBOT_DISK_MAX_USED", "0", "above 0"),
    ("MODBOT_DISK_MAX_USED", "95", "at most 1"),
]


@pytest.mark.parametrize("env, value, why", BAD, ids=[f"{e}={v!r}" for e, v, _ in BAD])
def test_a_bad_retention_or_disk_setting_is_refused_with_one_line(
    tmp_path, monkeypatch, capsys, env, value, why
):
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit) as exited:
        main(["serve", "gateway", "--database", str(tmp_path / "x.db"), "--port", "1"])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"${env}={value!r}" in lines[0] and why in lines[0], lines[0]
    assert not (tmp_path / "x.db").exists(), "nothing started"


@pytest.mark.parametrize("value", ["0", "ninety"])
def test_the_pod_process_refuses_a_bad_retention_at_start(tmp_path, value):
    """The same through the real entry point: exit 2, one line, nothing started."""
    done = subprocess.run(
        [CLI, "serve", "gateway", "--port", str(free_port()), "--database", str(tmp_path / "x.db")]
        + ["--config-url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MODBOT_RETENTION_MESSAGE_STATS_DAYS": value},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "MODBOT_RETENTION_MESSAGE_STATS_DAYS" in lines[0], done.stderr
    assert not (tmp_path / "x.db").exists()


def test_every_retention_flag_has_its_env_var_and_a_safe_default():
    by_env = {f.env: f for f in RETENTION_FLAGS}
    assert by_env["MODBOT_RETENTION_MESSAGE_STATS_DAYS"].default == "90"
    assert by_env["MODBOT_RETENTION_MOD_ACTIONS_DAYS"].default == "forever"
    assert by_env["MODBOT_DISK_MAX_USED"].default == 0.95
    for flag in RETENTION_FLAGS:  # every default passes its own check
        flag.type(str(flag.default))


# -- a guild with a million old rows, pruned while events are written ------------------------------

BIG = int(os.environ.get("MODBOT_TEST_PRUNE_ROWS", "1000000"))


@pytest.mark.slow
async def test_a_million_old_rows_are_pruned_without_blocking_writes_or_the_loop(tmp_path):
    db = tmp_path / "big.db"
    store = GuildStore(str(db))
    await store.open()
    try:
        t0 = time.monotonic()
        seed_messages(str(db), G1, BIG, age_days=400, first_id=1)
        seed_messages(str(db), G1, 1_000, age_days=10, first_id=BIG + 10)
        seeded = time.monotonic() - t0
        retention = Retention(
            store, RetentionPolicy(days={"message_stats": 90}, batch=5_000, pause=0.005)
        )
        lags: list[float] = []
        flushes: list[float] = []
        stop = asyncio.Event()

        async def loop_probe() -> None:  # how late a 10 ms sleep wakes up
            while not stop.is_set():
                t = time.monotonic()
                await asyncio.sleep(0.01)  # the probe: how late it wakes is the lag
                lags.append(time.monotonic() - t - 0.01)

        async def live_writes() -> None:  # gateway events meanwhile, each batch flushed
            n = 0
            while not stop.is_set():
                for _ in range(20):
                    n += 1
                    store.message_created(MessageRow(G2, 10**9 + n, 5, 7, 3, 15, time.time()))
                t = time.monotonic()
                await store.flush()
                flushes.append(time.monotonic() - t)
                await asyncio.sleep(0.02)  # the writes' pace

        probes = [asyncio.create_task(loop_probe()), asyncio.create_task(live_writes())]
        t0 = time.monotonic()
        report = await retention.run_once(now=time.time())
        took = time.monotonic() - t0
        stop.set()
        await asyncio.gather(*probes)
        assert report.deleted["message_stats"] == BIG
        assert (
            count(str(db), "SELECT count(*) FROM message_stats WHERE guild_id = ?", (G1,)) == 1_000
        )
        assert count(str(db), "SELECT count(*) FROM message_stats WHERE guild_id = ?", (G2,)) >= 20
        print(
            f"\nseeded {BIG:,} rows in {seeded:.1f}s; pruned in {took:.1f}s"
            f" ({BIG / took:,.0f} rows/s), {report.batches} batches of 5,000:"
            f" longest lock {report.longest_batch * 1000:.0f} ms;"
            f" writer flush max {max(flushes) * 1000:.0f} ms over {len(flushes)} flushes;"
            f" event loop lag max {max(lags) * 1000:.0f} ms"
        )
        # generous bounds for a busy 2-core machine; the figures above are what to read
        assert report.longest_batch < 1.0
        assert max(flushes) < 2.0, "the batch writer got the lock between batches"
        assert max(lags) < 0.25, "the event loop never waited for SQLite"
    finally:
        await store.close()


# -- fault: kill -9 in the middle of a prune -------------------------------------------------------

PRUNER = textwrap.dedent(
    """
    import asyncio, sys
    from gateway_app.retention import Retention, RetentionPolicy
    from gateway_app.storage import GuildStore

    async def main():
        store = GuildStore(sys.argv[1])
        await store.open()
        policy = RetentionPolicy(days={"message_stats": 90}, batch=1000, pause=0.01)
        await Retention(store, policy).run_once(now=float(sys.argv[2]))
        print("done", flush=True)

    asyncio.run(main())
    """
)


async def test_kill_9_during_a_prune_leaves_the_database_consistent(tmp_path):
    db = str(tmp_path / "pod.db")
    store = await opened(tmp_path / "pod.db")  # the schema
    await store.close()
    old, new = 100_000, 2_000
    seed_messages(db, G1, old, age_days=100, first_id=1)
    seed_messages(db, G1, new, age_days=1, first_id=10_000_000)
    proc = subprocess.Popen([sys.executable, "-c", PRUNER, db, str(NOW)])
    try:

        def mid_prune() -> bool:  # a few batches gone, the prune still running
            assert proc.poll() is None, "the prune finished before it could be killed"
            return count(db, "SELECT count(*) FROM message_stats") <= old + new - 5_000

        await eventually(mid_prune, timeout=30, interval=0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        left = conn.execute("SELECT count(*) FROM message_stats").fetchone()[0]
        newest = conn.execute(
            "SELECT count(*) FROM message_stats WHERE message_id >= 10000000"
        ).fetchone()[0]
    deleted = old + new - left
    assert 0 < deleted < old, "killed mid-prune"
    assert deleted % 1000 == 0, "whole batches only: each is one transaction"
    assert newest == new
    # a restarted pod finishes the job
    store = await opened(tmp_path / "pod.db")
    try:
        finish = RetentionPolicy(days={"message_stats": 90}, batch=5000, pause=0.0)
        report = await Retention(store, finish).run_once(now=NOW)
        assert report.deleted["message_stats"] == old - deleted
        assert count(db, "SELECT count(*) FROM message_stats") == new
    finally:
        await store.close()
