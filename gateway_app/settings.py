"""Configuration of a gateway pod (``modbot-ring serve gateway``), declared once.

Each field of :class:`PodSettings` carries its flag (name, environment variable, default,
help). ``SERVE_FLAGS`` (the CLI's parser, ``--help``, the README's table) is read off the
fields, and :meth:`PodSettings.from_args` builds the settings from what that parser read
(``--flag`` beats ``$ENV`` beats the default): nothing restates a name or a default. The
retention and disk-pressure flags live with their checks in ``gateway_app/retention.py``
and are taken from there the same way.

Light on purpose: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field, fields
from typing import Any

from modbot_runtime.flags import Flag

from .retention import RETENTION_FLAGS

_RETENTION = {f.name: f for f in RETENTION_FLAGS}


def _setting(flag: Flag) -> Any:
    """A dataclass field declared by its flag; its default is the flag's, as the parser
    would convert it ("90" days -> 90, "forever" -> None). Secrets stay out of repr()."""
    default = flag.default
    if isinstance(default, str) and flag.type is not str:
        default = flag.type(default)
    return field(default=default, repr=not flag.secret, metadata={"flag": flag})


def _retention(name: str) -> Any:
    return _setting(_RETENTION[name])


@dataclass
class PodSettings:
    name: str = _setting(
        Flag(
            "name",
            "MODBOT_POD_NAME",
            os.environ.get("HOSTNAME") or socket.gethostname(),
            "pod name, StatefulSet style (gateway-N)",
        )
    )
    host: str = _setting(Flag("host", "MODBOT_GATEWAY_HOST", "127.0.0.1", "address to listen on"))
    port: int = _setting(Flag("port", "MODBOT_GATEWAY_PORT", 8701, "port of the internal API", int))
    url: str = _setting(
        Flag(
            "url",
            "MODBOT_POD_URL",
            "",
            "internal URL others reach this pod at (default http://host:port)",
        )
    )
    config_url: str = _setting(
        Flag("config-url", "MODBOT_CONFIG_URL", "http://127.0.0.1:8700", "config service base URL")
    )
    admin_token: str = _setting(
        Flag(
            "admin-token", "MODBOT_ADMIN_TOKEN", "", "token to register and heartbeat", secret=True
        )
    )
    read_token: str = _setting(
        Flag(
            "read-token",
            "MODBOT_READ_TOKEN",
            "",
            "token for reading the routing table",
            secret=True,
        )
    )
    redis_url: str = _setting(
        Flag(
            "redis-url",
            "MODBOT_REDIS_URL",
            "",
            "Redis with the cached table (unset: config service only)",
        )
    )
    redis_prefix: str = _setting(
        Flag(
            "redis-prefix", "MODBOT_REDIS_PREFIX", "modbot", "prefix of the Redis keys and channel"
        )
    )
    internal_token: str = _setting(
        Flag(
            "internal-token",
            "MODBOT_INTERNAL_TOKEN",
            "",
            "forwarding token: the proxy presents it on guild routes and /interactions",
            secret=True,
        )
    )
    migration_token: str = _setting(
        Flag(
            "migration-token",
            "MODBOT_MIGRATION_TOKEN",
            "",
            "token the config service presents on the migration API /internal/... (unset: closed)",
            secret=True,
        )
    )
    identity_key: str = _setting(
        Flag(
            "identity-key",
            "MODBOT_IDENTITY_KEY",
            "",
            "key the proxy signs user identities with (default: derived from the internal token)",
            secret=True,
        )
    )
    database: str = _setting(
        Flag("database", "MODBOT_GATEWAY_DB", "gateway.db", "this pod's SQLite file")
    )
    discord_token: str = _setting(
        Flag("discord-token", "DISCORD_TOKEN", "", "bot token", secret=True)
    )
    discord_api_url: str = _setting(
        Flag(
            "discord-api-url",
            "MODBOT_DISCORD_API_URL",
            "https://discord.com/api/v10",
            "Discord REST base (point at the simulator locally)",
        )
    )
    discord_gateway_url: str = _setting(
        Flag(
            "discord-gateway-url",
            "MODBOT_DISCORD_GATEWAY_URL",
            "wss://gateway.discord.gg/",
            "Discord gateway URL (point at the simulator locally)",
        )
    )
    interaction_deadline: float = _setting(
        Flag(
            "interaction-deadline",
            "MODBOT_POD_INTERACTION_DEADLINE",
            2.0,
            "seconds a command may take before the pod answers 'deferred' and follows up",
            float,
        )
    )
    identify_interval: float = _setting(
        Flag(
            "identify-interval",
            "MODBOT_IDENTIFY_INTERVAL",
            5.0,
            "ignored: IDENTIFYs follow GET /gateway/bot's max_concurrency and"
            " session_start_limit (kept so existing configurations still parse)",
            float,
        )
    )
    table_poll: float = _setting(
        Flag("table-poll", "MODBOT_TABLE_POLL", 1.0, "seconds between table version polls", float)
    )
    heartbeat_interval: float = _setting(
        Flag(
            "heartbeat-interval",
            "MODBOT_HEARTBEAT_INTERVAL",
            5.0,
            "seconds between heartbeats",
            float,
        )
    )
    log_level: str = _setting(Flag("log-level", "MODBOT_LOG_LEVEL", "info", "log level"))
    # escalations (gateway_app/features/escalation.py)
    escalation_timeout: float = _setting(
        Flag(
            "escalation-timeout",
            "MODBOT_ESCALATION_TIMEOUT",
            129600.0,
            "seconds an escalation vote runs with no votes (mod-bot: 36 h, a ninth less per voter)",
            float,
        )
    )
    feature_tick: float = _setting(
        Flag(
            "feature-tick",
            "MODBOT_FEATURE_TICK",
            10.0,
            "seconds between the features' background passes (due escalations, retried deliveries)",
            float,
        )
    )
    # retention and disk pressure (gateway_app/retention.py)
    retention_message_stats_days: int | None = _retention("retention-message-stats-days")
    retention_reported_messages_days: int | None = _retention("retention-reported-messages-days")
    retention_mod_actions_days: int | None = _retention("retention-mod-actions-days")
    retention_interval: float = _retention("retention-interval")
    retention_batch: int = _retention("retention-batch")
    retention_pause: float = _retention("retention-pause")
    disk_reserve_bytes: int = _retention("disk-reserve-bytes")
    disk_max_used: float = _retention("disk-max-used")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PodSettings:
        """The settings the CLI's parser (built from ``SERVE_FLAGS``) read."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    @property
    def public_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"


SERVE_FLAGS: list[Flag] = [f.metadata["flag"] for f in fields(PodSettings)]
