"""The gateway events a pod handles, as types: one frozen dataclass per kind.

They are made in one place from discord.py's callbacks (``gateway_app/bot.py``, through
``gateway_app/discordpy.py``) and travel as they are to the gate (write, hold or drop),
the store (``GuildStore.apply_event``) and the features (``Runtime.on_event`` takes the
type it observes). Nothing downstream switches on a kind string.

**On the wire and on disk** an event is the JSON object the pods always wrote: a
``"kind"`` and the fields, in this order (:meth:`to_json`). A migrating guild's events are
kept in ``held_events`` in that form and sent between pods by the migration API
(``GET /internal/guilds/G/held``, ``POST .../replay``), so a pod of this version reads what
an older one held or sent, and the other way round. :func:`event_from_json` refuses
anything that is not such an object (a field missing, of the wrong type, an id outside
SQLite's 64-bit integers, an audit action the table's CHECK would reject) with
:class:`MalformedEvent`: one bad row must never reach the batch writer, whose commit would
then fail on every retry. A kind this version does not know (a newer pod's) loads as
:class:`OtherEvent`: kept, passed on and never written, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeAlias

__all__ = [
    "AUDIT_ACTIONS",
    "AuditAction",
    "GatewayEvent",
    "MalformedEvent",
    "MemberBanned",
    "MemberLeft",
    "MessageCreated",
    "MessageDeleted",
    "OtherEvent",
    "ReactionAdded",
    "event_from_json",
]

MAX_ID: Final = 2**63 - 1  # ids are SQLite INTEGERs (signed 64-bit)
AUDIT_ACTIONS: Final = ("kick", "ban", "timeout")  # mod_actions.action_type's CHECK allows them
MAX_TEXT: Final = 4096  # emoji keys, entry ids and reasons are short; anything longer is not ours


class MalformedEvent(ValueError):
    """A serialized event that is not one this pod wrote (and is refused, never stored)."""


@dataclass(frozen=True, slots=True)
class MessageCreated:
    """MESSAGE_CREATE of a member's message (bots' messages are not events here)."""

    kind: ClassVar[str] = "message"
    message_id: int
    channel_id: int
    author_id: int
    roles: tuple[int, ...]  # the author's role ids (the honeypot spares moderators)
    staff: bool | None  # owner, administrator, manage server or ban members; None: unknown
    words: int
    chars: int
    at: float

    @property
    def key(self) -> str:
        """The event's identity across sessions and pods (held events are keyed by it)."""
        return f"m:{self.message_id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "message",
            "message_id": self.message_id,
            "channel_id": self.channel_id,
            "author_id": self.author_id,
            "roles": list(self.roles),
            "staff": self.staff,
            "words": self.words,
            "chars": self.chars,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MessageCreated:
        roles = data.get("roles", [])  # events held before issue 19 carry no roles or staff
        if not isinstance(roles, list):
            raise MalformedEvent(f"roles must be a list of ids, got {_shown(roles)}")
        staff = data.get("staff")
        if staff is not None and type(staff) is not bool:
            raise MalformedEvent(f"staff must be true, false or null, got {_shown(staff)}")
        return cls(
            _id(data, "message_id"),
            _id(data, "channel_id"),
            _id(data, "author_id"),
            tuple(_id_value(r, "roles") for r in roles),
            staff,
            _id(data, "words"),
            _id(data, "chars"),
            _at(data),
        )


@dataclass(frozen=True, slots=True)
class MessageDeleted:
    kind: ClassVar[str] = "delete"
    message_id: int
    at: float

    @property
    def key(self) -> str:
        return f"d:{self.message_id}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "delete", "message_id": self.message_id, "at": self.at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MessageDeleted:
        return cls(_id(data, "message_id"), _at(data))


@dataclass(frozen=True, slots=True)
class MemberBanned:
    """GUILD_BAN_ADD (no executor, no reason: the audit log's entry completes the row)."""

    kind: ClassVar[str] = "ban"
    user_id: int
    at: float

    @property
    def key(self) -> str:
        return f"b:{self.user_id}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "ban", "user_id": self.user_id, "at": self.at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemberBanned:
        return cls(_id(data, "user_id"), _at(data))


@dataclass(frozen=True, slots=True)
class MemberLeft:
    """GUILD_MEMBER_REMOVE: left, kicked or banned (the audit log tells which)."""

    kind: ClassVar[str] = "leave"
    user_id: int
    at: float

    @property
    def key(self) -> str:
        return f"l:{self.user_id}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "leave", "user_id": self.user_id, "at": self.at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemberLeft:
        return cls(_id(data, "user_id"), _at(data))


@dataclass(frozen=True, slots=True)
class ReactionAdded:
    """MESSAGE_REACTION_ADD by a member: not stored, shown to the features (reactji)."""

    kind: ClassVar[str] = "reaction"
    message_id: int
    channel_id: int
    user_id: int
    emoji: str  # "name:id" for a custom emoji, the character itself otherwise
    at: float

    @property
    def key(self) -> str:
        return f"r:{self.message_id}:{self.user_id}:{self.emoji}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "reaction",
            "message_id": self.message_id,
            "channel_id": self.channel_id,
            "user_id": self.user_id,
            "emoji": self.emoji,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReactionAdded:
        return cls(
            _id(data, "message_id"),
            _id(data, "channel_id"),
            _id(data, "user_id"),
            _text(data, "emoji"),
            _at(data),
        )


@dataclass(frozen=True, slots=True)
class AuditAction:
    """A kick, ban or timeout from the audit log, with who did it and why
    (``gateway_app/features/modlog.py`` makes them)."""

    kind: ClassVar[str] = "audit"
    action: str  # one of AUDIT_ACTIONS
    user_id: int
    executor_id: int | None
    reason: str | None
    duration: float | None  # a timeout's seconds
    entry_id: str  # the audit-log entry's id: the row's dedup key (mod_actions.source_id)
    at: float

    @property
    def key(self) -> str:
        return f"a:{self.entry_id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "audit",
            "action": self.action,
            "user_id": self.user_id,
            "executor_id": self.executor_id,
            "reason": self.reason,
            "duration": self.duration,
            "entry_id": self.entry_id,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditAction:
        action = data.get("action")
        if action not in AUDIT_ACTIONS:
            raise MalformedEvent(f"action must be one of {', '.join(AUDIT_ACTIONS)}")
        executor = data.get("executor_id")
        reason = data.get("reason")
        if reason is not None and not (isinstance(reason, str) and len(reason) <= MAX_TEXT):
            raise MalformedEvent(f"reason must be a string or null, got {_shown(reason)}")
        duration = data.get("duration")
        entry = _text(data, "entry_id")
        if not (entry.isascii() and entry.isdigit()):
            raise MalformedEvent(f"entry_id must be a decimal id, got {_shown(entry)}")
        return cls(
            str(action),
            _id(data, "user_id"),
            None if executor is None else _id_value(executor, "executor_id"),
            reason,
            None if duration is None else _seconds(duration, "duration"),
            entry,
            _at(data),
        )


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """An event of a kind this version does not know (held by a newer pod): kept as it
    came, passed on by the migration API, never written (as older pods always did)."""

    kind: str
    data: dict[str, Any] = field(hash=False, compare=False)

    @property
    def key(self) -> str:
        return f"?:{self.kind}"

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)


GatewayEvent: TypeAlias = (
    MessageCreated
    | MessageDeleted
    | MemberBanned
    | MemberLeft
    | ReactionAdded
    | AuditAction
    | OtherEvent
)

_KINDS: dict[str, Any] = {
    t.kind: t
    for t in (MessageCreated, MessageDeleted, MemberBanned, MemberLeft, ReactionAdded, AuditAction)
}


def event_from_json(data: object) -> GatewayEvent:
    """An event from its JSON object (as :meth:`to_json` and every older pod wrote it).

    Raises :class:`MalformedEvent` for anything else; extra fields are ignored."""
    if not isinstance(data, dict):
        raise MalformedEvent(f"an event is a JSON object, got {_shown(data)}")
    kind = data.get("kind")
    if not isinstance(kind, str) or not 0 < len(kind) <= 64:
        raise MalformedEvent(f"an event needs a kind (a short string), got {_shown(kind)}")
    cls = _KINDS.get(kind)
    if cls is None:
        return OtherEvent(kind, dict(data))
    try:
        event: GatewayEvent = cls.from_json(data)
    except MalformedEvent as exc:
        raise MalformedEvent(f"{kind} event: {exc}") from None
    return event


# -- field checks ---------------------------------------------------------------------------------


def _shown(value: object) -> str:
    try:
        return f"{value!r:.40}"
    except ValueError:  # an int too long to print (Python's 4300-digit limit)
        return f"<{type(value).__name__} too long to show>"


def _id_value(value: object, name: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_ID:  # bool is not an id
        raise MalformedEvent(f"{name} must be an integer id in 0 .. 2**63-1, got {_shown(value)}")
    return value


def _id(data: dict[str, Any], name: str) -> int:
    if name not in data:
        raise MalformedEvent(f"{name} is missing")
    return _id_value(data[name], name)


def _seconds(value: object, name: str) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int past float's range
            number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise MalformedEvent(f"{name} must be a finite, non-negative number, got {_shown(value)}")
    return number


def _at(data: dict[str, Any]) -> float:
    if "at" not in data:
        raise MalformedEvent("at is missing")
    return _seconds(data["at"], "at")


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        raise MalformedEvent(f"{name} must be a non-empty string, got {_shown(value)}")
    return value
