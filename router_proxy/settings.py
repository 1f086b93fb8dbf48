"""Configuration of the router proxy (``modbot-ring serve proxy``)."""

from __future__ import annotations

from config_store.client.flags import Flag

SERVE_FLAGS = [
    Flag("host", "MODBOT_PROXY_HOST", "127.0.0.1", "address to listen on"),
    Flag("port", "MODBOT_PROXY_PORT", 8080, "port to listen on", int),
    Flag(
        "workers",
        "MODBOT_PROXY_WORKERS",
        1,
        "processes sharing the port (SO_REUSEPORT); on Kubernetes keep 1 and let the HPA add pods",
        int,
    ),
    Flag("config-url", "MODBOT_CONFIG_URL", "http://127.0.0.1:8700", "config service base URL"),
    Flag(
        "redis-url",
        "MODBOT_REDIS_URL",
        "",
        "Redis with the cached table (unset: config service only)",
    ),
    Flag("redis-prefix", "MODBOT_REDIS_PREFIX", "modbot", "prefix of the Redis keys and channel"),
    Flag("read-token", "MODBOT_READ_TOKEN", "", "token for reading the routing table", secret=True),
    Flag(
        "internal-token",
        "MODBOT_INTERNAL_TOKEN",
        "",
        "bearer token sent to gateway pods",
        secret=True,
    ),
    Flag(
        "discord-public-key",
        "MODBOT_DISCORD_PUBLIC_KEY",
        "",
        "application public key (hex) that signs interaction webhooks",
    ),
    Flag(
        "discord-api-url",
        "MODBOT_DISCORD_API_URL",
        "https://discord.com/api/v10",
        "Discord REST base for follow-ups (point at the simulator locally)",
    ),
    Flag(
        "default-pod",
        "MODBOT_DEFAULT_POD",
        "",
        "pod for DM interactions (default: shard 0's owner)",
    ),
    Flag(
        "interaction-deadline",
        "MODBOT_INTERACTION_DEADLINE",
        2.5,
        "seconds to wait for a pod before answering Discord ourselves",
        float,
    ),
    Flag(
        "upstream-timeout",
        "MODBOT_UPSTREAM_TIMEOUT",
        10.0,
        "seconds per API/dashboard upstream call",
        float,
    ),
    Flag("poll-interval", "MODBOT_TABLE_POLL", 1.0, "seconds between table version polls", float),
    Flag(
        "followup-window",
        "MODBOT_FOLLOWUP_WINDOW",
        600.0,
        "seconds to keep trying to deliver a deferred interaction (Discord tokens live 15 min)",
        float,
    ),
    Flag("log-level", "MODBOT_LOG_LEVEL", "info", "log level"),
]
