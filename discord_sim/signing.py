"""Ed25519 signing of interaction webhooks, as Discord does it.

Discord signs ``X-Signature-Timestamp + raw body`` with the application's key and sends
the hex signature in ``X-Signature-Ed25519``; the app's *public* key verifies it.
"""

from __future__ import annotations

import time

from nacl.signing import SigningKey


class Signer:
    def __init__(self, seed_hex: str) -> None:
        seed = bytes.fromhex(seed_hex)
        if len(seed) != 32:
            raise ValueError("the signing seed must be 32 bytes of hex")
        self._key = SigningKey(seed)

    @property
    def public_key_hex(self) -> str:
        return self._key.verify_key.encode().hex()

    def headers(self, body: bytes, timestamp: str | None = None) -> dict[str, str]:
        ts = timestamp if timestamp is not None else str(int(time.time()))
        signature = self._key.sign(ts.encode() + body).signature.hex()
        return {
            "X-Signature-Ed25519": signature,
            "X-Signature-Timestamp": ts,
            "Content-Type": "application/json",
            "User-Agent": "Discord-Interactions/1.0 (+https://discord.com)",
        }
