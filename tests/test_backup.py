"""Backups: Litestream replicates a gateway pod's SQLite file; a lost file is restored
from the replica with everything committed before the last sync."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from litestream import Litestream

from gateway_app.storage import GuildStore, MessageRow


def dump(path: str) -> dict[str, list[tuple]]:
    with closing(sqlite3.connect(path)) as conn:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("guilds", "message_stats", "mod_actions")
        }


async def write_messages(store: GuildStore, guild: int, start: int, n: int) -> None:
    for i in range(start, start + n):
        store.message_created(MessageRow(guild, i, 7, 9, 4, 16, float(i)))
    await store.flush()


async def test_a_lost_database_is_restored_from_the_replica(tmp_path: Path):
    db = str(tmp_path / "data" / "gateway.db")
    store = GuildStore(db)
    await store.open()
    await store.save_settings(1001, {"mod_log": "42"})
    ls = Litestream(db, tmp_path / "replica", tmp_path)
    try:
        ls.replicate()
        for batch in range(5):  # writes while replicating, across several syncs
            await write_messages(store, 1001 + batch % 2, batch * 200, 200)
        ls.replicated("SELECT count(*) FROM message_stats", 1000, tmp_path)
        before = dump(db)
    finally:
        await store.close()
        ls.stop()

    for suffix in ("", "-wal", "-shm"):  # the volume is lost
        Path(db + suffix).unlink(missing_ok=True)
    result = ls.restore()
    assert result.returncode == 0, result.stderr
    assert dump(db) == before
    # the init container's command is a no-op when the file is there
    assert ls.restore().returncode == 0 and dump(db) == before

    reopened = GuildStore(db)
    await reopened.open()
    try:
        assert await reopened.settings(1001) == {"mod_log": "42"}
        assert (await reopened.row_counts())["message_stats"] == 1000
    finally:
        await reopened.close()


def test_restore_with_no_replica_is_a_clean_no_op(tmp_path: Path):
    ls = Litestream(str(tmp_path / "gateway.db"), tmp_path / "empty-replica", tmp_path)
    result = ls.restore()
    assert result.returncode == 0 and not (tmp_path / "gateway.db").exists()
