"""The typed client of a gateway pod's migration API (``/internal/...``).

The config service's migrator moves guilds with these calls; the pod routes the same
paths from the constants below, so the two ends share one declaration of each path.
Every call carries the migration token; the guild calls that change state carry the
migration's epoch (the pod's fencing token).

A pod is a peer over the network, not a trusted library: every answer is checked
against its documented shape before it is returned, and an answer that is not JSON,
has the wrong types or is larger than the cap raises :class:`PodAnswerInvalid` (never
a ``KeyError`` deep in a migration step). Only ``pod`` (the answering pod's name, which
no caller acts on) may be missing; every other documented field must be there. Failures are classed by what retrying does:
:class:`PodUnavailable` (down, slow, busy: a retry may work), :class:`PodRefused`
(a 3xx/4xx answer: it will not) and :class:`PodAnswerInvalid`.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aiohttp

from modbot_ring import InvalidGuildId, parse_guild_id

__all__ = [
    "EXPORT_PATH",
    "FREEZE_PATH",
    "GUILDS_PATH",
    "GUILD_PATH",
    "HELD_PATH",
    "IMPORT_PATH",
    "LARGE_ANSWER",
    "REPLAY_PATH",
    "SMALL_ANSWER",
    "TABLE_PATH",
    "UNFREEZE_PATH",
    "DropResult",
    "ExportMode",
    "GuildList",
    "GuildStatus",
    "HeldEvent",
    "ImportResult",
    "PodAnswerInvalid",
    "PodCallError",
    "PodClient",
    "PodRefused",
    "PodUnavailable",
    "ReplayResult",
    "TableVersion",
    "UnfreezeResult",
    "precopy_track",
]

# -- the paths (aiohttp route patterns; ``str.format(guild_id=...)`` gives the URL path) --
TABLE_PATH = "/internal/table"  # GET: the table version the pod runs on
GUILDS_PATH = "/internal/guilds"  # GET: the guilds the pod holds rows of
GUILD_PATH = "/internal/guilds/{guild_id}"  # GET: the guild's migration status; DELETE: drop
FREEZE_PATH = GUILD_PATH + "/freeze"  # POST: stop writing the guild, hold its events
EXPORT_PATH = GUILD_PATH + "/export"  # GET: the guild's rows (full, pre-copy or delta)
IMPORT_PATH = GUILD_PATH + "/import"  # POST: replace the guild's rows with an export
HELD_PATH = GUILD_PATH + "/held"  # GET: the events held since the freeze
REPLAY_PATH = GUILD_PATH + "/replay"  # POST: apply held events, go live (target)
UNFREEZE_PATH = GUILD_PATH + "/unfreeze"  # POST: write what was held, carry on (source)

SMALL_ANSWER = 1 << 20  # status, table version, results: a few hundred bytes in practice
LARGE_ANSWER = 256 << 20  # exports, held events, guild lists: the pod's own request cap
ERROR_TEXT = 200  # characters of a refusal's body kept in the error message
MAX_INT = 2**63 - 1  # epochs, versions and counts are signed 64-bit on every store

ExportMode = Literal["full", "precopy", "delta"]
HeldEvent = tuple[str, dict[str, Any]]  # (event key, event): the pod dedups by the key
T = TypeVar("T")


class PodCallError(Exception):
    """A call of a pod's migration API did not do what was asked.

    ``status`` is the pod's own HTTP answer (0: there was none); it describes the peer,
    it is not a status for whoever called us."""

    def __init__(self, pod: str, what: str, message: str, status: int = 0) -> None:
        super().__init__(f"{pod}: {what}: {message}")
        self.pod = pod
        self.what = what
        self.status = status


class PodUnavailable(PodCallError):
    """No answer (down, unreachable, slower than the timeout) or a busy one (409, 421,
    503, any 5xx): the same call may succeed later."""


class PodRefused(PodCallError):
    """The pod answered with a 3xx or a 4xx other than 409/421: retrying will not help."""


class PodAnswerInvalid(PodCallError):
    """A 2xx answer that is not the documented shape (not JSON, wrong types, too big)."""


class _Shape(ValueError):
    """An answer field is not what the API documents (turned into PodAnswerInvalid)."""


# -- the answers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuildStatus:
    """``GET /internal/guilds/{id}``: where the guild stands on this pod."""

    guild_id: int
    pod: str | None  # the answering pod's name (informational: may be absent)
    epoch: int
    state: str  # the gate's fence state: normal | frozen | holding | ...
    holding: bool  # events of the guild are held, not written
    shard_ready: bool  # the pod listens to the guild's shard (and its shards converged)
    held: int  # events held so far
    rows: Mapping[str, int]  # rows per table
    table_version: int | None

    @classmethod
    def parse(cls, data: object) -> GuildStatus:
        obj = _object(data)
        return cls(
            guild_id=_guild_id(obj.get("guild_id"), "guild_id"),
            pod=_optional_str(obj.get("pod"), "pod"),
            epoch=_int(obj.get("epoch"), "epoch", minimum=-1),
            state=_str(obj.get("state"), "state"),
            holding=_bool(obj.get("holding"), "holding"),
            shard_ready=_bool(obj.get("shard_ready"), "shard_ready"),
            held=_int(obj.get("held"), "held"),
            rows=_counts(obj.get("rows"), "rows"),
            table_version=_optional_int(obj.get("table_version"), "table_version"),
        )


@dataclass(frozen=True, slots=True)
class GuildList:
    """``GET /internal/guilds``: the guilds the pod holds rows of."""

    pod: str | None  # the answering pod's name (informational: may be absent)
    guilds: tuple[int, ...]

    @classmethod
    def parse(cls, data: object) -> GuildList:
        obj = _object(data)
        ids = obj.get("guilds")
        if not isinstance(ids, list):
            raise _Shape("guilds must be a list of guild ids")
        return cls(
            pod=_optional_str(obj.get("pod"), "pod"),
            guilds=tuple(_guild_id(g, f"guilds[{i}]") for i, g in enumerate(ids)),
        )


@dataclass(frozen=True, slots=True)
class TableVersion:
    """``GET /internal/table``: the routing-table version the pod runs on (None: none yet)."""

    pod: str | None  # the answering pod's name (informational: may be absent)
    version: int | None

    @classmethod
    def parse(cls, data: object) -> TableVersion:
        obj = _object(data)
        return cls(
            _optional_str(obj.get("pod"), "pod"), _optional_int(obj.get("version"), "version")
        )


@dataclass(frozen=True, slots=True)
class ImportResult:
    """``POST .../import``: what the target stored, as it verified it."""

    mode: str
    counts: Mapping[str, int]  # rows imported per table
    totals: Mapping[str, int]  # rows of the guild per table after the import
    checksum: str

    @classmethod
    def parse(cls, data: object) -> ImportResult:
        obj = _object(data)
        return cls(
            mode=_str(obj.get("mode"), "mode"),
            counts=_counts(obj.get("counts"), "counts"),
            totals=_counts(obj.get("totals"), "totals"),
            checksum=_str(obj.get("checksum"), "checksum"),
        )


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """``POST .../replay``: events applied, how long the pod waited for the table, and
    events it refused as malformed (logged there; 0 from pods that do not say)."""

    applied: int
    table_wait: float
    refused: int = 0

    @classmethod
    def parse(cls, data: object) -> ReplayResult:
        obj = _object(data)
        return cls(
            _int(obj.get("applied"), "applied"),
            _seconds(obj.get("table_wait", 0.0)),
            _int(obj.get("refused", 0), "refused"),
        )


@dataclass(frozen=True, slots=True)
class UnfreezeResult:
    """``POST .../unfreeze``: events written on the source, its rows now."""

    applied: int
    rows: Mapping[str, int]

    @classmethod
    def parse(cls, data: object) -> UnfreezeResult:
        obj = _object(data)
        return cls(_int(obj.get("applied"), "applied"), _counts(obj.get("rows"), "rows"))


@dataclass(frozen=True, slots=True)
class DropResult:
    """``DELETE /internal/guilds/{id}``: rows deleted per table."""

    deleted: Mapping[str, int]

    @classmethod
    def parse(cls, data: object) -> DropResult:
        return cls(_counts(_object(data).get("deleted"), "deleted"))


def _held(data: object) -> tuple[HeldEvent, ...]:
    events = _object(data).get("events")
    if not isinstance(events, list):
        raise _Shape("events must be a list of [key, event] pairs")
    held: list[HeldEvent] = []
    for i, pair in enumerate(events):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], dict)
        ):
            raise _Shape(f"events[{i}] must be a [key, event object] pair")
        held.append((pair[0], pair[1]))
    return tuple(held)


async def precopy_track(export: bytes, pod: str) -> str | None:
    """The change tracker a pre-copy export from ``pod`` carries (its ``track``), parsed
    off the loop (an export can be hundreds of megabytes)."""
    what = "pre-copy export"
    try:
        data = await asyncio.to_thread(json.loads, export)
    except (ValueError, RecursionError):
        raise PodAnswerInvalid(pod, what, "the export is not JSON") from None
    if not isinstance(data, dict):
        raise PodAnswerInvalid(pod, what, "the export must be a JSON object")
    track = data.get("track")
    if track is not None and not isinstance(track, str):
        raise PodAnswerInvalid(pod, what, f"track must be a string, got {_show(track)}")
    return track


# -- the client ----------------------------------------------------------------------------


class PodClient:
    """One pod's migration API at ``base_url``, over a session the caller owns.

    ``timeout`` bounds each call as a whole (connect, send, the answer read); connecting
    gets ``connect_timeout`` of it. ``pod`` names the pod in errors and logs."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        *,
        pod: str = "",
        timeout: float = 120.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.pod = pod or self.base_url
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)

    async def table_version(self) -> TableVersion:
        return await self._json("GET", TABLE_PATH, TableVersion.parse)

    async def guilds(self) -> GuildList:
        return await self._json("GET", GUILDS_PATH, GuildList.parse, limit=LARGE_ANSWER)

    async def status(self, guild_id: int) -> GuildStatus:
        return await self._json("GET", _path(GUILD_PATH, guild_id), GuildStatus.parse)

    async def freeze(self, guild_id: int, epoch: int) -> None:
        await self._json("POST", _path(FREEZE_PATH, guild_id), _object, body={"epoch": epoch})

    async def export(
        self,
        guild_id: int,
        mode: ExportMode,
        *,
        track: str | None = None,
        since_id: int | None = None,
        since_time: float | None = None,
    ) -> bytes:
        """The export's bytes as the pod sent them: they go to the target's import
        unchanged (no decode and re-encode inside the freeze)."""
        params: dict[str, str] = {"mode": mode}
        if track is not None:
            params["track"] = track
        if since_id is not None:
            params["since_id"] = str(since_id)
        if since_time is not None:
            params["since_time"] = str(since_time)
        return await self._request(
            "GET", _path(EXPORT_PATH, guild_id), params=params, limit=LARGE_ANSWER
        )

    async def import_rows(self, guild_id: int, epoch: int, export: bytes) -> ImportResult:
        return await self._json(
            "POST",
            _path(IMPORT_PATH, guild_id),
            ImportResult.parse,
            params={"epoch": str(epoch)},
            data=export,
        )

    async def held(self, guild_id: int) -> tuple[HeldEvent, ...]:
        return await self._json("GET", _path(HELD_PATH, guild_id), _held, limit=LARGE_ANSWER)

    async def replay(
        self, guild_id: int, epoch: int, events: Sequence[HeldEvent], version: int
    ) -> ReplayResult:
        """Apply ``events`` on the target, once it runs on table ``version`` (the flip's:
        it fetches that table at once rather than wait for pub/sub or a poll)."""
        body = {"epoch": epoch, "events": [[k, e] for k, e in events], "version": version}
        return await self._json("POST", _path(REPLAY_PATH, guild_id), ReplayResult.parse, body=body)

    async def unfreeze(self, guild_id: int, epoch: int) -> UnfreezeResult:
        return await self._json(
            "POST", _path(UNFREEZE_PATH, guild_id), UnfreezeResult.parse, body={"epoch": epoch}
        )

    async def drop(self, guild_id: int, epoch: int, *, force: bool = False) -> DropResult:
        params = {"epoch": str(epoch), **({"force": "1"} if force else {})}
        return await self._json(
            "DELETE", _path(GUILD_PATH, guild_id), DropResult.parse, params=params
        )

    # -- plumbing ----------------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        parse: Callable[[object], T],
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        data: bytes | None = None,
        limit: int = SMALL_ANSWER,
    ) -> T:
        if body is not None:
            data = json.dumps(body).encode()
        raw = await self._request(method, path, params=params, data=data, limit=limit)
        what = f"{method} {path}"
        try:
            # a large answer (held events, a long guild list) is parsed off the loop
            value = json.loads(raw) if len(raw) < SMALL_ANSWER else await _loads_off_loop(raw)
        except (ValueError, RecursionError):
            raise PodAnswerInvalid(self.pod, what, "the answer is not JSON") from None
        try:
            return parse(value)
        except _Shape as exc:
            raise PodAnswerInvalid(self.pod, what, f"unexpected answer: {exc}") from None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        limit: int,
    ) -> bytes:
        what = f"{method} {path}"
        try:
            async with self.session.request(
                method,
                f"{self.base_url}{path}",
                params=params,
                data=data,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,  # the token goes to the registered URL, nowhere else
            ) as resp:
                if resp.status < 300:
                    return await _read_capped(resp, limit, self.pod, what)
                text = (await resp.content.read(4 * ERROR_TEXT)).decode("utf-8", "replace")
                message = f"{resp.status} {text[:ERROR_TEXT]}"
                if resp.status in (409, 421, 503) or resp.status >= 500:
                    raise PodUnavailable(self.pod, what, message, resp.status)
                raise PodRefused(self.pod, what, message, resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                message = f"no answer within {self._timeout.total:g} s"
            else:
                message = str(exc) or type(exc).__name__
            raise PodUnavailable(self.pod, what, message) from exc


async def _read_capped(resp: aiohttp.ClientResponse, limit: int, pod: str, what: str) -> bytes:
    """The answer's body, refused as soon as it is known to exceed ``limit`` bytes."""
    if resp.content_length is not None and resp.content_length > limit:
        raise PodAnswerInvalid(pod, what, f"the answer is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PodAnswerInvalid(pod, what, f"the answer is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _loads_off_loop(raw: bytes) -> object:
    return await asyncio.to_thread(json.loads, raw)


def _path(pattern: str, guild_id: int) -> str:
    return pattern.format(guild_id=guild_id)


# -- shape checks ----------------------------------------------------------------------------


def _object(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Shape("the answer must be a JSON object")
    return value


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise _Shape(f"{name} must be a string, got {_show(value)}")
    return value


def _optional_str(value: object, name: str) -> str | None:
    return None if value is None else _str(value, name)


def _bool(value: object, name: str) -> bool:
    if type(value) is not bool:
        raise _Shape(f"{name} must be true or false, got {_show(value)}")
    return value


def _int(value: object, name: str, *, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= MAX_INT:
        raise _Shape(f"{name} must be an integer in {minimum} .. 2**63-1, got {_show(value)}")
    return value


def _optional_int(value: object, name: str) -> int | None:
    return None if value is None else _int(value, name)


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise _Shape(f"table_wait must be a finite number of seconds, got {_show(value)}")
    return float(value)


def _counts(value: object, name: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise _Shape(f"{name} must be an object of row counts")
    return {_str(k, f"{name} key"): _int(v, f"{name}[{k!r:.40}]") for k, v in value.items()}


def _guild_id(value: object, name: str) -> int:
    if not isinstance(value, str):
        raise _Shape(f"{name} must be a guild id string, got {_show(value)}")
    try:
        return parse_guild_id(value)
    except InvalidGuildId as exc:
        raise _Shape(f"{name}: {exc}") from None


def _show(value: object) -> str:
    return f"{value!r:.40}"
