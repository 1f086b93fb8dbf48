"""mod-bot's moderation features, one module each, registered into the pod's command client.

A feature module has:

* ``register(tree, runtime)``: adds its app commands to the tree and its component
  handlers (``runtime.on_component(prefix, handler)``); called by
  :func:`gateway_app.bot.build_commands` (also offline, with no store, by
  ``commands sync``: only the definitions are used then).
* optionally ``async tick(runtime)``: background work (scheduled resolutions), run every
  ``runtime.tick`` seconds by :func:`run` on every pod, for the guilds
  ``runtime.can_act`` allows: owned here and not frozen/held by a migration.

Feature modules import what they share from :mod:`.runtime` (:class:`Runtime`,
:func:`refuse`), never from this package: it imports them.

Component interactions (type 3) reach :func:`_dispatch_component` through discord.py's
``interaction`` event: the first ``|``-separated part of the ``custom_id`` names the
handler. Every component interaction gets an answer; an unknown one is refused ephemerally.
"""

from __future__ import annotations

import asyncio
import logging
from types import ModuleType
from typing import Any

import discord
from discord import app_commands

from ..events import GatewayEvent
from ..storage import GuildStore
from .runtime import (
    CUSTOM_ID_MAX,
    ComponentHandler,
    EventFilter,
    EventObserver,
    Runtime,
    refuse,
)

__all__ = [
    "CUSTOM_ID_MAX",
    "ComponentHandler",
    "EventFilter",
    "EventObserver",
    "Runtime",
    "install",
    "observe",
    "refuse",
    "run",
    "runtime_of",
]

log = logging.getLogger("modbot.gateway.features")


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


def observe(client: discord.Client, guild_id: int, event: GatewayEvent) -> None:
    """Show a written gateway event to the features that act on events (in the background:
    the gateway's handler does not wait for Discord)."""
    runtime = getattr(client, _RUNTIME, None)
    if not isinstance(runtime, Runtime) or not runtime.observers:
        return
    wanted = runtime.observers.get(type(event))
    if not wanted or not runtime.ready():
        return
    if len(runtime._tasks) >= MAX_OBSERVING:
        log.warning("features busy: event of guild %s not observed", guild_id)
        return
    for wants, observer in wanted:
        if wants is None or wants(guild_id, event):
            runtime.spawn(_observed(observer, runtime, guild_id, event))


async def _observed(
    observer: EventObserver[Any], runtime: Runtime, guild_id: int, event: GatewayEvent
) -> None:
    try:
        await observer(runtime, guild_id, event)
    except Exception:
        log.exception("feature observer failed for guild %s", guild_id)


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
