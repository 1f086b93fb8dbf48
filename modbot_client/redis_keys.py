"""Where the routing table lives in Redis: one hash and one pub/sub channel.

``{prefix}:table`` holds ``version`` and ``json`` (written together, atomically);
``{prefix}:table:changes`` carries each new version number.
"""

from __future__ import annotations


def table_key(prefix: str) -> str:
    return f"{prefix}:table"


def changes_channel(prefix: str) -> str:
    return f"{prefix}:table:changes"
