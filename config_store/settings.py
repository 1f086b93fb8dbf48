"""Configuration of the config service (``modbot-ring serve config``)."""

from __future__ import annotations

from .client.flags import Flag, env_bool

DEFAULT_DATABASE_URL = "sqlite:///modbot-config.db"

SERVE_FLAGS = [
    Flag("host", "MODBOT_CONFIG_HOST", "127.0.0.1", "address to listen on"),
    Flag("port", "MODBOT_CONFIG_PORT", 8700, "port to listen on", int),
    Flag(
        "database-url",
        "MODBOT_DATABASE_URL",
        DEFAULT_DATABASE_URL,
        "source of truth: postgresql://... or sqlite:///path (embedded)",
    ),
    Flag(
        "redis-url",
        "MODBOT_REDIS_URL",
        "",
        "Redis that caches and announces the table; unset: announce in-process and over HTTP",
    ),
    Flag("redis-prefix", "MODBOT_REDIS_PREFIX", "modbot", "prefix of the Redis keys and channel"),
    Flag("admin-token", "MODBOT_ADMIN_TOKEN", "", "bearer token for writes", secret=True),
    Flag("read-token", "MODBOT_READ_TOKEN", "", "bearer token for reading the table", secret=True),
    Flag(
        "heartbeat-timeout",
        "MODBOT_HEARTBEAT_TIMEOUT",
        15.0,
        "seconds without a heartbeat before a pod is marked offline",
        float,
    ),
    Flag(
        "shard-count",
        "MODBOT_SHARD_COUNT",
        0,
        "Discord shard count set on first start (0: key the ring by guild id)",
        int,
    ),
    Flag(
        "internal-token",
        "MODBOT_INTERNAL_TOKEN",
        "",
        "bearer token for the pods' internal API (migrations)",
        secret=True,
    ),
    Flag(
        "migration-step-delay",
        "MODBOT_MIGRATION_STEP_DELAY",
        0.0,
        "pause before each migration step (for drills and tests)",
        float,
    ),
    Flag("db-schema", "MODBOT_DB_SCHEMA", "", "PostgreSQL schema to use (default: search_path)"),
    Flag("migrate", "MODBOT_DB_MIGRATE", True, "apply schema migrations at start", env_bool),
    Flag("log-level", "MODBOT_LOG_LEVEL", "info", "log level", str),
]

DB_FLAGS = [f for f in SERVE_FLAGS if f.name in ("database-url", "db-schema")]
