"""A minimal S3 client: the four calls a backup needs, signed with AWS Signature V4.

Why not boto3: the control plane's backup job makes four kinds of request (create a
bucket, put, get, list); boto3 and botocore add about 100 MB and a hundred modules to an
image that otherwise has no use for them. Path-style addressing (``endpoint/bucket/key``)
works with every S3-compatible server (MinIO, Ceph, moto, R2) and with AWS itself.

Signature V4, as documented by AWS: a canonical request (method, URI-encoded path,
sorted query, the signed headers, the payload's SHA-256), a string to sign over it with
the date-scoped credential, and a signing key derived by an HMAC chain from the secret.
Bodies are held in memory: the control plane's database is pods, pins, plans and audit,
megabytes at most.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass

UNRESERVED = "-_.~"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class S3Error(Exception):
    """A request the object store refused or could not be sent; ``status`` 0: unreachable."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class S3Url:
    """``s3://bucket/key``: the one spelling every flag takes."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, text: str) -> S3Url:
        if not text.startswith("s3://"):
            raise ValueError(f"{text!r} is not an s3://bucket/key URL")
        bucket, _, key = text[5:].partition("/")
        if not bucket or any(c in bucket for c in "/\\?#\r\n "):
            raise ValueError(f"{text!r} has no valid bucket name")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _quote(text: str, safe: str = UNRESERVED) -> str:
    return urllib.parse.quote(text, safe=safe)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


@dataclass
class S3Client:
    endpoint: str  # e.g. https://s3.eu-west-1.amazonaws.com or http://127.0.0.1:9000
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    timeout: float = 30.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"S3 endpoint {self.endpoint!r} must be http(s)://host[:port]")
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc

    # -- the calls ----------------------------------------------------------------------------

    def create_bucket(self, bucket: str) -> None:
        try:
            self._request("PUT", bucket, "")
        except S3Error as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc) and exc.status != 409:
                raise

    def put(self, url: S3Url, body: bytes) -> None:
        self._request("PUT", url.bucket, url.key, body=body)

    def get(self, url: S3Url) -> bytes:
        return self._request("GET", url.bucket, url.key)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """Every key under ``prefix`` (ListObjectsV2, all pages)."""
        keys: list[str] = []
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(self._request("GET", bucket, "", query=query))
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            keys.extend(k.text or "" for k in root.iter(f"{ns}Key"))
            truncated = root.findtext(f"{ns}IsTruncated") == "true"
            token = root.findtext(f"{ns}NextContinuationToken") or ""
            if not truncated or not token:
                return keys

    # -- signing ------------------------------------------------------------------------------

    def sign(
        self, method: str, path: str, query: str, payload_hash: str, now: dt.datetime
    ) -> dict[str, str]:
        """The headers that authenticate one request (path and query already encoded)."""
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        headers = {"host": self._host, "x-amz-content-sha256": payload_hash, "x-amz-date": stamp}
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [
                method,
                path,
                query,
                "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
                signed,
                payload_hash,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = _hmac(("AWS4" + self.secret_key).encode(), day)
        for part in (self.region, "s3", "aws4_request"):
            key = _hmac(key, part)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": stamp,
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                f"SignedHeaders={signed}, Signature={signature}"
            ),
        }

    def _request(
        self,
        method: str,
        bucket: str,
        key: str,
        *,
        body: bytes = b"",
        query: dict[str, str] | None = None,
    ) -> bytes:
        path = "/" + _quote(bucket) + ("/" + _quote(key, UNRESERVED + "/") if key else "")
        canonical_query = "&".join(
            f"{_quote(k)}={_quote(v)}" for k, v in sorted((query or {}).items())
        )
        payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        headers = self.sign(method, path, canonical_query, payload_hash, dt.datetime.now(dt.UTC))
        request = urllib.request.Request(
            self._base + path + (f"?{canonical_query}" if canonical_query else ""),
            data=body if method == "PUT" else None,
            method=method,
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            code = ""
            if detail.startswith("<"):
                try:
                    code = ET.fromstring(detail).findtext("Code") or ""
                except ET.ParseError:
                    code = ""
            raise S3Error(
                f"S3 {method} s3://{bucket}/{key} refused: {exc.code} {code or exc.reason}",
                exc.code,
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise S3Error(f"S3 endpoint {self._base} unreachable: {reason}") from None
