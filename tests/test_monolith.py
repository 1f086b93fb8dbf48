"""``modbot-ring import-monolith``: a mod-bot database into a 3-pod stack, exactly once.

Happy path (every table, per-guild counts on the owners equal the source, a re-run writes
nothing, the migration export/import carries the new tables), fault (the importer killed
with SIGKILL mid-run, then re-run: identical result) and hostile inputs (not SQLite, an
unknown table layout, rows with no resolvable guild: one line, exit 2, nothing written).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import ADMIN, PG_URL, eventually
from monolith_gen import STATES, generate
from stack import CLI, MIGRATION, running_stack

from config_store.monolith import MonolithError, open_source
from modbot_client.monolith_schema import SOURCE_TABLES, chunk_checksum
from modbot_ring import RoutingTable

# rows each guild has per table in the generator (message_stats: counted in the source)
PER_GUILD = {
    "guilds": 1,
    "message_cache": 3,
    "channel_info": 4,
    "modbot_reports": 3,
    "mod_actions": 3,
    "escalations": 1,
    "escalation_records": 2,
    "honeypot_config": 1,
    "reactji_channeler_config": 1,
    "tickets_config": 1,
    "user_threads": 1,
    "deletion_log_threads": 1,
    "guild_subscriptions": 1,
}


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


def cli_env(config_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "MODBOT_CONFIG_URL": config_url,
        "MODBOT_ADMIN_TOKEN": ADMIN,
        "MODBOT_MIGRATION_TOKEN": MIGRATION,
    }


# -- hostile inputs: refused before anything is contacted or written -------------------------


def test_a_text_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("this is not a database\n" * 100)
    r = cli("import-monolith", str(path), "--config-url", "http://127.0.0.1:9")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "is not a SQLite database" in r.stderr
    missing = cli("import-monolith", str(tmp_path / "nope.db"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_unknown_table_layouts_are_refused(tmp_path: Path) -> None:
    extra_table = tmp_path / "extra.db"
    generate(extra_table, guilds=2, messages=10)
    with sqlite3.connect(extra_table) as conn:
        conn.execute("CREATE TABLE polls (id TEXT, guild_id TEXT)")
    with pytest.raises(MonolithError, match="unknown schema version: table.s. polls") as exc:
        open_source(str(extra_table))
    assert exc.value.code == 2

    renamed = tmp_path / "renamed.db"
    generate(renamed, guilds=2, messages=10)
    with sqlite3.connect(renamed) as conn:
        conn.execute("ALTER TABLE message_stats RENAME COLUMN sent_at TO sent")
    r = cli("import-monolith", str(renamed), "--config-url", "http://127.0.0.1:9")
    assert r.returncode == 2, r.stderr
    assert "unknown schema version: table message_stats lacks column(s) sent_at" in r.stderr
    assert r.stderr.count("\n") == 1

    other_app = tmp_path / "other.db"
    with sqlite3.connect(other_app) as conn:
        conn.execute("CREATE TABLE kysely_migration (name TEXT)")
    with pytest.raises(MonolithError, match="no guilds table"):
        open_source(str(other_app))


@pytest.mark.parametrize("state", STATES)
def test_every_migration_state_is_recognised(tmp_path: Path, state: str) -> None:
    path = tmp_path / f"{state}.db"
    info = generate(path, state=state, guilds=3, messages=30)
    source = open_source(str(path))
    try:
        assert source.state == state
        assert set(source.columns) == {t for t in info["tables"] if t in SOURCE_TABLES}
        assert set(source.dropped) == {"users", "sessions"}
    finally:
        source.conn.close()


# -- against a 3-pod stack --------------------------------------------------------------------


def pod_counts(stack: Any) -> dict[str, dict[str, dict[int, int]]]:
    """pod -> pod table -> guild -> rows."""
    out: dict[str, dict[str, dict[int, int]]] = {}
    for name, pod in stack.pods.items():
        out[name] = {
            t: dict(pod.rows(f"SELECT guild_id, count(*) FROM {t} GROUP BY guild_id"))
            for t in [*PER_GUILD, "message_stats"]
        }
    return out


def expected_counts(path: Path, guilds: list[int]) -> dict[str, dict[int, int]]:
    with sqlite3.connect(path) as conn:
        messages = {
            int(g): n
            for g, n in conn.execute(
                "SELECT guild_id, count(*) FROM message_stats GROUP BY guild_id"
            )
        }
    out = {t: dict.fromkeys(guilds, n) for t, n in PER_GUILD.items()}
    out["message_stats"] = messages
    return out


def check_owners(stack: Any, table: RoutingTable, want: dict[str, dict[int, int]]) -> None:
    have = pod_counts(stack)
    for t, per_guild in want.items():
        for gid, n in per_guild.items():
            owner = table.owner(gid)
            assert have[owner][t].get(gid, 0) == n, (t, gid, owner)
            for other in have:
                if other != owner:
                    assert gid not in have[other][t], (t, gid, other)


async def routing(stack: Any) -> RoutingTable:
    async with stack.http.get(
        f"{stack.config.url}/v1/table", headers={"Authorization": f"Bearer {ADMIN}"}
    ) as r:
        return RoutingTable.from_json(await r.text())


async def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args, env=env)


@pytest.mark.slow
async def test_import_is_complete_resumable_and_idempotent(tmp_path: Path, pg_schema: str) -> None:
    source = tmp_path / "modbot.db"
    info = generate(source, guilds=50, messages=20_000, orphans=2)
    want = expected_counts(source, info["guilds"])
    async with running_stack(
        tmp_path, PG_URL, pg_schema, pods=3, guilds=1, shard_count=None
    ) as stack:
        env = cli_env(stack.config.url)
        table = await routing(stack)
        # the ring is keyed by guild id: the 50 guilds spread over all three pods
        assert {table.owner(g) for g in info["guilds"]} == set(stack.pods)

        # dry run: per-pod counts, nothing written
        dry = await run_cli("import-monolith", str(source), "--dry-run", "--json", env=env)
        assert dry.returncode == 0, dry.stderr
        report = json.loads(dry.stdout)
        per_pod = report["rows_per_pod"]
        for pod in stack.pods:
            assert per_pod.get(pod, {}).get("message_stats", 0) == sum(
                n for g, n in want["message_stats"].items() if table.owner(g) == pod
            )
        assert report["rows_skipped"]["escalation_records"] == {
            "no guild: its escalation is not in escalations": 2
        }
        assert "web logins" in report["tables_dropped"]["sessions"]["reason"]
        assert all(not c["message_stats"] for c in pod_counts(stack).values())

        # rows without a resolvable guild: refused in one line, nothing written
        refused = await run_cli("import-monolith", str(source), "--no-progress", env=env)
        assert refused.returncode == 2
        assert refused.stderr.count("\n") == 1 and "6 row(s) cannot be imported" in refused.stderr
        assert all(not c["message_stats"] and not c["guilds"] for c in pod_counts(stack).values())

        # kill -9 mid-run
        args = [CLI, "import-monolith", str(source), "--skip-bad-rows", "--chunk-rows", "200"]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await eventually(  # well into the import (or already through it): kill it there
            lambda: (
                proc.poll() is not None
                or sum(sum(c["message_stats"].values()) for c in pod_counts(stack).values()) >= 2000
            ),
            timeout=60,
            interval=0.01,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = sum(sum(c["message_stats"].values()) for c in pod_counts(stack).values())
        assert 0 < partial < 20_000, f"the importer was not killed mid-run ({partial} rows)"
        on_pods = sum(sum(n.values()) for c in pod_counts(stack).values() for n in c.values())

        # re-run: completes; identical to the source
        again = await run_cli("import-monolith", str(source), "--skip-bad-rows", "--json", env=env)
        assert again.returncode == 0, again.stderr
        result = json.loads(again.stdout)
        total = sum(sum(c.values()) for c in want.values())
        assert sum(sum(c.values()) for c in result["rows_written"].values()) == total - on_pods
        check_owners(stack, table, want)
        assert "import [" in again.stderr  # the progress bar

        # once more: nothing written
        third = await run_cli("import-monolith", str(source), "--skip-bad-rows", "--json", env=env)
        assert third.returncode == 0, third.stderr
        third_report = json.loads(third.stdout)
        assert sum(sum(c.values()) for c in third_report["rows_written"].values()) == 0
        assert third_report["rows_skipped"]["mod_actions"] == {"no guild: guild_id is empty": 2}
        check_owners(stack, table, want)

        # the pods' import endpoint refuses what is not a verified chunk of its own guilds
        await refuses_bad_chunks(stack, table, info["guilds"])
        check_owners(stack, table, want)

        # the migration export/import carries mod-bot's tables (checksums included)
        gid = max(want["message_stats"], key=lambda g: want["message_stats"][g])
        owner = table.owner(gid)
        target = next(p for p in stack.pods if p != owner)
        migration = await stack.migrate(gid, target)
        done = await stack.wait_migration(migration["id"])
        assert done["state"] == "done", done
        moved = pod_counts(stack)
        for t, per_guild in want.items():
            assert moved[target][t].get(gid, 0) == per_guild[gid], t
            assert gid not in moved[owner][t], t
        progress = stack.pods[target].rows(
            "SELECT count(*) FROM monolith_progress WHERE guild_id = ?", (gid,)
        )
        assert progress[0][0] == len(PER_GUILD) + 1  # every source table of the guild
        # and a re-run after the move still writes nothing
        fourth = await run_cli("import-monolith", str(source), "--skip-bad-rows", "--json", env=env)
        assert fourth.returncode == 0, fourth.stderr
        assert sum(sum(c.values()) for c in json.loads(fourth.stdout)["rows_written"].values()) == 0


async def refuses_bad_chunks(stack: Any, table: RoutingTable, guilds: list[int]) -> None:
    gid = guilds[0]
    owner = table.owner(gid)
    other = next(p for p in stack.pods if p != owner)
    row = [10**9, gid, 10**9 + 1, 2, 3, 4, 5, 1_700_000_000.0, None, None, None, None, None, None]
    chunk = {
        "table": "message_stats",
        "rows": [row],
        "guilds": {str(gid): {"epoch": 0, "through": 10**9}},
        "count": 1,
        "checksum": chunk_checksum("message_stats", [row]),
    }
    auth = {"Authorization": f"Bearer {MIGRATION}"}

    async def post(pod: str, body: Any, headers: dict[str, str] = auth) -> tuple[int, str]:
        url = f"{stack.pods[pod].url}/internal/monolith/import"
        async with stack.http.post(url, json=body, headers=headers) as r:
            return r.status, (await r.json())["error"]

    assert await post(owner, {**chunk, "checksum": "0" * 64}) == (
        422,
        "rows do not match their checksum",
    )
    assert (await post(owner, {**chunk, "count": 2}))[0] == 422
    assert (await post(owner, {**chunk, "guilds": {str(gid): {"epoch": 0, "through": 5}}}))[
        0
    ] == 422
    assert (await post(owner, {**chunk, "table": "sessions"}))[0] == 422
    assert (await post(owner, {**chunk, "rows": [row[:5]]}))[0] == 422
    status, error = await post(other, chunk)
    assert status == 409 and "not owned here" in error
    status, _ = await post(owner, chunk, {"Authorization": "Bearer internal-secret"})
    assert status == 403  # the proxy's forwarding token cannot import


@pytest.mark.slow
async def test_a_guild_migrating_mid_import_takes_its_progress_along(
    tmp_path: Path, pg_schema: str
) -> None:
    """The routing table changes under the importer: a half-imported guild moves to another
    pod (rows and high-water marks travel with it); the importer waits it out and resumes
    on the new owner. Nothing lost, nothing twice."""
    source = tmp_path / "modbot.db"
    info = generate(source, guilds=20, messages=20_000)
    want = expected_counts(source, info["guilds"])
    async with running_stack(
        tmp_path, PG_URL, pg_schema, pods=3, guilds=1, shard_count=None
    ) as stack:
        env = cli_env(stack.config.url)
        table = await routing(stack)
        big = max(want["message_stats"], key=lambda g: want["message_stats"][g])
        owner = table.owner(big)
        target = next(p for p in stack.pods if p != owner)
        args = [
            CLI,
            "import-monolith",
            str(source),
            "--chunk-rows",
            "100",
            "--no-progress",
            "--json",
        ]
        proc = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

        def importing() -> bool:  # the big guild's first rows are in, the import goes on
            assert proc.poll() is None, "the import ended too soon"
            sql = "SELECT 1 FROM message_stats WHERE guild_id = ? LIMIT 1"
            return bool(stack.pods[owner].rows(sql, (big,)))

        await eventually(importing, timeout=60, interval=0.01)
        migration = await stack.migrate(big, target)
        done = await stack.wait_migration(migration["id"])
        assert done["state"] == "done", done
        out, err = await asyncio.to_thread(proc.communicate, timeout=300)
        assert proc.returncode == 0, err
        print(err)  # "resuming on the current table" when a chunk met the move
        assert sum(sum(c.values()) for c in json.loads(out)["rows_written"].values()) > 0
        check_owners(stack, await routing(stack), want)
        assert (await routing(stack)).owner(big) == target
