"""mod-bot's moderation features, one module each, registered into the pod's command client.

A feature module has:

* ``register(tree, runtime)``: adds its app commands to the tree and its component
  handlers (``runtime.on_component(prefix, handler)``); called by
  :func:`gateway_app.bot.build_commands` (also offline, with no store, by
  ``commands sync``: only the definitions are used then).
* optionally ``async tick(runtime)``: background work (scheduled resolutions), run every
  ``runtime.tick`` seconds by :func:`run` on every pod, for the guilds
  ``runtime.can_act`` allows: owned here and not frozen/held by a migration.

Component interactions (type 3) reach :func:`_dispatch_component` through discord.py's
``interaction`` event: the first ``|``-separated part of the ``custom_id`` names the
handler. Every component interaction gets an answer; an unknown one is refused ephemerally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from types import ModuleType
from typing import Any

import discord
from discord import app_commands

from ..storage import GuildStore

log = logging.getLogger("modbot.gateway.features")

ComponentHandler = Callable[["Runtime", discord.Interaction, list[str]], Awaitable[None]]
EventObserver = Callable[["Runtime", int, dict[str, Any]], Awaitable[None]]
CUSTOM_ID_MAX = 100  # Discord's limit


class Runtime:
    """What features share on a pod: the store, the REST client, ownership, settings."""

    def __init__(self, client: discord.Client, store: GuildStore | None) -> None:
        self.client = client
        self._store = store
        # set by the pod (server.Pod.start); the defaults serve a pod-less client (tests)
        self.can_act: Callable[[int], bool] = lambda _guild: True
        self.ready: Callable[[], bool] = lambda: True
        self.escalation_timeout = 36 * 3600.0  # mod-bot: 36 h with no votes
        self.tick = 10.0
        self.delivery_attempts = 5
        self.components: dict[str, ComponentHandler] = {}
        # (event kind, cheap synchronous pre-check or None, observer)
        self.observers: list[
            tuple[str, Callable[[int, dict[str, Any]], bool] | None, EventObserver]
        ] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def store(self) -> GuildStore:
        assert self._store is not None, "this command client has no store (definitions only)"
        return self._store

    def on_component(self, prefix: str, handler: ComponentHandler) -> None:
        self.components[prefix] = handler

    def on_event(
        self,
        observer: EventObserver,
        kind: str,
        wants: Callable[[int, dict[str, Any]], bool] | None = None,
    ) -> None:
        """``observer(runtime, guild_id, event)`` for each gateway event of ``kind`` written
        here, unless ``wants(guild_id, event)`` says no. Both are checked before a task is
        made: a task per event per feature costs the gateway a quarter of its ingest rate
        (``benchmarks/gateway_bench.py``: 11,300 -> 8,500 events/s)."""
        self.observers.append((kind, wants, observer))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _modules() -> list[ModuleType]:
    from . import escalation, force_ban, honeypot, reactji, tickets, track

    return [escalation, force_ban, track, honeypot, tickets, reactji]


_RUNTIME = "_modbot_runtime"


def install(
    tree: app_commands.CommandTree[Any], client: discord.Client, store: GuildStore | None
) -> Runtime:
    """Register every feature's commands and component handlers; hook component dispatch."""
    runtime = Runtime(client, store)
    for module in _modules():
        module.register(tree, runtime)
    setattr(client, _RUNTIME, runtime)
    if store is not None:

        async def on_interaction(interaction: discord.Interaction) -> None:
            if interaction.type is discord.InteractionType.component:
                await _dispatch_component(runtime, interaction)

        # discord.Client.dispatch looks the handler up by attribute name on the instance
        setattr(client, "on_interaction", on_interaction)  # noqa: B010
    return runtime


def runtime_of(client: discord.Client) -> Runtime:
    runtime = getattr(client, _RUNTIME, None)
    assert isinstance(runtime, Runtime), "features.install was not called for this client"
    return runtime


MAX_OBSERVING = 1000  # observer tasks at once; past it, events are not observed (logged)


def observe(client: discord.Client, guild_id: int, event: dict[str, Any]) -> None:
    """Show a written gateway event to the features that act on events (in the background:
    the gateway's handler does not wait for Discord)."""
    runtime = getattr(client, _RUNTIME, None)
    if not isinstance(runtime, Runtime) or not runtime.observers or not runtime.ready():
        return
    if len(runtime._tasks) >= MAX_OBSERVING:
        log.warning("features busy: event of guild %s not observed", guild_id)
        return
    kind = event.get("kind")
    for wanted, wants, observer in runtime.observers:
        if wanted == kind and (wants is None or wants(guild_id, event)):
            runtime.spawn(_observed(observer, runtime, guild_id, event))


async def _observed(
    observer: EventObserver, runtime: Runtime, guild_id: int, event: dict[str, Any]
) -> None:
    try:
        await observer(runtime, guild_id, event)
    except Exception:
        log.exception("feature observer failed for guild %s", guild_id)


async def refuse(interaction: discord.Interaction, text: str) -> None:
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)


async def _dispatch_component(runtime: Runtime, interaction: discord.Interaction) -> None:
    data: dict[str, Any] = dict(interaction.data or {})
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= CUSTOM_ID_MAX:
        await refuse(interaction, "This button is not one of mod-bot's.")
        return
    parts = custom_id.split("|")
    handler = runtime.components.get(parts[0])
    if handler is None:
        await refuse(interaction, "This button is not one of mod-bot's.")
        return
    try:
        await handler(runtime, interaction, parts[1:])
    except Exception as exc:  # answer the user whatever happened; the log has the rest
        log.exception("component %s failed", parts[0])
        await refuse(interaction, f"That did not work: {type(exc).__name__}")


async def run(runtime: Runtime) -> None:
    """Every feature's ``tick``, every ``runtime.tick`` seconds, forever (cancel to stop)."""
    ticks = [m.tick for m in _modules() if hasattr(m, "tick")]
    while True:
        await asyncio.sleep(runtime.tick)
        if not runtime.ready():
            continue
        for tick in ticks:
            try:
                await tick(runtime)
            except asyncio.CancelledError:
                raise
            except Exception:  # a busy disk or Discord: the next tick tries again
                log.exception("feature tick failed")
