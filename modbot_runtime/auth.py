"""One bearer-token check for every service (config service and gateway pods).

Why one: the parsing was written three times and all three raised on a non-ASCII
token (``hmac.compare_digest`` refuses non-ASCII ``str``), a 500 an anonymous client
could trigger. Here tokens are compared as bytes in constant time, and anything odd in
the header (non-ASCII, control characters, a missing or unknown scheme, more than one
token) is simply "no credential": the caller answers 401 JSON, never 500.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

__all__ = ["MAX_HEADER", "bearer_token", "matching_token", "same_token"]

MAX_HEADER = 4096  # longer Authorization values are refused without comparing


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None when the
    header is absent or malformed (the scheme is case-insensitive, RFC 9110 11.1)."""
    if not header or len(header) > MAX_HEADER or not header.isascii():
        return None
    scheme, _, token = header.strip(" \t").partition(" ")
    token = token.strip(" \t")
    if scheme.lower() != "bearer" or not token:
        return None
    if not token.isprintable() or any(c in token for c in " \t"):
        return None
    return token


def same_token(given: str, expected: str) -> bool:
    """Constant-time equality of two tokens as UTF-8 bytes; never raises, and an empty
    expected token (not configured) matches nothing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def matching_token(header: str | None, tokens: Mapping[str, str]) -> str | None:
    """The name of the configured token the header presents (``tokens``: name -> secret),
    or None. Every configured secret is compared, so timing does not tell which matched."""
    given = bearer_token(header)
    if given is None:
        return None
    found = None
    for name, secret in tokens.items():
        if same_token(given, secret) and found is None:
            found = name
    return found
