"""Writes a mod-bot database (the schema of ../shared/notes/modbot-facts.md) at any of its
migration states, for the import-monolith tests and benchmark.

Ids are TEXT snowflakes, ``sent_at`` is milliseconds, other times are SQLite datetime
text, as mod-bot (Kysely on SQLite) stores them. Older states lack the later tables and
the optional columns. ``orphans`` adds rows whose guild cannot be found (a channel no
message names, a vote on a deleted escalation, an empty guild id).
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

from modbot_client.monolith_schema import DROPPED, MIGRATION_STATES, SOURCE_TABLES

DISCORD_EPOCH_MS = 1_420_070_400_000
STATES = [label for label, _ in MIGRATION_STATES]


def snowflake(rng: random.Random, ms: int) -> str:
    return str(((ms - DISCORD_EPOCH_MS) << 22) | rng.getrandbits(22))


def tables_at(state: str) -> list[str]:
    """The tables a database at ``state`` has, oldest first."""
    out: list[str] = []
    for label, tables in MIGRATION_STATES:
        out += tables
        if label == state:
            return out
    raise ValueError(f"unknown state {state!r}; known: {', '.join(STATES)}")


def create_schema(conn: sqlite3.Connection, state: str, *, optional: bool = True) -> list[str]:
    present = tables_at(state)
    for name in present:
        if name in DROPPED:
            cols = DROPPED[name][0]
        else:
            spec = SOURCE_TABLES[name]
            # older states: the optional columns came with later migrations
            cols = spec.columns if optional and state >= "2025-07" else spec.required
        defs = ", ".join(
            f'"{c}" INTEGER'
            if c in ("char_count", "word_count", "sent_at", "react_count")
            else f'"{c}" TEXT'
            for c in cols
        )
        conn.execute(f'CREATE TABLE "{name}" ({defs})')
    conn.execute("CREATE TABLE kysely_migration (name TEXT PRIMARY KEY, timestamp TEXT)")
    conn.execute("CREATE TABLE kysely_migration_lock (id TEXT PRIMARY KEY, is_locked INTEGER)")
    for label, _ in MIGRATION_STATES:
        conn.execute("INSERT INTO kysely_migration VALUES (?, ?)", (f"{label}-01_migration", label))
        if label == state:
            break
    return present


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]


def _insert(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    cols = _columns(conn, table)
    marks = ", ".join("?" for _ in cols)
    conn.executemany(
        f'INSERT INTO "{table}" VALUES ({marks})', [[r.get(c) for c in cols] for r in rows]
    )


def generate(
    path: str | Path,
    *,
    state: str = STATES[-1],
    guilds: int = 50,
    messages: int = 20_000,
    seed: int = 7,
    orphans: int = 0,
) -> dict[str, Any]:
    """Write the database; returns the guild ids and the row counts per table."""
    rng = random.Random(seed)
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA journal_mode=DELETE")
    present = create_schema(conn, state)
    now_ms = 1_790_000_000_000
    gids = [snowflake(rng, now_ms - rng.randrange(10**11)) for _ in range(guilds)]
    channels = {g: [snowflake(rng, now_ms - rng.randrange(10**10)) for _ in range(4)] for g in gids}
    users = [snowflake(rng, now_ms - rng.randrange(10**11)) for _ in range(200)]
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in present}

    def when(ms: int) -> str:
        import datetime as dt

        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    for g in gids:
        rows["guilds"].append(
            {"id": g, "settings": json.dumps({"moderator": users[0], "modLog": channels[g][0]})}
        )
    # skewed: a few big guilds, many small ones (every guild has at least one message)
    weights = [1.0 / (i + 1) for i in range(guilds)]
    total_w = sum(weights)
    per_guild = [max(1, int(messages * w / total_w)) for w in weights]
    per_guild[0] += messages - sum(per_guild)
    if "message_stats" in present:
        for g, n in zip(gids, per_guild, strict=True):
            for _ in range(n):
                ms = now_ms - rng.randrange(10**9)
                rows["message_stats"].append(
                    {
                        "message_id": snowflake(rng, ms),
                        "author_id": rng.choice(users),
                        "guild_id": g,
                        "channel_id": rng.choice(channels[g]),
                        "channel_category": "general",
                        "recipient_id": None,
                        "char_count": rng.randrange(200),
                        "word_count": rng.randrange(40),
                        "react_count": rng.randrange(3),
                        "code_stats": "[]",
                        "link_stats": "[]",
                        "sent_at": ms,
                    }
                )
        for g in gids:
            for i, c in enumerate(channels[g]):
                rows["channel_info"].append({"id": c, "name": f"chan-{i}", "category": "talk"})
    for i, g in enumerate(gids):
        c = channels[g]
        stamp = when(now_ms - i * 1000)
        if "tickets_config" in present:
            rows["tickets_config"].append(
                {"message_id": snowflake(rng, now_ms), "channel_id": c[1], "role_id": users[1]}
            )
        if "guild_subscriptions" in present:
            rows["guild_subscriptions"].append(
                {
                    "guild_id": g,
                    "stripe_customer_id": f"cus_{i}",
                    "stripe_subscription_id": f"sub_{i}",
                    "product_tier": "free",
                    "status": "active",
                    "current_period_end": stamp,
                    "created_at": stamp,
                    "updated_at": stamp,
                }
            )
        if "user_threads" in present:
            rows["user_threads"].append(
                {"guild_id": g, "user_id": users[i % 200], "thread_id": c[2], "created_at": stamp}
            )
        if "deletion_log_threads" in present:
            rows["deletion_log_threads"].append(
                {"guild_id": g, "user_id": users[i % 200], "thread_id": c[3], "created_at": stamp}
            )
        for k in range(3):
            if "reported_messages" in present:
                rows["reported_messages"].append(
                    {
                        "id": f"{i}-{k}",
                        "guild_id": g,
                        "reported_message_id": snowflake(rng, now_ms),
                        "reported_channel_id": c[0],
                        "reported_user_id": users[k],
                        "log_message_id": snowflake(rng, now_ms),
                        "log_channel_id": c[0],
                        "reason": ["spam", "anonReport", "track"][k],
                        "staff_id": users[2] if k == 2 else None,
                        "staff_username": "mod" if k == 2 else None,
                        "extra": None,
                        "created_at": stamp,
                        "deleted_at": None,
                    }
                )
            if "mod_actions" in present:
                rows["mod_actions"].append(
                    {
                        "id": f"{i}-{k}",
                        "guild_id": g,
                        "user_id": users[k + 3],
                        "action_type": ["ban", "kick", "timeout"][k],
                        "executor_id": users[2],
                        "executor_username": "mod",
                        "reason": "rule 1",
                        "duration": 600 if k == 2 else None,
                        "created_at": stamp,
                    }
                )
            if "message_cache" in present:
                rows["message_cache"].append(
                    {
                        "message_id": snowflake(rng, now_ms),
                        "guild_id": g,
                        "channel_id": c[0],
                        "user_id": users[k],
                        "content": f"cached {k}",
                        "created_at": stamp,
                        "last_touched": stamp,
                    }
                )
        if "escalations" in present:
            esc_id = f"esc-{i}"
            rows["escalations"].append(
                {
                    "id": esc_id,
                    "guild_id": g,
                    "thread_id": c[2],
                    "vote_message_id": snowflake(rng, now_ms),
                    "reported_user_id": users[5],
                    "initiator_id": users[2],
                    "flags": "{}",
                    "voting_strategy": "simple",
                    "scheduled_for": stamp,
                    "resolution": None,
                    "resolved_at": None,
                    "created_at": stamp,
                }
            )
            for v in range(2):
                rows["escalation_records"].append(
                    {
                        "id": f"{esc_id}-{v}",
                        "escalation_id": esc_id,
                        "voter_id": users[v],
                        "vote": "ban",
                        "voted_at": stamp,
                    }
                )
            rows["reactji_channeler_config"].append(
                {
                    "id": f"r-{i}",
                    "guild_id": g,
                    "channel_id": c[3],
                    "emoji": "⭐",
                    "threshold": "3",
                    "configured_by_id": users[2],
                    "created_at": stamp,
                }
            )
        if "honeypot_config" in present:
            rows["honeypot_config"].append({"guild_id": g, "channel_id": c[1]})
    rows["users"] = [
        {
            "id": f"u{i}",
            "email": f"u{i}@example.com",
            "externalId": users[i],
            "authProvider": "discord",
        }
        for i in range(5)
    ]
    rows["sessions"] = [{"id": f"s{i}", "data": "{}", "expires": "2027-01-01"} for i in range(3)]
    for k in range(orphans):
        if "channel_info" in present:
            rows["channel_info"].append(
                {"id": snowflake(rng, now_ms), "name": "lost", "category": ""}
            )
        if "escalation_records" in present:
            rows["escalation_records"].append(
                {
                    "id": f"orphan-{k}",
                    "escalation_id": "gone",
                    "voter_id": users[0],
                    "vote": "ban",
                    "voted_at": "x",
                }
            )
        if "mod_actions" in present:
            rows["mod_actions"].append(
                {
                    "id": f"orphan-{k}",
                    "guild_id": "",
                    "user_id": users[0],
                    "action_type": "ban",
                    "executor_id": None,
                    "executor_username": None,
                    "reason": None,
                    "duration": None,
                    "created_at": when(now_ms),
                }
            )
    for table in present:
        _insert(conn, table, rows.get(table, []))
    conn.commit()
    counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in present}
    conn.close()
    return {"guilds": [int(g) for g in gids], "counts": counts, "tables": present}
