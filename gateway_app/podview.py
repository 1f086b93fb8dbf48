"""The pod as its HTTP handlers see it: a Protocol, the aiohttp app key it is stored under,
and the metrics the handlers record.

Why a module of its own: the handlers (``api``, ``migration_api``, ``monolith_api``) are
added to the app by ``server``, which builds the pod; if they named ``server.Pod`` the
modules would import each other. They name :class:`PodView` instead, which ``server.Pod``
satisfies (mypy checks it where the pod is stored: ``app[POD_KEY] = pod``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

if TYPE_CHECKING:
    import discord

    from modbot_client.table_client import RoutingTableClient

    from .gate import GuildGate
    from .ownership import Ownership
    from .settings import PodSettings
    from .shards import ShardSupervisor
    from .storage import GuildStore

__all__ = ["POD_KEY", "PodMetrics", "PodView"]


class PodMetrics:
    """What the internal API counts (registered in the pod's registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.interactions = Counter(
            "modbot_gateway_interactions_total",
            "Interactions forwarded by the proxy and answered by this pod, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.interaction_seconds = Histogram(
            "modbot_gateway_interaction_seconds",
            "Time this pod took to answer a forwarded interaction.",
            registry=registry,
        )
        self.heartbeat_failures = Counter(
            "modbot_gateway_heartbeat_failures_total",
            "Heartbeats to the config service that failed.",
            registry=registry,
        )


class PodView(Protocol):
    """What a request handler may use of the pod (read-only attributes)."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> PodSettings: ...

    @property
    def store(self) -> GuildStore: ...

    @property
    def gate(self) -> GuildGate: ...

    @property
    def ownership(self) -> Ownership: ...

    @property
    def table_client(self) -> RoutingTableClient: ...

    @property
    def shards(self) -> ShardSupervisor: ...

    @property
    def commands(self) -> discord.Client: ...

    @property
    def commands_ready(self) -> bool: ...

    @property
    def metrics(self) -> PodMetrics: ...

    @property
    def table_version(self) -> int | None: ...


POD_KEY: web.AppKey[PodView] = web.AppKey("pod")
