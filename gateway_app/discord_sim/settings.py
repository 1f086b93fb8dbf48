"""Configuration of the local Discord simulator (``modbot-ring serve discord-sim``)."""

from __future__ import annotations

from config_store.client.flags import Flag

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
    Flag("seed-guilds", "MODBOT_SIM_SEED_GUILDS", 0, "guilds to create at start", int),
    Flag("log-level", "MODBOT_LOG_LEVEL", "info", "log level"),
]
