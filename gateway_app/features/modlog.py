"""The mod-action log from Discord's audit log: kicks, timeouts and bans with who did them
and why (GUILD_AUDIT_LOG_ENTRY_CREATE, under the GUILD_MODERATION intent the gateway
client already asks for).

:func:`audit_event` turns an audit-log entry into an :class:`~gateway_app.events.AuditAction`
(or None for the entries mod-bot does not log, and for entries that are not well formed);
the event is written by ``GuildStore.apply_event`` like any
other gateway event, so it is held and replayed across a migration, and deduplicated by
its entry id (``mod_actions.source_id``). A ban is also announced by GUILD_BAN_ADD (which
carries no executor): whichever arrives second completes the same row, never a second one.
"""

from __future__ import annotations

import time
from typing import Any

from modbot_client.monolith_schema import Skip, seconds

from ..events import MAX_ID, AuditAction

# Discord's audit log action types
MEMBER_KICK, MEMBER_BAN_ADD, MEMBER_UPDATE = 20, 22, 24


def _id(value: Any) -> int | None:
    """A snowflake string as an int; None for anything else: "²" is a digit to
    ``str.isdigit`` but not to ``int``, and an id past 2**63-1 would fail every commit of
    the batch writer (SQLite's integers are signed 64-bit)."""
    if not (isinstance(value, str) and 0 < len(value) <= 19 and value.isascii()):
        return None
    if not value.isdigit() or int(value) > MAX_ID:
        return None
    return int(value)


def audit_event(data: dict[str, Any], now: float | None = None) -> AuditAction | None:
    """A kick, ban or timeout entry as an event; None for any other (or a garbled one)."""
    now = time.time() if now is None else now
    action, target, entry = data.get("action_type"), _id(data.get("target_id")), _id(data.get("id"))
    if target is None or entry is None or type(action) is not int:
        return None
    duration: float | None = None
    if action == MEMBER_KICK:
        kind = "kick"
    elif action == MEMBER_BAN_ADD:
        kind = "ban"
    elif action == MEMBER_UPDATE:
        changes = data.get("changes")
        change = next(
            (
                c
                for c in (changes if isinstance(changes, list) else [])
                if isinstance(c, dict) and c.get("key") == "communication_disabled_until"
            ),
            None,
        )
        if change is None or not change.get("new_value"):
            return None  # another member update, or a timeout lifted
        try:
            duration = round(max(0.0, seconds(change["new_value"]) - now), 3)
        except Skip:
            return None
        kind = "timeout"
    else:
        return None
    reason = data.get("reason")
    return AuditAction(
        action=kind,
        user_id=target,
        executor_id=_id(data.get("user_id")),
        reason=reason[:512] if isinstance(reason, str) else None,
        duration=duration,
        entry_id=str(entry),
        at=now,
    )
