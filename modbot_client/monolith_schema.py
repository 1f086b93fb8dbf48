"""Today's mod-bot database (one SQLite file) and where each of its tables lives in a pod.

Shared, pure data and functions: the importer (``modbot-ring import-monolith``, in
``config_store.monolith``) converts rows with it, and the pod (``gateway_app``) builds its
schema extension and checks imports with it, so both ends agree on columns and checksums.

Every pod table is keyed by ``guild_id`` first, so the migration export/import
(``gateway_app.storage``: counts, checksum, epochs) carries these tables like its own.
mod-bot's values are kept verbatim in the tables it alone has (columns without a declared
type: SQLite's BLOB affinity stores TEXT snowflakes as TEXT); only the rows that land in
the pod's own tables (``guilds``, ``message_stats``, ``mod_actions``) are converted to the
pod's types (INTEGER ids, seconds since the epoch).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BOOKKEEPING_PREFIXES",
    "DROPPED",
    "MIGRATION_STATES",
    "POD_EXPORT_COLUMNS",
    "POD_EXPORT_ORDER",
    "POD_SCHEMA",
    "POD_TABLES",
    "PROGRESS_TABLE",
    "SOURCE_TABLES",
    "Skip",
    "SourceTable",
    "chunk_checksum",
    "convert",
    "snowflake",
]


@dataclass(frozen=True)
class SourceTable:
    """A mod-bot table: its columns, how a row finds its guild, where it goes in a pod."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    guild_column: str | None = "guild_id"  # None: reach the guild another way
    channel_column: str | None = None  # the channel that names the guild if the column does not
    target: str = ""  # the pod table ('' : same name)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional

    @property
    def pod_table(self) -> str:
        return self.target or self.name


def _t(name: str, cols: str, optional: str = "", **kw: Any) -> SourceTable:
    return SourceTable(name, tuple(cols.split()), tuple(optional.split()), **kw)


# Columns as the facts file lists them; "optional" ones may be missing in older databases.
SOURCE_TABLES: dict[str, SourceTable] = {
    t.name: t
    for t in (
        _t("guilds", "id settings", guild_column="id"),
        _t(
            "message_stats",
            "message_id author_id guild_id channel_id char_count word_count sent_at",
            "channel_category recipient_id react_count code_stats link_stats",
        ),
        _t(
            "message_cache",
            "message_id guild_id channel_id user_id content created_at",
            "last_touched",
        ),
        _t("channel_info", "id name category", guild_column=None, channel_column="id"),
        _t(
            "reported_messages",
            "id guild_id reported_message_id reported_channel_id reported_user_id"
            " log_message_id log_channel_id reason staff_id staff_username created_at",
            "extra deleted_at",
            target="modbot_reports",
        ),
        _t(
            "mod_actions",
            "id guild_id user_id action_type executor_id executor_username reason duration created_at",
        ),
        _t(
            "escalations",
            "id guild_id thread_id vote_message_id reported_user_id initiator_id resolution"
            " resolved_at created_at",
            "flags voting_strategy scheduled_for",
        ),
        _t("escalation_records", "id escalation_id voter_id vote voted_at", guild_column=None),
        _t("honeypot_config", "guild_id channel_id", channel_column="channel_id"),
        _t(
            "reactji_channeler_config",
            "id guild_id channel_id emoji threshold configured_by_id created_at",
            channel_column="channel_id",
        ),
        _t(
            "tickets_config",
            "message_id channel_id role_id",
            guild_column=None,
            channel_column="channel_id",
        ),
        _t("user_threads", "guild_id user_id thread_id created_at"),
        _t("deletion_log_threads", "guild_id user_id thread_id created_at"),
        _t(
            "guild_subscriptions",
            "guild_id stripe_customer_id stripe_subscription_id product_tier status"
            " current_period_end created_at updated_at",
        ),
    )
}

# Global tables: not carried, and why (the report prints the reason with the row count).
DROPPED: dict[str, tuple[tuple[str, ...], str]] = {
    "sessions": (
        ("id", "data", "expires"),
        "web logins of the old app: users sign in again (the proxy's Discord sign-in)",
    ),
    "users": (
        ("id", "email", "externalId", "authProvider"),
        "the proxy's Discord sign-in reads who a user is from Discord at each login and keeps"
        " no user table: emails are not copied",
    ),
}

# Kysely's and SQLite's own tables: not data.
BOOKKEEPING_PREFIXES = ("kysely_", "sqlite_")

# The migration history the facts file gives (month: tables that month's migrations add).
# Months of the tables the facts do not date are the importer's best reading; the check
# is on columns, not on the month, so a database between two states is still accepted.
MIGRATION_STATES: list[tuple[str, tuple[str, ...]]] = [
    ("2022-04", ("guilds", "users", "sessions")),
    ("2024-09", ("message_stats", "channel_info")),
    ("2025-03", ("tickets_config", "guild_subscriptions", "user_threads")),
    ("2025-07", ("reported_messages", "deletion_log_threads")),
    ("2025-11", ("escalations", "escalation_records", "reactji_channeler_config")),
    ("2025-12", ("honeypot_config",)),
    ("2026-02", ("message_cache", "mod_actions")),
]

PROGRESS_TABLE = "monolith_progress"

# -- the pod's side --------------------------------------------------------------------------

# Columns appended to the pod's own tables (ALTER TABLE: nullable, live writes leave NULL).
_EXTRA_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "message_stats": (
        ("channel_category", "TEXT"),
        ("recipient_id", "INTEGER"),
        ("react_count", "INTEGER"),
        ("code_stats", "TEXT"),
        ("link_stats", "TEXT"),
    ),
    "mod_actions": (("executor_username", "TEXT"), ("source_id", "TEXT")),
}

# Tables only mod-bot has: guild_id first, then mod-bot's columns verbatim (no affinity).
_NEW_TABLES: dict[str, tuple[str, ...]] = {
    st.pod_table: tuple(c for c in st.columns if c != "guild_id")
    for st in SOURCE_TABLES.values()
    if st.name not in ("guilds", "message_stats", "mod_actions")
}


def _pod_schema() -> str:
    statements = []
    for table, extras in _EXTRA_COLUMNS.items():
        statements += [f"ALTER TABLE {table} ADD COLUMN {c} {kind}" for c, kind in extras]
    statements.append(
        "CREATE UNIQUE INDEX mod_actions_by_source ON mod_actions (guild_id, source_id)"
        " WHERE source_id IS NOT NULL"
    )
    for table, cols in _NEW_TABLES.items():
        body = ", ".join(["guild_id INTEGER NOT NULL", *cols])
        statements.append(f"CREATE TABLE {table} ({body})")
        statements.append(f"CREATE INDEX {table}_by_guild ON {table} (guild_id)")
    statements.append(
        f"CREATE TABLE {PROGRESS_TABLE} (guild_id INTEGER NOT NULL, source_table TEXT NOT NULL,"
        " high_water INTEGER NOT NULL, row_count INTEGER NOT NULL,"
        " PRIMARY KEY (guild_id, source_table)) WITHOUT ROWID"
    )
    return ";\n".join(statements) + ";"


# Appended to gateway_app.storage.SCHEMA (a migration of the pod's own database).
POD_SCHEMA: list[tuple[str, str]] = [("monolith_0001_modbot_tables", _pod_schema())]

# Export columns of the pod's own tables as extended, and of the new tables.
_BASE_EXPORT = {
    "message_stats": (
        "guild_id",
        "message_id",
        "channel_id",
        "author_id",
        "word_count",
        "char_count",
        "sent_at",
        "deleted_at",
    ),
    "mod_actions": (
        "guild_id",
        "user_id",
        "action_type",
        "executor_id",
        "reason",
        "duration",
        "created_at",
    ),
}
POD_EXPORT_COLUMNS: dict[str, tuple[str, ...]] = {
    **{t: _BASE_EXPORT[t] + tuple(c for c, _ in _EXTRA_COLUMNS[t]) for t in _EXTRA_COLUMNS},
    **{t: ("guild_id", *cols) for t, cols in _NEW_TABLES.items()},
    PROGRESS_TABLE: ("guild_id", "source_table", "high_water", "row_count"),
}
POD_EXPORT_ORDER: dict[str, str] = {
    **{t: "guild_id, rowid" for t in _NEW_TABLES},
    PROGRESS_TABLE: "guild_id, source_table",
}
POD_TABLES: tuple[str, ...] = (*_NEW_TABLES, PROGRESS_TABLE)

# How a converted row is written: the pod's own tables may hold the row already (a live
# event, a guild set up again): those keep theirs. The new tables get exactly-once from the
# high-water mark committed in the same transaction.
INSERT_VERB = {
    "guilds": "INSERT OR IGNORE",
    "message_stats": "INSERT OR IGNORE",
    "mod_actions": "INSERT OR IGNORE",
}


def insert_columns(source: str) -> tuple[str, ...]:
    """The pod columns a converted row of ``source`` fills, in order."""
    if source == "guilds":
        return ("guild_id", "settings", "updated_at")
    if source == "message_stats":
        return POD_EXPORT_COLUMNS["message_stats"]
    if source == "mod_actions":
        return POD_EXPORT_COLUMNS["mod_actions"]
    return POD_EXPORT_COLUMNS[SOURCE_TABLES[source].pod_table]


# -- conversion --------------------------------------------------------------------------------


class Skip(Exception):
    """A row that cannot be carried: the message is the reason in the report."""


MAX_SNOWFLAKE = 2**63 - 1


def snowflake(value: Any, what: str) -> int:
    """A Discord id stored as TEXT (or INTEGER) -> int, or :class:`Skip`."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise Skip(f"{what} is not a snowflake" if value not in (None, "") else f"{what} is empty")
    if not 0 < number <= MAX_SNOWFLAKE:
        raise Skip(f"{what} is out of range")
    return number


def _optional_id(value: Any) -> Any:
    if value in (None, ""):
        return None
    try:
        return snowflake(value, "id")
    except Skip:
        return value


def seconds(value: Any) -> float:
    """mod-bot's times (milliseconds, seconds, or SQLite/ISO text) -> seconds since the epoch."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        return number / 1000.0 if number > 1e11 else number
    text = str(value).strip()
    try:
        return seconds(float(text))
    except ValueError:
        pass
    try:
        parsed = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Skip(f"time {text[:30]!r} is not a date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.UTC)
    return parsed.timestamp()


def _plain(value: Any) -> Any:
    """JSON-safe verbatim value (a BLOB becomes text: checksums are over JSON)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


ACTION_TYPES = ("ban", "kick", "timeout", "leave")


def convert(source: str, guild_id: int, row: dict[str, Any], now: float) -> list[Any]:
    """A mod-bot row of ``source`` as the pod row (``insert_columns(source)``), or Skip."""
    if source == "guilds":
        settings = row.get("settings") or "{}"
        try:
            parsed = json.loads(settings)
        except (TypeError, ValueError):
            raise Skip("settings is not JSON") from None
        if not isinstance(parsed, dict):
            raise Skip("settings is not a JSON object")
        return [guild_id, json.dumps(parsed, sort_keys=True), now]
    if source == "message_stats":
        return [
            guild_id,
            snowflake(row["message_id"], "message_id"),
            snowflake(row["channel_id"], "channel_id"),
            snowflake(row["author_id"], "author_id"),
            int(row["word_count"] or 0),
            int(row["char_count"] or 0),
            seconds(row["sent_at"]),
            None,
            _plain(row.get("channel_category")),
            _optional_id(row.get("recipient_id")),
            row.get("react_count"),
            _plain(row.get("code_stats")),
            _plain(row.get("link_stats")),
        ]
    if source == "mod_actions":
        action = str(row["action_type"] or "").lower()
        if action not in ACTION_TYPES:
            raise Skip(
                f"action_type {str(row['action_type'])[:20]!r} is not one of {', '.join(ACTION_TYPES)}"
            )
        return [
            guild_id,
            snowflake(row["user_id"], "user_id"),
            action,
            _optional_id(row["executor_id"]),
            _plain(row["reason"]),
            row["duration"],
            seconds(row["created_at"]),
            _plain(row["executor_username"]),
            str(row["id"]),
        ]
    return [guild_id, *(_plain(row.get(c)) for c in _NEW_TABLES[SOURCE_TABLES[source].pod_table])]


def chunk_checksum(source: str, rows: list[list[Any]]) -> str:
    """What the importer sends with a chunk and the pod recomputes before writing."""
    digest = hashlib.sha256(source.encode())
    digest.update(json.dumps(rows, separators=(",", ":")).encode())
    return digest.hexdigest()
