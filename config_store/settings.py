"""Configuration of the config service (``modbot-ring serve config``)."""

from __future__ import annotations

from modbot_runtime.flags import Flag, env_bool

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
        "ring-algorithm",
        "MODBOT_RING_ALGORITHM",
        "quota",
        "ring placement set on first start: quota (exact shares, kept in the table),"
        " slots (a function of the pods alone) or ketama (uhashring-compatible)",
        choices=("quota", "slots", "ketama"),
    ),
    Flag(
        "migration-token",
        "MODBOT_MIGRATION_TOKEN",
        "",
        "token sent to the pods' migration API (export, import, verify); not the proxy's forwarding token",
        secret=True,
    ),
    Flag(
        "migration-step-delay",
        "MODBOT_MIGRATION_STEP_DELAY",
        0.0,
        "pause before each migration step (for drills and tests)",
        float,
    ),
    Flag(
        "balance-mode",
        "MODBOT_BALANCE_MODE",
        "propose",
        "scaling decisions: off, propose (store plans for an operator) or auto (apply them)",
        choices=("off", "propose", "auto"),
    ),
    Flag(
        "balance-interval",
        "MODBOT_BALANCE_INTERVAL",
        15.0,
        "seconds between load checks",
        float,
    ),
    Flag(
        "balance-threshold",
        "MODBOT_BALANCE_THRESHOLD",
        1.25,
        "load skew (1 + largest deviation from fair share) that asks for a plan",
        float,
    ),
    Flag(
        "balance-clear",
        "MODBOT_BALANCE_CLEAR",
        1.15,
        "skew below which a skewed period ends (hysteresis band below the threshold)",
        float,
    ),
    Flag(
        "balance-hold-down",
        "MODBOT_BALANCE_HOLD_DOWN",
        300.0,
        "seconds the skew must stay high before a plan",
        float,
    ),
    Flag(
        "balance-cooldown",
        "MODBOT_BALANCE_COOLDOWN",
        3600.0,
        "seconds before a moved guild or shard may move again",
        float,
    ),
    Flag(
        "balance-target",
        "MODBOT_BALANCE_TARGET",
        0.10,
        "plans aim at this fraction around each pod's fair share",
        float,
    ),
    Flag(
        "balance-min-load",
        "MODBOT_BALANCE_MIN_LOAD",
        1.0,
        "mean events/s per pod under which the stack is idle and the balancer plans nothing",
        float,
    ),
    Flag(
        "move-budget",
        "MODBOT_MOVE_BUDGET_PER_HOUR",
        20,
        "moves the auto mode may make per hour",
        int,
    ),
    Flag(
        "pod-capacity",
        "MODBOT_POD_CAPACITY",
        0.0,
        "events/s a gateway pod is sized for; above it while balanced: scale-out advice (0: none)",
        float,
    ),
    Flag(
        "gateway-statefulset",
        "MODBOT_GATEWAY_STATEFULSET",
        "gateway",
        "StatefulSet named in the scale-out advice",
    ),
    Flag("db-schema", "MODBOT_DB_SCHEMA", "", "PostgreSQL schema to use (default: search_path)"),
    Flag("migrate", "MODBOT_DB_MIGRATE", True, "apply schema migrations at start", env_bool),
    Flag("log-level", "MODBOT_LOG_LEVEL", "info", "log level", str),
]

DB_FLAGS = [f for f in SERVE_FLAGS if f.name in ("database-url", "db-schema")]
