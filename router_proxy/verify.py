"""Discord's interaction signatures: Ed25519 over ``timestamp + raw body``.

Discord deliberately sends bad signatures to check that endpoints refuse them, so every
failure is a 401. A timestamp more than ``max_skew`` seconds from now is refused too:
a captured request cannot be replayed later.
"""

from __future__ import annotations

import time

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

__all__ = ["SignatureError", "Verifier"]


class SignatureError(Exception):
    """Why a webhook was refused (for the metric label; never sent to the caller)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Verifier:
    def __init__(self, public_key_hex: str, *, max_skew: float = 300.0) -> None:
        try:
            key = bytes.fromhex(public_key_hex)
        except ValueError:
            raise ValueError("the Discord public key must be hex") from None
        if len(key) != 32:
            raise ValueError("the Discord public key must be 32 bytes (64 hex digits)")
        self._key = VerifyKey(key)
        self.max_skew = max_skew

    def verify(
        self,
        signature_hex: str | None,
        timestamp: str | None,
        body: bytes,
        now: float | None = None,
    ) -> None:
        if not signature_hex or not timestamp:
            raise SignatureError("missing")
        try:
            signature = bytes.fromhex(signature_hex)
            sent_at = int(timestamp)
        except ValueError:
            raise SignatureError("malformed") from None
        if len(signature) != 64:
            raise SignatureError("malformed")
        if abs((time.time() if now is None else now) - sent_at) > self.max_skew:
            raise SignatureError("stale")
        try:
            self._key.verify(timestamp.encode() + body, signature)
        except BadSignatureError:
            raise SignatureError("bad") from None
