"""Discord snowflakes: parsing guild ids strictly, and Discord's shard formula.

Guild ids cross every boundary of the system (URLs, JSON, SQL, Redis), so they are
parsed once, strictly, into ``int`` and never compared as text. A canonical id has
exactly one spelling, which keeps pins, caches and audit rows free of near-duplicates.

The accepted range is decided here, once, for every edge (proxy, pod API, config
service): ``1 .. MAX_GUILD_ID`` = ``2**63-1``. Discord's format is unsigned 64-bit
(``MAX_SNOWFLAKE``), but every store we write ids to is signed 64-bit (SQLite INTEGER,
PostgreSQL BIGINT): an id above ``2**63-1`` overflows there (a 500 on the pod, and
poisoned circuit breakers on the proxy). Nothing real is lost: a snowflake's top 42
bits are milliseconds since 2015-01-01, so the sign bit is first set in the year 2084.
"""

from __future__ import annotations

__all__ = ["MAX_GUILD_ID", "MAX_SNOWFLAKE", "InvalidGuildId", "parse_guild_id", "shard_for"]

MAX_SNOWFLAKE = 2**64 - 1  # what Discord's format can hold (unsigned 64-bit)
MAX_GUILD_ID = 2**63 - 1  # what we accept: fits SQLite INTEGER and PostgreSQL BIGINT
_MAX_DIGITS = len(str(MAX_GUILD_ID))  # 19


class InvalidGuildId(ValueError):
    """A value that is not a guild id we accept (a snowflake in 1 .. 2**63-1)."""

    def __init__(self, value: object, reason: str) -> None:
        shown = repr(value)
        if len(shown) > 48:
            shown = shown[:45] + "..."
        super().__init__(f"invalid guild id {shown}: {reason}")
        self.value = value
        self.reason = reason


def parse_guild_id(value: object) -> int:
    """Return ``value`` as a guild id, or raise :class:`InvalidGuildId`.

    Accepts an ``int`` or a string of ASCII decimal digits (no sign, no spaces, no
    leading zeros) in ``1 .. MAX_GUILD_ID`` (2**63-1, see the module docstring). ``bool`` and ``float`` are refused even when
    integral: they only ever reach here by mistake.
    """
    if type(value) is int:
        number = value
    elif isinstance(value, str):
        if not value:
            raise InvalidGuildId(value, "empty string")
        if len(value) > _MAX_DIGITS:
            raise InvalidGuildId(value, f"more than {_MAX_DIGITS} digits (ids are at most 2**63-1)")
        if not (value.isascii() and value.isdigit()):
            raise InvalidGuildId(value, "not a decimal number")
        if value[0] == "0" and len(value) > 1:
            raise InvalidGuildId(value, "leading zeros")
        number = int(value)
    elif isinstance(value, bool):
        raise InvalidGuildId(value, "a bool is not a guild id")
    elif isinstance(value, int):  # int subclasses (IntEnum, ...): use the plain value
        number = int(value)
    else:
        raise InvalidGuildId(value, f"expected int or decimal str, got {type(value).__name__}")
    if number <= 0:
        raise InvalidGuildId(value, "must be positive")
    if number > MAX_GUILD_ID:
        raise InvalidGuildId(value, "larger than 2**63-1 (the largest id every store holds)")
    return number


def shard_for(guild_id: int, shard_count: int) -> int:
    """The shard whose gateway session receives ``guild_id``'s events."""
    if type(shard_count) is not int or shard_count < 1:
        raise ValueError(f"shard_count must be a positive int, got {shard_count!r}")
    return (guild_id >> 22) % shard_count
