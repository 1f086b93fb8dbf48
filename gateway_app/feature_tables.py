"""Tables the pods' features need that mod-bot never had (its own tables come from
``modbot_client.monolith_schema``). Pure data, no imports of ours: ``storage``
appends them to the pod's schema and to the migration export/import (counts, checksum),
like mod-bot's tables; every table is keyed by ``guild_id`` first, as the import checks.

To add one: a new ``(name, sql)`` migration at the end of ``SCHEMA`` (never edit a shipped
one), its columns in ``EXPORT_COLUMNS`` (``guild_id`` first), a deterministic order in
``EXPORT_ORDER`` (the checksum needs one), its name in ``TABLES``.
"""

from __future__ import annotations

SCHEMA: list[tuple[str, str]] = [
    (
        "features_0001_reactji_forwarded",
        """
        CREATE TABLE reactji_forwarded (
            guild_id     INTEGER NOT NULL,
            message_id   INTEGER NOT NULL,
            emoji        TEXT NOT NULL,
            channel_id   INTEGER NOT NULL,
            forwarded_at REAL NOT NULL,
            claim        TEXT NOT NULL,
            PRIMARY KEY (guild_id, message_id, emoji)
        ) WITHOUT ROWID;
        """,
    ),
    (
        # a forward is claimed 'pending' (from the source channel) and marked 'done' once
        # posted: a pending claim older than its lease is retried (kill between the two);
        # a honeypot ban is recorded 'pending' before it is made, so a restart makes it
        "features_0002_pending_actions",
        """
        ALTER TABLE reactji_forwarded ADD COLUMN state TEXT NOT NULL DEFAULT 'done';
        ALTER TABLE reactji_forwarded ADD COLUMN source_channel_id INTEGER;
        CREATE INDEX reactji_forwarded_pending ON reactji_forwarded (forwarded_at)
            WHERE state = 'pending';
        CREATE TABLE honeypot_bans (
            guild_id   INTEGER NOT NULL,
            user_id    INTEGER NOT NULL,
            reason     TEXT NOT NULL,
            decided_at REAL NOT NULL,
            attempts   INTEGER NOT NULL,
            next_try   REAL NOT NULL,
            state      TEXT NOT NULL,
            PRIMARY KEY (guild_id, user_id)
        ) WITHOUT ROWID;
        CREATE INDEX honeypot_bans_pending ON honeypot_bans (next_try) WHERE state = 'pending';
        """,
    ),
]

EXPORT_COLUMNS: dict[str, tuple[str, ...]] = {
    "reactji_forwarded": (
        "guild_id",
        "message_id",
        "emoji",
        "channel_id",
        "forwarded_at",
        "claim",
        "source_channel_id",
        "state",
    ),
    "honeypot_bans": (
        "guild_id",
        "user_id",
        "reason",
        "decided_at",
        "attempts",
        "next_try",
        "state",
    ),
}
EXPORT_ORDER: dict[str, str] = {
    "reactji_forwarded": "guild_id, message_id, emoji",
    "honeypot_bans": "guild_id, user_id",
}
TABLES: tuple[str, ...] = ("reactji_forwarded", "honeypot_bans")
