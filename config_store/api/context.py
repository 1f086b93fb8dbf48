"""What every handler reaches through the app: the app keys and the API's metrics."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..balancer import Balancer
from ..migrator import Migrator
from ..publisher import TablePublisher
from ..store import Store


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry, *, redis: bool = True) -> None:
        self.requests = Counter(
            "modbot_config_requests_total",
            "Config service API requests, by route, method and HTTP status.",
            ["route", "method", "status"],
            registry=registry,
        )
        # long-polls (GET /v1/table?wait=N) last up to 30 s by design: they have their own
        # histogram so this one stays usable for latency alerts
        self.latency = Histogram(
            "modbot_config_request_seconds",
            "Time the config service took to answer an API request (long-polls excluded).",
            ["route"],
            registry=registry,
        )
        self.long_poll = Histogram(
            "modbot_config_table_long_poll_seconds",
            "Time a routing-table long-poll (GET /v1/table?wait=N) was held open.",
            registry=registry,
            buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 45),
        )
        self.conflicts = Counter(
            "modbot_config_conflicts_total",
            "Writes refused with 409 because they conflicted with the current state.",
            registry=registry,
        )
        self.table_version = Gauge(
            "modbot_config_table_version",
            "Version of the routing table this replica serves.",
            registry=registry,
        )
        self.pods = Gauge(
            "modbot_config_pods",
            "Gateway pods in the routing table, by state.",
            ["state"],
            registry=registry,
        )
        # not exported without Redis: "deliberately off" must not read as "down"
        self.redis_up = (
            Gauge(
                "modbot_config_redis_up",
                "1 when the routing table is cached in Redis, 0 when Redis fails.",
                registry=registry,
            )
            if redis
            else None
        )


STORE_KEY: web.AppKey[Store] = web.AppKey("store", Store)
PUBLISHER_KEY: web.AppKey[TablePublisher] = web.AppKey("publisher", TablePublisher)
SETTINGS_KEY: web.AppKey[dict[str, Any]] = web.AppKey("settings", dict)
MIGRATOR_KEY: web.AppKey[Migrator] = web.AppKey("migrator", Migrator)
BALANCER_KEY: web.AppKey[Balancer] = web.AppKey("balancer", Balancer)
METRICS_KEY: web.AppKey[ApiMetrics] = web.AppKey("metrics", ApiMetrics)
