"""The mod-action log from Discord's audit log: kicks, timeouts and bans with who did them
and why (GUILD_AUDIT_LOG_ENTRY_CREATE, under the GUILD_MODERATION intent the gateway
client already asks for).

:func:`audit_event` turns an audit-log entry into the pod's event form (or None for the
entries mod-bot does not log); the event is written by ``GuildStore.apply_event`` like any
other gateway event, so it is held and replayed across a migration, and deduplicated by
its entry id (``mod_actions.source_id``). A ban is also announced by GUILD_BAN_ADD (which
carries no executor): whichever arrives second completes the same row, never a second one.
"""

from __future__ import annotations

import time
from typing import Any

from config_store.client.monolith_schema import Skip, seconds

# Discord's audit log action types
MEMBER_KICK, MEMBER_BAN_ADD, MEMBER_UPDATE = 20, 22, 24


def _id(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdigit() else None


def audit_event(data: dict[str, Any], now: float | None = None) -> dict[str, Any] | None:
    """A kick, ban or timeout entry as ``{"kind": "audit", ...}``; None for any other."""
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
    return {
        "kind": "audit",
        "action": kind,
        "user_id": target,
        "executor_id": _id(data.get("user_id")),
        "reason": reason[:512] if isinstance(reason, str) else None,
        "duration": duration,
        "entry_id": str(entry),
        "at": now,
    }
