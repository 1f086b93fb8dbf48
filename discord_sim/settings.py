"""Configuration of the local Discord simulator (``modbot-ring serve discord-sim``)."""

from __future__ import annotations

from modbot_runtime.flags import Flag, env_bool

# A fixed, public test key: the simulator is never Discord, and tests must be able to
# verify what it signs. Never use it for a real application.
TEST_SIGNING_SEED = "6d6f64626f742d72696e67207465737420736565642c207075626c6963212121"

SERVE_FLAGS = [
    Flag("host", "MODBOT_SIM_HOST", "127.0.0.1", "address to listen on"),
    Flag("port", "MODBOT_SIM_PORT", 8790, "port for REST, gateway and control API", int),
    Flag(
        "signing-seed",
        "MODBOT_SIM_SIGNING_SEED",
        TEST_SIGNING_SEED,
        "Ed25519 seed (hex) for webhooks",
    ),
    Flag("bot-token", "MODBOT_SIM_BOT_TOKEN", "sim-token", "bot token the simulator accepts"),
    Flag("application-id", "MODBOT_SIM_APPLICATION_ID", 900000000000000001, "application id", int),
    Flag(
        "seed-guilds",
        "MODBOT_SIM_SEED_GUILDS",
        0,
        "guilds to create at start (not when --state-file holds a world)",
        int,
    ),
    Flag(
        "state-file",
        "MODBOT_SIM_STATE_FILE",
        "",
        "keep the world (guilds, members, messages, commands, sign-in users and tokens, and"
        " the moderation state: the bot's messages, reactions, bans, timeouts, threads, the"
        " audit log) in this JSON file: loaded at start, saved after changes (unset: in"
        " memory only)",
    ),
    Flag(
        "resume-window",
        "MODBOT_SIM_RESUME_WINDOW",
        120.0,
        "seconds a dropped gateway session stays resumable (then RESUME gets INVALID_SESSION)",
        float,
    ),
    Flag(
        "max-concurrency",
        "MODBOT_SIM_MAX_CONCURRENCY",
        1,
        "IDENTIFY buckets (shard_id mod n), one IDENTIFY per bucket per 5 s; more is op 9",
        int,
    ),
    Flag(
        "session-start-total",
        "MODBOT_SIM_SESSION_START_TOTAL",
        1000,
        "IDENTIFYs allowed per window; one more resets the token (Discord's lockout)",
        int,
    ),
    Flag(
        "session-start-reset",
        "MODBOT_SIM_SESSION_START_RESET",
        86400.0,
        "seconds from a window's first IDENTIFY until the session start budget refills",
        float,
    ),
    Flag(
        "privileged-intents",
        "MODBOT_SIM_PRIVILEGED_INTENTS",
        "members,message_content,presences",
        "privileged intents the app may use (comma-separated; others close with 4014)",
    ),
    Flag(
        "require-commands",
        "MODBOT_SIM_REQUIRE_COMMANDS",
        True,
        "deliver interactions only for registered commands, as Discord does (false: any)",
        env_bool,
    ),
    Flag("log-level", "MODBOT_LOG_LEVEL", "info", "log level"),
]
