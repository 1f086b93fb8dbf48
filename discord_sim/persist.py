"""The simulator's world on disk: ``serve discord-sim --state-file PATH``.

WHY: a local stack that restarts must find the same Discord: the same guild, channel and
member ids (the config service and the pods keep rows keyed by them), the commands the
pods registered, the users who can sign in and their access tokens. So the world
(guilds, channels, roles, members, the newest messages, application commands, OAuth
users, tokens and redirect URIs) is saved as one JSON document and loaded at start.

* Saved at most every ``FLUSH_DELAY`` seconds after a change (any successful request that
  is not a GET), and once more on a clean stop; atomically (``write_atomic``: temp file,
  fsync, rename), keeping the previous version as ``<file>.bak``. A ``kill -9`` loses at
  most the last ``FLUSH_DELAY`` seconds, never the file.
* A file that does not parse, or does not describe a world, stops the simulator with one
  line naming it (and the backup, if that one is readable): never a silent fresh start.
* A write that fails (disk full) is logged and retried; the previous file stays.
* Gateway sessions are not saved: clients IDENTIFY again, as after a Discord outage.
* Format 2 adds the moderation state (moderation.py): the bot's messages with their
  components, reactions, nonces, bans, timeouts, threads and the audit log. A format 1
  file loads with none of it. Bounds (a file we write always loads; one that exceeds them
  was edited by hand and is refused): the newest ``MESSAGES_KEPT`` (2000) bot messages,
  messages reacted to, threads and audit-log entries, like the world's messages (the file
  is rewritten whole, on the event loop's thread, after every change: at ~1 KB a message,
  2000 keep a write near 2 MB; the simulator itself keeps up to 10,000 bot messages, and
  a dev stack's restart only needs the recent ones: open votes, tickets); and at most
  ``SET_KEPT`` (100,000) bans, timeouts, reactions and thread members each, which a dev
  stack never reaches (a ban is never dropped silently: past that, a warning is logged).
  Ids must be snowflakes that fit PostgreSQL's BIGINT (1 .. 2**63-1), as the services
  store them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Reversible
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from modbot_runtime.atomic import StateFileError, corrupt_message, read_json, write_atomic

from . import commands, moderation
from .oauth import OAuthUser
from .settings import TEST_SIGNING_SEED
from .world import MESSAGES_KEPT, Guild, User

if TYPE_CHECKING:
    from .app import DiscordSim

__all__ = ["FORMAT", "Persister", "StateFileError", "dump", "load", "read_state", "verify"]

log = logging.getLogger("modbot.sim")

FORMAT = 2  # 2: with "moderation"; 1 (without it) still loads
FORMATS = (1, 2)
SET_KEPT = 100_000  # bans, timeouts, reactions, thread members (each, in total)
MAX_SNOWFLAKE = 2**63 - 1  # PostgreSQL BIGINT: what the services store ids in
# ModerationState's attributes this file saves (a new one must be added here: tested)
MODERATION_FIELDS = frozenset(
    {
        "messages",
        "nonces",
        "bans",
        "timeouts",
        "guild_of",
        "created",
        "audit_log",
        "threads",
        "thread_members",
        "reactions",
        "reacted",
    }
)
FLUSH_DELAY = 0.5  # seconds: changes within this window are written together
RETRY_DELAY = 2.0  # seconds before a failed write is tried again
WHAT = "simulator state file"
LOAD_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError)


def dump(sim: DiscordSim, registry: commands.CommandRegistry) -> dict[str, Any]:
    """The world as one JSON-able document (see the module docstring for what is in it)."""
    world = sim.world
    users: dict[str, Any] = {}
    guilds = []
    for guild in world.guilds.values():
        for user, _ in guild.members.values():
            users[str(user.id)] = [user.name, user.bot]
        users[str(guild.owner.id)] = [guild.owner.name, guild.owner.bot]
        guilds.append(
            {
                "id": str(guild.id),
                "name": guild.name,
                "owner": str(guild.owner.id),
                "channels": {str(c): n for c, n in guild.channels.items()},
                "roles": {str(r): [n, p] for r, (n, p) in guild.roles.items()},
                "members": {
                    str(m): [str(r) for r in roles] for m, (_, roles) in guild.members.items()
                },
            }
        )
    oauth = sim.oauth
    now = time.time()
    return {
        "format": FORMAT,
        "application_id": str(world.application_id),
        "next_id": world.ids.counter,
        "users": users,
        "guilds": guilds,
        "messages": [
            [str(mid), str(g), str(c), str(a), content, ts]
            for mid, (g, c, a, content, ts) in world.messages.items()
        ],
        "commands": {
            "enforce": registry.enforce,
            "scopes": [
                {"guild_id": None if g is None else str(g), "commands": list(cmds.values())}
                for g, cmds in registry.scopes.items()
            ],
        },
        "oauth": {
            "users": [
                {
                    "id": str(u.id),
                    "username": u.username,
                    "guilds": {str(g): v for g, v in u.guilds.items()},
                }
                for u in (oauth.users.values() if oauth else [])
            ],
            "tokens": {
                token: [str(uid), sorted(scopes), expires]
                for token, (uid, scopes, expires) in (oauth.tokens.items() if oauth else [])
                if expires > now
            },
            "redirect_uris": oauth.redirect_uris if oauth else [],
        },
        "moderation": dump_moderation(sim),
    }


def load(sim: DiscordSim, registry: commands.CommandRegistry, data: Any) -> None:
    """Replace the simulator's world with ``data`` (from ``dump``); ValueError, KeyError
    or TypeError when it is not such a document (nothing is changed then)."""
    if not isinstance(data, dict) or data.get("format") not in FORMATS:
        raise ValueError(f"not a simulator world of format {' or '.join(map(str, FORMATS))}")
    world = sim.world
    if int(data["application_id"]) != world.application_id:
        raise ValueError(
            f"it is the world of application {data['application_id']}, "
            f"not of {world.application_id}"
        )
    users = {int(uid): User(int(uid), str(v[0]), bool(v[1])) for uid, v in data["users"].items()}
    users[world.bot.id] = world.bot
    guilds: dict[int, Guild] = {}
    for g in data["guilds"]:
        gid = int(g["id"])
        guild = Guild(gid, str(g["name"]), users[int(g["owner"])])
        guild.channels = {int(c): str(n) for c, n in g["channels"].items()}
        guild.roles = {int(r): (str(v[0]), int(v[1])) for r, v in g["roles"].items()}
        guild.members = {
            int(m): (users[int(m)], [int(r) for r in roles]) for m, roles in g["members"].items()
        }
        if gid not in guild.roles or not guild.channels:
            raise ValueError(f"guild {gid} lacks its @everyone role or any channel")
        guilds[gid] = guild
    messages = [
        (int(m[0]), (int(m[1]), int(m[2]), int(m[3]), str(m[4]), str(m[5])))
        for m in data["messages"][-MESSAGES_KEPT:]
    ]
    scopes: dict[int | None, dict[tuple[int, str], dict[str, Any]]] = {}
    for scope in data["commands"]["scopes"]:
        key = None if scope["guild_id"] is None else int(scope["guild_id"])
        scopes[key] = {(int(c["type"]), str(c["name"])): dict(c) for c in scope["commands"]}
    oauth = data["oauth"]
    oauth_users = {
        int(u["id"]): OAuthUser(
            int(u["id"]), str(u["username"]), {int(g): dict(v) for g, v in u["guilds"].items()}
        )
        for u in oauth["users"]
    }
    tokens = {
        str(t): (int(v[0]), frozenset(str(s) for s in v[1]), float(v[2]))
        for t, v in oauth["tokens"].items()
    }
    redirect_uris = [str(u) for u in oauth["redirect_uris"]]
    counter = int(data["next_id"])
    mod = load_moderation(data["moderation"], guilds) if data["format"] >= 2 else empty_moderation()
    # everything parsed: only now replace the world
    world.guilds = guilds
    world.messages.clear()
    world.messages.update(messages)
    world.ids.counter = max(world.ids.counter, counter)
    registry.scopes = scopes
    registry.enforce = bool(data["commands"]["enforce"])
    if sim.oauth is not None:
        sim.oauth.users = oauth_users
        sim.oauth.tokens = tokens
        sim.oauth.redirect_uris = redirect_uris
    if sim.moderation is not None:
        for name, value in mod.items():
            setattr(sim.moderation, name, value)


def _newest(items: Reversible[Any], n: int, keep: Callable[[Any], bool]) -> list[Any]:
    """The last ``n`` of ``items`` that ``keep`` takes, oldest first (walked from the
    newest: the simulator holds up to 10,000 messages, the file 2000)."""
    picked = list(itertools.islice(filter(keep, reversed(items)), n))
    picked.reverse()
    return picked


def _in_range(*ids: int) -> bool:
    return all(1 <= i <= MAX_SNOWFLAKE for i in ids)


def _fits(check: Callable[..., Any], *args: Any) -> bool:
    """Whether load would take it (``check`` is load's own check for it)."""
    try:
        check(*args, "dump")
    except LOAD_ERRORS:
        return False
    return True


def dump_moderation(sim: DiscordSim) -> dict[str, Any]:
    """The moderation state (moderation.py), bounded as the module docstring says."""
    state = sim.moderation
    if state is None:
        return {}
    guilds = sim.world.guilds
    # what load would refuse is not written (a control call can name any number as a
    # user or message; Discord's ids are never 0 or past BIGINT): a saved file loads
    mids = _newest(
        state.messages,
        MESSAGES_KEPT,
        lambda m: _in_range(state.guild_of.get(m, 0)) and _fits(_message, state.messages[m]),
    )
    reacted = _newest(state.reacted, MESSAGES_KEPT, lambda m: _fits(_message, state.reacted[m]))
    saved = set(mids)
    kept = saved | set(reacted) | set(sim.world.messages)
    reactions: dict[str, dict[str, list[str]]] = {}
    budget = SET_KEPT
    for mid in reversed(state.reactions):  # the newest reacted-to first
        if mid not in kept or not _in_range(mid):
            continue
        for emoji, users in state.reactions[mid].items():
            picked = sorted(u for u in users if _in_range(u))[:budget]
            if picked and 0 < len(emoji) <= 64:
                budget -= len(picked)
                reactions.setdefault(str(mid), {})[emoji] = [str(u) for u in picked]
    wall, mono = time.time(), time.monotonic()
    threads = _newest(
        state.threads, MESSAGES_KEPT, lambda t: _fits(_thread, state.threads[t], guilds)
    )
    bans = [(g, u) for g, users in state.bans.items() for u in sorted(users) if _in_range(g, u)]
    members = [
        (t, u) for t in threads for u in sorted(state.thread_members.get(t, ())) if _in_range(u)
    ]
    if len(bans) > SET_KEPT or len(state.timeouts) > SET_KEPT or len(members) > SET_KEPT:
        log.warning("more than %d bans, timeouts or thread members: not all are saved", SET_KEPT)
    saved_bans: dict[str, list[str]] = {}
    for g, u in bans[:SET_KEPT]:
        saved_bans.setdefault(str(g), []).append(str(u))
    saved_members: dict[str, list[str]] = {}
    for t, u in members[:SET_KEPT]:
        saved_members.setdefault(str(t), []).append(str(u))
    return {
        "messages": [[str(state.guild_of.get(m, 0)), state.messages[m]] for m in mids],
        "reacted": [state.reacted[m] for m in reacted],
        "reactions": reactions,
        "nonces": [
            [str(author), nonce, str(mid), wall - (mono - at)]
            for (author, nonce), (mid, at) in state.nonces.items()
            if mid in saved and _in_range(author) and mono - at <= moderation.NONCE_WINDOW
        ][-MESSAGES_KEPT:],
        "bans": saved_bans,
        "timeouts": [
            [str(g), str(u), until]
            for (g, u), until in itertools.islice(
                ((k, v) for k, v in state.timeouts.items() if _in_range(*k)), SET_KEPT
            )
        ],
        "audit_log": _newest(state.audit_log, MESSAGES_KEPT, lambda e: _fits(_audit_entry, e)),
        "threads": [state.threads[t] for t in threads],
        "thread_members": saved_members,
        "created": state.created,
    }


def empty_moderation() -> dict[str, Any]:
    """What a simulator without saved moderation state starts with (a format 1 file)."""
    return {
        "messages": OrderedDict(),
        "nonces": {},
        "bans": {},
        "timeouts": {},
        "guild_of": {},
        "created": 0,
        "audit_log": [],
        "threads": {},
        "thread_members": {},
        "reactions": {},
        "reacted": OrderedDict(),
    }


def _snowflake(value: Any, where: str) -> int:
    """A Discord id as saved (a decimal string; an int is taken too), in BIGINT's range."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not (text.isascii() and text.isdigit()) or len(text) > 40:
        raise ValueError(f"{where}: {str(value)[:40]!r} is not a snowflake")
    number = int(text)
    if not 1 <= number <= MAX_SNOWFLAKE:
        raise ValueError(f"{where}: {number} is out of a snowflake's range")
    return number


def _sized(value: Any, kind: type[list[Any]] | type[dict[Any, Any]], where: str, limit: int) -> Any:
    """A list or dict of at most ``limit`` entries (more: the file was not written by us)."""
    if not isinstance(value, kind):
        raise ValueError(f"{where}: not a {kind.__name__}")
    if len(value) > limit:
        raise ValueError(f"{where}: {len(value)} entries, more than the {limit} saved")
    return value


def _rest_ids(obj: Any, where: str, *keys: str) -> dict[str, Any]:
    """A REST-shaped object whose id fields are snowflake strings, as Discord sends them."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: not an object")
    for key in keys:
        if not isinstance(obj.get(key), str):
            raise ValueError(f"{where}.{key}: not a snowflake string")
        _snowflake(obj[key], f"{where}.{key}")
    return obj


def _audit_entry(entry: Any, at: str) -> None:
    _rest_ids(entry, at, "id", "user_id", "target_id", "guild_id")
    kind = entry.get("action_type")
    if isinstance(kind, bool) or not isinstance(kind, int):
        raise ValueError(f"{at}.action_type: not an integer")


def _thread(thread: Any, guilds: dict[int, Guild], at: str) -> None:
    _rest_ids(thread, at, "id", "guild_id", "parent_id")
    meta, name = thread.get("thread_metadata"), thread.get("name")
    if not (isinstance(name, str) and 1 <= len(name) <= 100 and isinstance(meta, dict)):
        raise ValueError(f"{at}: no name of 1-100 characters or no thread_metadata")
    if int(thread["guild_id"]) not in guilds:
        raise ValueError(f"{at}: guild {thread['guild_id']} is not in the world")


def _message(obj: Any, where: str) -> dict[str, Any]:
    msg = _rest_ids(obj, where, "id", "channel_id")
    if not isinstance(msg.get("content"), str) or not isinstance(msg.get("components", []), list):
        raise ValueError(f"{where}: content or components of the wrong type")
    return msg


def load_moderation(data: Any, guilds: dict[int, Guild]) -> dict[str, Any]:
    """ModerationState's attributes from ``dump_moderation``'s document; ValueError naming
    the part (``moderation.bans``...) that is not what we write."""
    where = "moderation"
    data = _sized(data, dict, where, 20)
    out = empty_moderation()
    for i, pair in enumerate(_sized(data["messages"], list, f"{where}.messages", MESSAGES_KEPT)):
        at = f"{where}.messages[{i}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"{at}: not a [guild id, message] pair")
        msg = _message(pair[1], at)
        mid = int(msg["id"])
        out["messages"][mid] = msg
        out["guild_of"][mid] = _snowflake(pair[0], f"{at}.guild")
    for i, msg in enumerate(_sized(data["reacted"], list, f"{where}.reacted", MESSAGES_KEPT)):
        out["reacted"][int(_message(msg, f"{where}.reacted[{i}]")["id"])] = msg
    total = 0
    for mid, emojis in _sized(data["reactions"], dict, f"{where}.reactions", SET_KEPT).items():
        at = f"{where}.reactions.{str(mid)[:24]}"
        per: dict[str, set[int]] = {}
        for emoji, users in _sized(emojis, dict, at, SET_KEPT).items():
            if not 0 < len(emoji) <= 64:
                raise ValueError(f"{at}: an emoji is a name or name:id of 1-64 characters")
            total += len(_sized(users, list, at, SET_KEPT))
            per[emoji] = {_snowflake(u, f"{at}.{emoji}") for u in users}
        out["reactions"][_snowflake(mid, at)] = per
    if total > SET_KEPT:
        raise ValueError(f"{where}.reactions: {total} users, more than the {SET_KEPT} saved")
    wall, mono = time.time(), time.monotonic()
    for i, n in enumerate(_sized(data["nonces"], list, f"{where}.nonces", MESSAGES_KEPT)):
        at = f"{where}.nonces[{i}]"
        if not (isinstance(n, list) and len(n) == 4 and isinstance(n[1], str)):
            raise ValueError(f"{at}: not [author, nonce, message id, time]")
        ts = n[3]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise ValueError(f"{at}: the time is not a number")
        age = wall - ts
        if age <= moderation.NONCE_WINDOW:  # older ones deduplicate nothing any more
            key = (_snowflake(n[0], at), n[1])
            out["nonces"][key] = (_snowflake(n[2], at), mono - max(age, 0.0))
    bans = _sized(data["bans"], dict, f"{where}.bans", SET_KEPT)
    if sum(len(u) if isinstance(u, list) else 0 for u in bans.values()) > SET_KEPT:
        raise ValueError(f"{where}.bans: more than the {SET_KEPT} saved")
    for gid, users in bans.items():
        at = f"{where}.bans.{str(gid)[:24]}"
        out["bans"][_snowflake(gid, at)] = {
            _snowflake(u, at) for u in _sized(users, list, at, SET_KEPT)
        }
    for i, t in enumerate(_sized(data["timeouts"], list, f"{where}.timeouts", SET_KEPT)):
        at = f"{where}.timeouts[{i}]"
        if not (isinstance(t, list) and len(t) == 3 and isinstance(t[2], str)):
            raise ValueError(f"{at}: not [guild id, user id, until]")
        out["timeouts"][(_snowflake(t[0], at), _snowflake(t[1], at))] = t[2]
    audit = _sized(data["audit_log"], list, f"{where}.audit_log", MESSAGES_KEPT)
    for i, entry in enumerate(audit):
        _audit_entry(entry, f"{where}.audit_log[{i}]")
    out["audit_log"] = list(audit)
    for i, thread in enumerate(_sized(data["threads"], list, f"{where}.threads", MESSAGES_KEPT)):
        _thread(thread, guilds, f"{where}.threads[{i}]")
        out["threads"][int(thread["id"])] = thread
    members = _sized(data["thread_members"], dict, f"{where}.thread_members", MESSAGES_KEPT)
    if sum(len(u) if isinstance(u, list) else 0 for u in members.values()) > SET_KEPT:
        raise ValueError(f"{where}.thread_members: more than the {SET_KEPT} saved")
    for tid, users in members.items():
        at = f"{where}.thread_members.{str(tid)[:24]}"
        out["thread_members"][_snowflake(tid, at)] = {
            _snowflake(u, at) for u in _sized(users, list, at, SET_KEPT)
        }
    created = data["created"]
    if isinstance(created, bool) or not isinstance(created, int) or created < 0:
        raise ValueError(f"{where}.created: not a count")
    out["created"] = created
    return out


def read_state(path: Path) -> Any:
    """The saved document, None when there is none yet; StateFileError when unreadable."""
    return read_json(path, WHAT)


def verify(path: Path, application_id: int) -> None:
    """Refuse (StateFileError, one line naming the file) a saved world that would not
    load, before anything listens: ``serve discord-sim`` checks it at start."""
    from .app import DiscordSim, build_sim_app

    data = read_state(path)
    if data is None:
        return
    sim = DiscordSim(
        bot_token="verify", application_id=application_id, signing_seed=TEST_SIGNING_SEED
    )
    app = build_sim_app(sim)
    try:
        load(sim, commands.registry(app), data)
    except LOAD_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise StateFileError(corrupt_message(path, WHAT, reason)) from None


class Persister:
    """Writes the world after changes, coalesced, off the event loop's thread."""

    def __init__(self, sim: DiscordSim, registry: commands.CommandRegistry, path: Path) -> None:
        self.sim = sim
        self.registry = registry
        self.path = path
        self.dirty = False
        self.writes = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def restore(self) -> bool:
        """Load the saved world, if there is one (True); StateFileError if it is unusable."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # a writer killed
            with contextlib.suppress(OSError):  # mid-write left it; never the file itself
                stale.unlink()
        data = read_state(self.path)
        if data is None:
            return False
        try:
            load(self.sim, self.registry, data)
        except LOAD_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise StateFileError(corrupt_message(self.path, WHAT, reason)) from None
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sim-persist")

    def mark(self) -> None:
        self.dirty = True
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(FLUSH_DELAY)
            if not await self.flush():
                await asyncio.sleep(RETRY_DELAY)
                self._wake.set()

    async def flush(self) -> bool:
        """Write the world if it changed; False if the write failed (it stays dirty)."""
        async with self._lock:
            if not self.dirty:
                return True
            self.dirty = False
            data = json.dumps(dump(self.sim, self.registry), separators=(",", ":")).encode()
            try:
                await asyncio.to_thread(write_atomic, self.path, data, backup=True)
            except OSError as exc:
                self.dirty = True
                self.failures += 1
                log.error("cannot save the simulator's world to %s: %s", self.path, exc)
                return False
            self.writes += 1
            return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


@web.middleware
async def mark_changes(request: web.Request, handler: Any) -> web.StreamResponse:
    """Any successful request that is not a read may have changed the world."""
    response: web.StreamResponse = await handler(request)
    if request.method not in ("GET", "HEAD", "OPTIONS") and response.status < 400:
        persister = request.app.get(PERSISTER_KEY)
        if persister is not None:
            persister.mark()
    return response


PERSISTER_KEY: web.AppKey[Persister] = web.AppKey("sim-persister", Persister)
