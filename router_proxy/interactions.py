"""What a signed interaction must look like before we route it, and which failures to retry.

A valid signature proves the bytes came from Discord, not that they are what our code
expects: ``{"type": true}`` is a bool (Python's ``isinstance(True, int)`` says it is an
int and would have answered it as a PING), ids arrive as strings, and Discord adds and
omits optional fields over time. So the proxy checks only what it *uses* (type, ids,
token) strictly and leaves every other field to the pod, which must tolerate absences.

Delivery of a deferred interaction is retried only while a retry can succeed: the pod
is unreachable, overloaded or mid-migration (no answer, 421, 429, 502, 503, 504). Any
other answer (400, 403, 404, 500...) is about this interaction: retrying it for ten
minutes would only hammer the pod, so the user is told at once.
"""

from __future__ import annotations

from typing import Any

from modbot_ring import InvalidGuildId, parse_guild_id

PING, COMMAND, COMPONENT, AUTOCOMPLETE, MODAL = 1, 2, 3, 4, 5
TYPES = frozenset({PING, COMMAND, COMPONENT, AUTOCOMPLETE, MODAL})
RETRYABLE = frozenset({421, 429, 502, 503, 504})
MAX_TOKEN = 500  # Discord's tokens are ~200 characters; anything far longer is not one
MAX_ATTEMPTS = 40  # deliveries of one deferred interaction, on top of the time window

FAILED_ANSWER: dict[str, Any] = {
    "type": 4,
    "data": {
        "content": "Sorry: mod-bot could not process this command. Please try it again.",
        "flags": 64,
    },
}


class InvalidInteraction(ValueError):
    """The payload is signed but not an interaction we can route."""


def _snowflake(payload: dict[str, Any], key: str, *, required: bool) -> None:
    value = payload.get(key)
    if value is None:
        if required:
            raise InvalidInteraction(f"interaction field {key!r} is missing")
        return
    if not isinstance(value, str):
        raise InvalidInteraction(f"interaction field {key!r} must be a snowflake string")
    try:
        parse_guild_id(value)  # the library's one definition of an id we can store
    except InvalidGuildId as exc:
        raise InvalidInteraction(f"interaction field {key!r}: {exc}") from None


def check_interaction(payload: Any) -> int:
    """The interaction's type, or InvalidInteraction saying what is wrong."""
    if not isinstance(payload, dict):
        raise InvalidInteraction("interaction must be a JSON object")
    kind = payload.get("type")
    if type(kind) is not int or kind not in TYPES:  # exactly int: a bool must not pass
        raise InvalidInteraction("interaction 'type' must be one of 1, 2, 3, 4, 5")
    if kind == PING:
        return kind
    _snowflake(payload, "id", required=True)
    _snowflake(payload, "application_id", required=True)
    _snowflake(payload, "guild_id", required=False)
    _snowflake(payload, "channel_id", required=False)
    token = payload.get("token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise InvalidInteraction("interaction 'token' must be a non-empty string")
    if not token.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InvalidInteraction("interaction 'token' has characters a token never has")
    data = payload.get("data")
    if data is not None and not isinstance(data, dict):
        raise InvalidInteraction("interaction 'data' must be an object")
    return kind


def retryable(status: int) -> bool:
    """Could delivering the same interaction again succeed later?"""
    return status in RETRYABLE


class SeenInteractions:
    """Interaction ids answered in the last ``window`` seconds (bounded), so a signed
    payload replayed by someone who captured it does not run its command again.

    Discord signs ``timestamp + body`` and the proxy refuses timestamps older than five
    minutes: a replay is only possible inside that window, so remembering ids for the
    same window closes it. The memory is per replica: with several proxy replicas, a
    replay that reaches another replica is not caught (it is still bounded by the same
    five minutes). ``limit`` bounds memory under a flood of valid interactions.
    """

    def __init__(self, window: float = 300.0, limit: int = 200_000) -> None:
        self.window = window
        self.limit = limit
        self._seen: dict[str, float] = {}  # insertion-ordered: oldest first

    def first_time(self, interaction_id: str, now: float) -> bool:
        """Record ``interaction_id``; False if it was already seen within the window."""
        seen = self._seen
        while seen:
            oldest, at = next(iter(seen.items()))
            if at > now - self.window and len(seen) < self.limit:
                break
            del seen[oldest]
        if interaction_id in seen:
            return False
        seen[interaction_id] = now
        return True
