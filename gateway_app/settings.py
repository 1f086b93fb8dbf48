"""Configuration of a gateway pod (``modbot-ring serve gateway``)."""

from __future__ import annotations

import os
import socket

from config_store.client.flags import Flag

from .retention import RETENTION_FLAGS

SERVE_FLAGS = [
    Flag(
        "name",
        "MODBOT_POD_NAME",
        os.environ.get("HOSTNAME") or socket.gethostname(),
        "pod name, StatefulSet style (gateway-N)",
    ),
    Flag("host", "MODBOT_GATEWAY_HOST", "127.0.0.1", "address to listen on"),
    Flag("port", "MODBOT_GATEWAY_PORT", 8701, "port of the internal API", int),
    Flag(
        "url",
        "MODBOT_POD_URL",
        "",
        "internal URL others reach this pod at (default http://host:port)",
    ),
    Flag("config-url", "MODBOT_CONFIG_URL", "http://127.0.0.1:8700", "config service base URL"),
    Flag("admin-token", "MODBOT_ADMIN_TOKEN", "", "token to register and heartbeat", secret=True),
    Flag("read-token", "MODBOT_READ_TOKEN", "", "token for reading the routing table", secret=True),
    Flag(
        "redis-url",
        "MODBOT_REDIS_URL",
        "",
        "Redis with the cached table (unset: config service only)",
    ),
    Flag("redis-prefix", "MODBOT_REDIS_PREFIX", "modbot", "prefix of the Redis keys and channel"),
    Flag(
        "internal-token",
        "MODBOT_INTERNAL_TOKEN",
        "",
        "forwarding token: the proxy presents it on guild routes and /interactions",
        secret=True,
    ),
    Flag(
        "migration-token",
        "MODBOT_MIGRATION_TOKEN",
        "",
        "token the config service presents on the migration API /internal/... (unset: closed)",
        secret=True,
    ),
    Flag(
        "identity-key",
        "MODBOT_IDENTITY_KEY",
        "",
        "key the proxy signs user identities with (default: derived from the internal token)",
        secret=True,
    ),
    Flag("database", "MODBOT_GATEWAY_DB", "gateway.db", "this pod's SQLite file"),
    Flag("discord-token", "DISCORD_TOKEN", "", "bot token", secret=True),
    Flag(
        "discord-api-url",
        "MODBOT_DISCORD_API_URL",
        "https://discord.com/api/v10",
        "Discord REST base (point at the simulator locally)",
    ),
    Flag(
        "discord-gateway-url",
        "MODBOT_DISCORD_GATEWAY_URL",
        "wss://gateway.discord.gg/",
        "Discord gateway URL (point at the simulator locally)",
    ),
    Flag(
        "interaction-deadline",
        "MODBOT_POD_INTERACTION_DEADLINE",
        2.0,
        "seconds a command may take before the pod answers 'deferred' and follows up",
        float,
    ),
    Flag(
        "identify-interval",
        "MODBOT_IDENTIFY_INTERVAL",
        5.0,
        "ignored: IDENTIFYs follow GET /gateway/bot's max_concurrency and session_start_limit"
        " (kept so existing configurations still parse)",
        float,
    ),
    Flag("table-poll", "MODBOT_TABLE_POLL", 1.0, "seconds between table version polls", float),
    Flag(
        "heartbeat-interval", "MODBOT_HEARTBEAT_INTERVAL", 5.0, "seconds between heartbeats", float
    ),
    Flag("log-level", "MODBOT_LOG_LEVEL", "info", "log level"),
    # escalations (gateway_app/features/escalation.py)
    Flag(
        "escalation-timeout",
        "MODBOT_ESCALATION_TIMEOUT",
        129600.0,
        "seconds an escalation vote runs with no votes (mod-bot: 36 h, a ninth less per voter)",
        float,
    ),
    Flag(
        "feature-tick",
        "MODBOT_FEATURE_TICK",
        10.0,
        "seconds between the features' background passes (due escalations, retried deliveries)",
        float,
    ),
    *RETENTION_FLAGS,  # retention and disk pressure (gateway_app/retention.py)
]
