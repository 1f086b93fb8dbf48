"""Escalations: moderators vote with buttons on what to do about a member; the vote
resolves at its scheduled time, or at once when an option reaches the quorum.

As mod-bot does it (its ``escalations`` and ``escalation_records`` tables, kept here with
its columns and value formats: UUID ids, snowflakes and ISO times as text, ``flags`` JSON
with ``quorum``): the deadline is ``created_at + max(0, timeout - timeout/9 * voters)``
(36 h, 4 h less per voter), strategy ``simple`` resolves early once the leading option has
``quorum`` votes, ``majority`` only at the deadline, and a tie at the deadline resolves
to ``track``. One vote per moderator: voting again changes it.

Exactly once across pods. The rows migrate with the guild (export/import, checksums).
A resolution is *claimed* by one conditional UPDATE (``resolution IS NULL`` and the guild
not frozen or held here by a migration) committed through the batch writer; whoever
reads its own claim token back delivers. Delivery (the action, the resolution notice, the
vote message's buttons removed) is tracked in ``flags`` (``delivered``, ``attempts``,
``next_try``), so it too migrates: an owner that was frozen mid-delivery leaves it to the
next owner, which retries it (boundedly). The notice is sent with ``nonce`` +
``enforce_nonce`` (Discord returns the first message for a repeated nonce), and the
action (ban, kick, timeout) and the message edit are idempotent, so a delivery repeated
after a kill or a migration shows one resolution. Only escalations created by the pods
(``flags.pod``) are resolved here; escalations imported from mod-bot are kept as data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
from discord import app_commands

from modbot_client.monolith_schema import Skip, seconds

from ..discordpy import ban_member, kick_member, role_ids, timeout_member
from ..storage import GuildStore
from .runtime import Runtime, refuse

log = logging.getLogger("modbot.gateway.escalation")

PREFIX = "esc-vote"
RESOLUTIONS = ("track", "timeout", "kick", "ban")
LABELS = {"track": "Track", "timeout": "Timeout 24h", "kick": "Kick", "ban": "Ban"}
STRATEGIES = ("simple", "majority")
DEFAULT_QUORUM = 3
TIMEOUT_SECONDS = 24 * 3600  # what a "timeout" resolution applies
NOT_SET_UP = (
    "This server is not set up yet: an administrator can run `/setup` to choose who "
    "moderates and where reports go."
)

# the guild is not frozen or held here by a migration (the in-memory check's twin, in SQL)
LIVE = (
    "NOT EXISTS (SELECT 1 FROM guild_fences f WHERE f.guild_id = ?"
    " AND f.state IN ('frozen', 'holding'))"
)
POD_ROWS = "CASE WHEN json_valid(flags) THEN json_extract(flags, '$.pod') END = 1"
COLUMNS = (
    "id, thread_id, vote_message_id, reported_user_id, initiator_id, resolution,"
    " resolved_at, created_at, flags, voting_strategy, scheduled_for, guild_id"
)


def iso(ts: float) -> str:
    """mod-bot's time format (JavaScript's toISOString)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def when(text: Any) -> float:
    try:
        return seconds(text)
    except Skip:
        return 0.0


def deadline(created_at: float, voters: int, timeout: float) -> float:
    return created_at + max(0.0, timeout - timeout / 9.0 * voters)


@dataclass(frozen=True)
class Tally:
    counts: dict[str, int]
    voters: int
    leader: str | None  # None when tied or no votes
    leader_count: int

    @property
    def outcome(self) -> str:
        """What a resolution at the deadline does: the leader, or ``track`` on a tie."""
        return self.leader or "track"


def tally(votes: list[tuple[str, str]]) -> Tally:
    """``votes``: (voter, vote) pairs, at most one per voter."""
    counts: dict[str, int] = {}
    for _voter, vote in votes:
        counts[vote] = counts.get(vote, 0) + 1
    top = max(counts.values(), default=0)
    leaders = [v for v, n in counts.items() if n == top and top > 0]
    return Tally(counts, len({v for v, _ in votes}), leaders[0] if len(leaders) == 1 else None, top)


def resolves_early(t: Tally, quorum: int, strategy: str) -> bool:
    return strategy != "majority" and t.leader is not None and t.leader_count >= quorum


@dataclass
class Escalation:
    id: str
    guild_id: int
    thread_id: int
    vote_message_id: int | None
    reported_user_id: int
    initiator_id: int
    resolution: str | None
    resolved_at: str | None
    created_at: float
    flags: dict[str, Any]
    strategy: str
    scheduled_for: float

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Escalation:
        (eid, thread, vote_msg, user, initiator, resolution, resolved_at, created, flags) = row[:9]
        strategy, scheduled, guild = row[9:12]
        try:
            parsed = json.loads(flags) if flags else {}
        except (TypeError, ValueError):
            parsed = {}
        return cls(
            str(eid),
            int(guild),
            int(thread),
            int(vote_msg) if vote_msg not in (None, "") else None,
            int(user),
            int(initiator),
            resolution,
            resolved_at,
            when(created),
            parsed if isinstance(parsed, dict) else {},
            str(strategy or "simple"),
            when(scheduled),
        )

    @property
    def quorum(self) -> int:
        q = self.flags.get("quorum", DEFAULT_QUORUM)
        return q if type(q) is int and q > 0 else DEFAULT_QUORUM


class EscalationStore:
    """The two tables through the pod's store. Writes go through the batch writer (so they
    commit with, never inside, its transactions) and are read back after ``flush``."""

    def __init__(self, store: GuildStore) -> None:
        self.store = store

    async def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        await self.store.flush()
        return await self.store._all(sql, params)

    async def create(self, e: Escalation) -> None:
        self.store.enqueue(
            "INSERT INTO escalations (guild_id, id, thread_id, vote_message_id, reported_user_id,"
            " initiator_id, resolution, resolved_at, created_at, flags, voting_strategy,"
            " scheduled_for) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, ?)",
            (
                e.guild_id,
                e.id,
                str(e.thread_id),
                str(e.vote_message_id) if e.vote_message_id else None,
                str(e.reported_user_id),
                str(e.initiator_id),
                iso(e.created_at),
                json.dumps(e.flags, sort_keys=True),
                e.strategy,
                iso(e.scheduled_for),
            ),
        )
        await self.store.flush()

    async def get(self, guild_id: int, escalation_id: str) -> Escalation | None:
        rows = await self._rows(
            f"SELECT {COLUMNS} FROM escalations WHERE guild_id = ? AND id = ?",
            (guild_id, escalation_id),
        )
        return Escalation.from_row(rows[0]) if rows else None

    async def votes(self, guild_id: int, escalation_id: str) -> list[tuple[str, str]]:
        rows = await self._rows(
            "SELECT voter_id, vote FROM escalation_records WHERE guild_id = ? AND escalation_id = ?"
            " ORDER BY rowid",
            (guild_id, escalation_id),
        )
        seen: dict[str, str] = {}
        for voter, vote in rows:
            seen[str(voter)] = str(vote)  # one per voter (mod-bot's own data may repeat)
        return list(seen.items())

    async def record_vote(self, guild_id: int, escalation_id: str, voter: int, vote: str) -> bool:
        """Record or change ``voter``'s vote; False if the escalation is resolved or the guild
        is frozen or held here (nothing written)."""
        open_and_live = (
            "EXISTS (SELECT 1 FROM escalations WHERE guild_id = ? AND id = ?"
            f" AND resolution IS NULL) AND {LIVE}"
        )
        now = iso(time.time())
        self.store.enqueue(
            "INSERT INTO escalation_records (guild_id, id, escalation_id, voter_id, vote, voted_at)"
            " SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM escalation_records"
            " WHERE guild_id = ? AND escalation_id = ? AND voter_id = ?) AND " + open_and_live,
            (
                guild_id,
                str(uuid.uuid4()),
                escalation_id,
                str(voter),
                vote,
                now,
                guild_id,
                escalation_id,
                str(voter),
                guild_id,
                escalation_id,
                guild_id,
            ),
        )
        self.store.enqueue(
            "UPDATE escalation_records SET vote = ?, voted_at = ? WHERE guild_id = ?"
            " AND escalation_id = ? AND voter_id = ? AND vote != ? AND " + open_and_live,
            (
                vote,
                now,
                guild_id,
                escalation_id,
                str(voter),
                vote,
                guild_id,
                escalation_id,
                guild_id,
            ),
        )
        rows = await self._rows(
            "SELECT vote FROM escalation_records WHERE guild_id = ? AND escalation_id = ?"
            " AND voter_id = ?",
            (guild_id, escalation_id, str(voter)),
        )
        return any(r[0] == vote for r in rows)

    async def reschedule(self, e: Escalation, at: float) -> None:
        self.store.enqueue(
            "UPDATE escalations SET scheduled_for = ? WHERE guild_id = ? AND id = ?"
            " AND resolution IS NULL",
            (iso(at), e.guild_id, e.id),
        )
        await self.store.flush()

    async def claim(self, e: Escalation, resolution: str) -> bool:
        """Resolve ``e`` as ``resolution`` if nobody did; True only for the one who did."""
        token = uuid.uuid4().hex
        self.store.enqueue(
            "UPDATE escalations SET resolution = ?, resolved_at = ?,"
            " flags = json_set(CASE WHEN json_valid(flags) THEN flags ELSE '{}' END,"
            " '$.claim', ?, '$.delivered', 0, '$.attempts', 0, '$.next_try', 0)"
            f" WHERE guild_id = ? AND id = ? AND resolution IS NULL AND {LIVE}",
            (resolution, iso(time.time()), token, e.guild_id, e.id, e.guild_id),
        )
        rows = await self._rows(
            "SELECT json_extract(flags, '$.claim') FROM escalations WHERE guild_id = ? AND id = ?",
            (e.guild_id, e.id),
        )
        return bool(rows) and rows[0][0] == token

    async def delivery(self, e: Escalation, delivered: int, attempts: int, next_try: float) -> None:
        self.store.enqueue(
            "UPDATE escalations SET flags = json_set(flags, '$.delivered', ?, '$.attempts', ?,"
            " '$.next_try', ?) WHERE guild_id = ? AND id = ?",
            (delivered, attempts, next_try, e.guild_id, e.id),
        )
        await self.store.flush()

    async def pending(self) -> list[Escalation]:
        """The pods' escalations still to resolve or to deliver, every guild."""
        rows = await self._rows(
            f"SELECT {COLUMNS} FROM escalations WHERE {POD_ROWS} AND (resolution IS NULL OR"
            " json_extract(flags, '$.delivered') = 0)",
            (),
        )
        return [Escalation.from_row(r) for r in rows]


async def moderator_settings(
    runtime: Runtime, interaction: discord.Interaction, action: str, *, mod_log: bool = True
) -> dict[str, Any] | None:
    """The guild's settings if it is set up (with a mod-log channel, unless ``mod_log`` is
    False) and the caller is a moderator; otherwise the caller is told why, and None."""
    gid = interaction.guild_id
    assert gid is not None
    settings = await runtime.store.settings(gid)
    if settings is None or (mod_log and "mod_log" not in settings):
        await refuse(interaction, NOT_SET_UP)
        return None
    if not is_moderator(interaction, settings):
        await refuse(interaction, f"Only moderators can {action}.")
        return None
    return settings


def is_moderator(interaction: discord.Interaction, settings: dict[str, Any]) -> bool:
    if interaction.permissions.administrator:
        return True
    role = settings.get("moderator_role")
    return role is not None and str(role).isdigit() and int(role) in role_ids(interaction.user)


def protected(
    runtime: Runtime,
    interaction: discord.Interaction,
    target: discord.abc.User,
    settings: dict[str, Any],
    *,
    moderators: bool = False,
) -> str | None:
    """Why mod-bot must not act against ``target`` for this member, or None: never against
    itself, the owner or an administrator (Discord resolves theirs as Administrator), and
    with ``moderators`` not against a moderator unless the member is an administrator
    (a moderator's role must not let them ban their peers through the bot)."""
    me = runtime.client.user
    if target.id in {runtime.client.application_id, me.id if me is not None else None}:
        return "mod-bot does not act against itself."
    perms = getattr(target, "resolved_permissions", None)
    if isinstance(perms, discord.Permissions) and perms.administrator:
        return "mod-bot does not act against the server owner or an administrator."
    role = settings.get("moderator_role")
    if (
        moderators
        and not interaction.permissions.administrator
        and str(role).isdigit()
        and int(str(role)) in role_ids(target)
    ):
        return "Only an administrator can act against a moderator."
    return None


def vote_text(e: Escalation, t: Tally) -> str:
    counts = ", ".join(f"{LABELS[r]} {t.counts.get(r, 0)}" for r in RESOLUTIONS)
    rule = (
        f"resolves early at {e.quorum} votes for one option"
        if e.strategy == "simple"
        else "resolves at the deadline (majority)"
    )
    return (
        f"Escalation about <@{e.reported_user_id}> by <@{e.initiator_id}>: moderators, vote."
        f" {counts}. Deadline <t:{int(e.scheduled_for)}:R>; {rule}."
    )


def vote_view(escalation_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for r in RESOLUTIONS:
        view.add_item(
            discord.ui.Button(
                label=LABELS[r],
                custom_id=f"{PREFIX}|{escalation_id}|{r}",
                style=discord.ButtonStyle.danger
                if r in ("ban", "kick")
                else discord.ButtonStyle.secondary,
            )
        )
    view.stop()  # not kept in discord.py's view store: the custom ids are routed by features/
    return view


def register(tree: app_commands.CommandTree[Any], runtime: Runtime) -> None:
    @tree.command(
        name="escalate", description="Start a moderator vote on what to do about a member"
    )
    @app_commands.describe(
        user="the member the vote is about",
        strategy="simple: resolve once an option has the quorum; majority: at the deadline",
        quorum="votes one option needs to resolve early (simple strategy)",
    )
    @app_commands.choices(
        strategy=[app_commands.Choice(name=s, value=s) for s in STRATEGIES],
    )
    @app_commands.guild_only()
    async def escalate(
        interaction: discord.Interaction,
        user: discord.User,
        strategy: str | None = None,
        quorum: app_commands.Range[int, 1, 25] | None = None,
    ) -> None:
        await start(runtime, interaction, user, strategy or "simple", quorum)

    @tree.context_menu(name="Escalate")
    @app_commands.guild_only()
    async def escalate_message(interaction: discord.Interaction, message: discord.Message) -> None:
        """The same vote about a message's author (mod-bot escalates from a report)."""
        await start(runtime, interaction, message.author, "simple", None)

    runtime.on_component(PREFIX, on_vote)


async def start(
    runtime: Runtime,
    interaction: discord.Interaction,
    user: discord.abc.User,
    strategy: str,
    quorum: int | None,
) -> None:
    gid = interaction.guild_id
    assert gid is not None
    settings = await moderator_settings(runtime, interaction, "start an escalation")
    if settings is None:
        return
    why_not = protected(runtime, interaction, user, settings)
    if why_not is not None:
        await refuse(interaction, why_not)
        return
    user_id = user.id
    if strategy not in STRATEGIES:
        await refuse(interaction, f"strategy must be one of {', '.join(STRATEGIES)}")
        return
    q = quorum or settings.get("quorum") or DEFAULT_QUORUM
    now = time.time()
    e = Escalation(
        id=str(uuid.uuid4()),
        guild_id=gid,
        thread_id=int(settings["mod_log"]),
        vote_message_id=None,
        reported_user_id=user_id,
        initiator_id=interaction.user.id,
        resolution=None,
        resolved_at=None,
        created_at=now,
        flags={"quorum": int(q), "pod": 1},
        strategy=strategy,
        scheduled_for=deadline(now, 0, runtime.escalation_timeout),
    )
    channel = runtime.client.get_partial_messageable(e.thread_id, guild_id=gid)
    message = await channel.send(vote_text(e, tally([])), view=vote_view(e.id))
    e.vote_message_id = message.id
    await EscalationStore(runtime.store).create(e)
    await interaction.response.send_message(
        f"Escalation started in <#{e.thread_id}>: moderators vote there.", ephemeral=True
    )


async def on_vote(runtime: Runtime, interaction: discord.Interaction, parts: list[str]) -> None:
    gid = interaction.guild_id
    if gid is None or len(parts) != 2 or parts[1] not in RESOLUTIONS:
        await refuse(interaction, "This vote button is not valid.")
        return
    escalation_id, choice = parts
    settings = await runtime.store.settings(gid)
    if settings is None or not is_moderator(interaction, settings):
        await refuse(interaction, "Only moderators can vote on escalations.")
        return
    es = EscalationStore(runtime.store)
    e = await es.get(gid, escalation_id)  # by this guild: another guild's id is not found
    if e is None:
        await refuse(interaction, "Escalation not found.")
        return
    if e.resolution is not None:
        await refuse(interaction, f"This escalation was already resolved: {e.resolution}.")
        return
    if not await es.record_vote(gid, e.id, interaction.user.id, choice):
        again = await es.get(gid, e.id)
        if again is not None and again.resolution is not None:
            await refuse(interaction, f"This escalation was already resolved: {again.resolution}.")
        else:
            await refuse(interaction, "This server is being moved; vote again in a moment.")
        return
    t = tally(await es.votes(gid, e.id))
    e.scheduled_for = deadline(e.created_at, t.voters, runtime.escalation_timeout)
    await es.reschedule(e, e.scheduled_for)
    if resolves_early(t, e.quorum, e.strategy) and runtime.can_act(gid):
        assert t.leader is not None
        if await es.claim(e, t.leader):
            e.resolution = t.leader
            runtime.spawn(deliver(runtime, e))
            await refuse(
                interaction, f"Vote recorded: {LABELS[choice]}. Resolved: {LABELS[t.leader]}."
            )
            return
    await refuse(interaction, f"Vote recorded: {LABELS[choice]}. {vote_text(e, t)}")


_delivering: set[str] = set()


async def deliver(runtime: Runtime, e: Escalation) -> None:
    """Carry out a claimed resolution on Discord; recorded in ``flags`` (retried by ``tick``)."""
    if e.id in _delivering or not runtime.can_act(e.guild_id):
        return  # being delivered here already, or the guild is leaving: its next owner will
    _delivering.add(e.id)
    try:
        await _deliver(runtime, e)
    finally:
        _delivering.discard(e.id)


async def _deliver(runtime: Runtime, e: Escalation) -> None:
    es = EscalationStore(runtime.store)
    resolution = e.resolution or "track"
    reason = f"escalation {e.id}: moderators voted {resolution}"
    client = runtime.client
    note = ""
    try:
        try:
            if resolution == "ban":
                await ban_member(client, e.guild_id, e.reported_user_id, reason)
            elif resolution == "kick":
                await kick_member(client, e.guild_id, e.reported_user_id, reason)
            elif resolution == "timeout":
                until = iso(time.time() + TIMEOUT_SECONDS).replace("Z", "+00:00")
                await timeout_member(client, e.guild_id, e.reported_user_id, until, reason)
        except (discord.NotFound, discord.Forbidden) as exc:  # gone, or not allowed: say so
            note = f" (not applied: {exc.text or exc.status})"
        channel = client.get_partial_messageable(e.thread_id, guild_id=e.guild_id)
        # the nonce makes a repeated delivery (after a kill, a migration) one message
        await channel.send(
            f"Escalation about <@{e.reported_user_id}> resolved: {LABELS.get(resolution, resolution)}{note}.",
            nonce="e" + e.id.replace("-", "")[:24],
        )
        if e.vote_message_id is not None:
            with_result = f"Resolved: {LABELS.get(resolution, resolution)}{note}. (vote closed)"
            await channel.get_partial_message(e.vote_message_id).edit(
                content=with_result, view=None
            )
    except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
        attempts = int(e.flags.get("attempts", 0)) + 1
        failed = attempts >= runtime.delivery_attempts
        backoff = min(60.0, runtime.tick * 2**attempts)
        log.warning(
            "escalation %s: delivery attempt %d failed (%s)%s",
            e.id,
            attempts,
            exc,
            "; giving up" if failed else "",
        )
        e.flags["attempts"] = attempts
        await es.delivery(e, -1 if failed else 0, attempts, time.time() + backoff)
        return
    await es.delivery(e, 1, int(e.flags.get("attempts", 0)) + 1, 0)
    log.info("escalation %s in guild %s resolved: %s", e.id, e.guild_id, resolution)


async def tick(runtime: Runtime) -> None:
    """Resolve what is due and retry undelivered resolutions, for the guilds acted on here."""
    es = EscalationStore(runtime.store)
    now = time.time()
    for e in await es.pending():
        if not runtime.can_act(e.guild_id):
            continue
        if e.resolution is None:
            if e.scheduled_for > now:
                continue
            outcome = tally(await es.votes(e.guild_id, e.id)).outcome
            if not await es.claim(e, outcome):
                continue
            e.resolution = outcome
            e.flags.update(delivered=0, attempts=0, next_try=0)
        elif float(e.flags.get("next_try") or 0) > now:
            continue
        await deliver(runtime, e)
