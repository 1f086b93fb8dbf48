"""The config API's request and response bodies, declared once: the handlers ``load``
requests through these, and ``openapi.py`` states them (``config_store/schema.py``).

``BODIES`` maps each route that takes a body to its model; a test checks that the
document and the handlers agree with it.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal

from modbot_ring import InvalidGuildId, parse_guild_id
from modbot_ring.hashring import MAX_WEIGHT
from modbot_ring.table import MAX_SHARD_COUNT

from .errors import Invalid
from .schema import UNSET, Unset, c
from .store import MAX_REASON

GUILD_ID = "^[1-9][0-9]{0,18}$"
SHARD = "^[0-9]{1,19}$"
POD_URL = "^[hH][tT][tT][pP][sS]?://[^/?#@\\s]+(/[^?#\\s]*)?$"
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$"
)


def check_pod_url(url: str) -> None:
    """Refuse a pod URL that is not plain ``http(s)://host[:port][/path]``: the config
    service and every proxy send bearer tokens to it and build request lines from it."""
    if (
        len(url) > 2048
        or not url.isascii()
        or any(ch.isspace() or not ch.isprintable() for ch in url)
    ):
        raise Invalid("url must be printable ASCII without spaces or line breaks")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Invalid(f"url {url[:80]!r} is not valid: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise Invalid(f"url must be http(s)://host[:port], got {url[:80]!r}")
    if "@" in parts.netloc:
        raise Invalid("url must not carry credentials (user@host)")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise Invalid("url must not have a query or fragment")
    if any(seg in (".", "..") for seg in parts.path.split("/")):
        raise Invalid("url path must not contain . or .. segments")
    host = parts.hostname or ""
    if (port is not None and not 1 <= port <= 65535) or parts.netloc.endswith(":"):
        raise Invalid("url port must be 1..65535")
    if parts.netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"url host {host[:80]!r} is not an IPv6 address") from None
    elif not _HOSTNAME.match(host):
        raise Invalid(f"url host {host[:80]!r} is not a host name or address")


def _guild_id_keys(pins: dict[str, Any]) -> None:
    """Guild ids the stores hold (signed 64-bit): the pattern alone lets 19 nines through."""
    for gid in pins:
        try:
            parse_guild_id(gid)
        except InvalidGuildId as exc:
            raise Invalid(f"restore.pins: {exc}") from None


def _shard_keys(shards: dict[str, Any]) -> None:
    """Shard numbers in 0 .. 2**63-1 (the stores' range), as the pattern roughly says."""
    for key in shards:
        if not (0 < len(key) <= 19 and key.isascii() and key.isdigit()) or int(key) >= 2**63:
            raise Invalid(f"restore.shards key must be in 0 .. 2**63-1, got {key[:40]!r}")


# -- requests ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RingChange:
    """PUT /v1/ring. ``shard_count`` null: no shards (pure ring placement)."""

    shard_count: int | None = field(metadata=c(minimum=1, maximum=MAX_SHARD_COUNT))
    algorithm: Literal["quota", "slots", "ketama"] | Unset = field(
        default=UNSET, metadata=c(description="absent: keep the current algorithm")
    )


@dataclass(frozen=True, kw_only=True)
class PodRegistration:
    """PUT /v1/pods/{name}. ``weight`` absent: keep it (1 for a new pod)."""

    url: str | None = field(
        default=None,
        metadata=c(
            maxLength=2048,
            pattern=POD_URL,
            check=check_pod_url,
            description="http(s)://host[:port][/path]: no credentials, query, fragment or whitespace",
        ),
    )
    weight: float | Unset = field(default=UNSET, metadata=c(exclusiveMinimum=0, maximum=MAX_WEIGHT))


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """POST /v1/pods/{name}/heartbeat."""

    load: dict[str, Any] | Unset = field(
        default=UNSET, metadata=c(description="the pod's load report (free-form)")
    )


@dataclass(frozen=True, kw_only=True)
class PinChange:
    """PUT /v1/pins/{guild_id}."""

    pod: str
    reason: str = field(default="", metadata=c(maxLength=MAX_REASON))


@dataclass(frozen=True, kw_only=True)
class PinSet:
    """One pin of POST /v1/pins/bulk."""

    guild_id: str
    pod: str
    reason: str = field(default="", metadata=c(maxLength=MAX_REASON))


@dataclass(frozen=True, kw_only=True)
class BulkPins:
    """POST /v1/pins/bulk: pins to set and guild ids to unpin, in one change."""

    set: list[PinSet] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class MigrationStart:
    """POST /v1/migrations."""

    guild_id: str
    to: str


@dataclass(frozen=True, kw_only=True)
class SavedAssignment:
    """A plan's saved ``current_assignment``: the placement a restore plan returns to."""

    shards: dict[str, str | None] | None = field(
        default=None, metadata=c(keys=SHARD, check=_shard_keys)
    )
    pins: dict[str, str] | None = field(
        default=None, metadata=c(keys=GUILD_ID, check=_guild_id_keys)
    )


@dataclass(frozen=True, kw_only=True)
class PlanRequest:
    """POST /v1/plans: a rebalancing plan, or (one of) drain / repair / restore."""

    epsilon: float = field(default=0.05, metadata=c(minimum=0, maximum=10))
    max_moves: int | None = field(default=None, metadata=c(minimum=1))
    restore: SavedAssignment | Unset = field(
        default=UNSET,
        metadata=c(description="a saved current_assignment: plan the moves back to it"),
    )
    drain: str | Unset = field(
        default=UNSET, metadata=c(description="a draining pod: plan the moves that empty it")
    )
    repair: bool = field(
        default=False,
        metadata=c(description="plan moves that carry stranded rows to their owners"),
    )


@dataclass(frozen=True, kw_only=True)
class PlanApply:
    """POST /v1/plans/{id}/apply."""

    concurrency: int = field(default=1, metadata=c(minimum=1, maximum=64))


# -- responses ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Error:
    """Every error: ``{"error": message}``."""

    error: str


@dataclass(frozen=True, kw_only=True)
class Version:
    """The table version (writes answer with it, plus what they changed)."""

    version: int


@dataclass(frozen=True, kw_only=True)
class RingSettings:
    """GET /v1/ring."""

    version: int
    shard_count: int | None
    algorithm: Literal["quota", "slots", "ketama"]


BODIES: dict[tuple[str, str], type[Any]] = {
    ("put", "/v1/ring"): RingChange,
    ("put", "/v1/pods/{name}"): PodRegistration,
    ("post", "/v1/pods/{name}/heartbeat"): Heartbeat,
    ("put", "/v1/pins/{guild_id}"): PinChange,
    ("post", "/v1/pins/bulk"): BulkPins,
    ("post", "/v1/migrations"): MigrationStart,
    ("post", "/v1/plans"): PlanRequest,
    ("post", "/v1/plans/{id}/apply"): PlanApply,
}
"""(method, route) -> the model of its JSON body."""
