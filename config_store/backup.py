"""Backups of the control plane's database to S3-compatible storage, and restore drills.

The gateway pods' SQLite files are replicated continuously by Litestream; the control
plane (pods, pins, plans, migrations, epochs, audit) lives in PostgreSQL (or SQLite in
embedded mode) and is backed up here, as a periodic snapshot (a Kubernetes CronJob
runs ``modbot-ring db backup``):

- PostgreSQL: ``pg_dump --format=custom`` of the configured schema (or the database);
  SQLite: the online backup API (a consistent copy while the service writes).
- Each backup is two objects: ``<prefix>/config-<UTC time>.dump`` and a manifest
  ``….dump.json`` (dialect, schema, table version, size, SHA-256). ``<prefix>/latest.json``
  is written last, so a failed upload never replaces the last good backup.
- ``modbot-ring db restore --from s3://bucket/prefix/`` takes the latest (or a given
  ``.dump``), checks its SHA-256, refuses a target that already holds the schema, restores,
  and checks the restored routing-table version against the manifest: a restore that
  does not bring back what was saved fails loudly rather than starting a cluster on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .s3 import S3Client, S3Error, S3Url

FORMAT = 1


class BackupError(Exception):
    """A backup or restore that did not happen; ``unavailable``: a peer was unreachable."""

    def __init__(self, message: str, *, unavailable: bool = False, not_found: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable
        self.not_found = not_found


@dataclass(frozen=True)
class Manifest:
    key: str
    dialect: str
    schema: str
    table_version: int
    size: int
    sha256: str
    created: str

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, **self.__dict__}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise BackupError(f"backup manifest format {raw.get('format')!r} is not {FORMAT}")
            return cls(
                key=str(raw["key"]),
                dialect=str(raw["dialect"]),
                schema=str(raw["schema"]),
                table_version=int(raw["table_version"]),
                size=int(raw["size"]),
                sha256=str(raw["sha256"]),
                created=str(raw["created"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupError(f"not a backup manifest: {exc}") from None


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _dialect(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql"
    raise BackupError(f"--database-url must be postgresql://... or sqlite:///path, not {url!r}")


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    if shutil.which(args[0]) is None:
        raise BackupError(f"{args[0]} is not installed (Debian: postgresql-client)")
    result = subprocess.run(args, capture_output=True, **kwargs)
    if result.returncode != 0:
        first = (result.stderr.decode("utf-8", "replace").strip().splitlines() or ["failed"])[0]
        raise BackupError(
            f"{args[0]}: {first}", unavailable="could not connect" in first or "refused" in first
        )
    return result


def _reachable(url: str) -> None:
    """Fail fast and in one line when the database is not there (PostgreSQL's pool would
    retry for seconds; SQLite would create an empty file)."""
    if _dialect(url) == "sqlite":
        if not Path(_sqlite_path(url)).exists():  # opening it would create an empty one
            raise BackupError(f"{_sqlite_path(url)} does not exist", not_found=True)
        return
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["unreachable"])[0]
        raise BackupError(f"PostgreSQL: {first}", unavailable=True) from None


async def _table_version(url: str, schema: str) -> int:
    from .store import StoreError, open_store

    _reachable(url)
    try:
        store = await open_store(url, schema=schema, migrate=False)
    except StoreError as exc:
        raise BackupError(str(exc), unavailable=True) from None
    try:
        return await store.version()
    except StoreError as exc:
        raise BackupError(str(exc), unavailable=True) from None
    except Exception as exc:  # the driver's own errors: not our schema, or not a database
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BackupError(f"not a modbot-ring control-plane database: {first}") from None
    finally:
        await store.close()


def _dump(url: str, schema: str, workdir: Path) -> Path:
    out = workdir / "config.dump"
    if _dialect(url) == "sqlite":
        source = _sqlite_path(url)
        if not Path(source).exists():
            raise BackupError(f"{source} does not exist", not_found=True)
        with sqlite3.connect(source) as src, sqlite3.connect(out) as dst:
            src.backup(dst)  # consistent even while the service writes
        return out
    args = ["pg_dump", "--format=custom", "--no-owner", "--file", str(out)]
    if schema:
        args.append(f"--schema={schema}")
    _run([*args, url])
    return out


def backup(url: str, schema: str, dest: S3Url, s3: S3Client) -> Manifest:
    """Snapshot the database to ``dest`` (a prefix); returns what was written."""
    dialect = _dialect(url)
    version = asyncio.run(_table_version(url, schema))
    with tempfile.TemporaryDirectory(prefix="modbot-backup-") as tmp:
        dump = _dump(url, schema, Path(tmp))
        data = dump.read_bytes()
    now = dt.datetime.now(dt.UTC)
    prefix = dest.key.rstrip("/")
    key = f"{prefix}/config-{now:%Y%m%dT%H%M%SZ}.dump".lstrip("/")
    manifest = Manifest(
        key=key,
        dialect=dialect,
        schema=schema,
        table_version=version,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        created=now.isoformat(timespec="seconds"),
    )
    s3.put(S3Url(dest.bucket, key), data)
    s3.put(S3Url(dest.bucket, key + ".json"), manifest.to_json())
    # last: a backup that failed above never becomes "latest"
    s3.put(S3Url(dest.bucket, f"{prefix}/latest.json".lstrip("/")), manifest.to_json())
    return manifest


def _manifest_for(source: S3Url, s3: S3Client) -> Manifest:
    if source.key.endswith(".dump"):
        return Manifest.from_json(s3.get(S3Url(source.bucket, source.key + ".json")))
    if source.key.endswith(".json"):
        return Manifest.from_json(s3.get(source))
    prefix = source.key.rstrip("/")
    try:
        return Manifest.from_json(s3.get(S3Url(source.bucket, f"{prefix}/latest.json".lstrip("/"))))
    except S3Error as exc:
        if exc.status == 404:
            raise BackupError(f"no backup under {source}", not_found=True) from None
        raise


def _refuse_non_empty(url: str, manifest: Manifest) -> None:
    if manifest.dialect == "sqlite":
        if Path(_sqlite_path(url)).exists():
            raise BackupError(f"{_sqlite_path(url)} exists: restore only into a new file")
        return
    import psycopg

    schema = manifest.schema or "public"
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            ).fetchone()
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreachable"
        raise BackupError(f"PostgreSQL: {first}", unavailable=True) from None
    if row is not None and row[0]:
        raise BackupError(
            f"the target database already has {row[0]} table(s) in schema {schema!r}: "
            "restore only into an empty one"
        )


def restore(url: str, source: S3Url, s3: S3Client) -> Manifest:
    """Restore the backup at ``source`` into an empty database and check it."""
    dialect = _dialect(url)
    manifest = _manifest_for(source, s3)
    if manifest.dialect != dialect:
        raise BackupError(f"the backup is of a {manifest.dialect} database, the target {dialect}")
    _refuse_non_empty(url, manifest)
    data = s3.get(S3Url(source.bucket, manifest.key))
    if hashlib.sha256(data).hexdigest() != manifest.sha256 or len(data) != manifest.size:
        raise BackupError(f"s3://{source.bucket}/{manifest.key} does not match its manifest")
    with tempfile.TemporaryDirectory(prefix="modbot-restore-") as tmp:
        dump = Path(tmp) / "config.dump"
        dump.write_bytes(data)
        if dialect == "sqlite":
            target = Path(_sqlite_path(url))
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".restoring")
            shutil.copyfile(dump, partial)
            os.replace(partial, target)  # all or nothing
        else:
            _run(["pg_restore", "--no-owner", "--exit-on-error", "--single-transaction",
                  "--dbname", url, str(dump)])  # fmt: skip
    restored = asyncio.run(_table_version(url, manifest.schema))
    if restored != manifest.table_version:
        raise BackupError(
            f"restored table version {restored}, the backup recorded {manifest.table_version}"
        )
    return manifest


def client_from_args(args: Any) -> S3Client:
    try:
        return S3Client(
            args.s3_endpoint, args.s3_access_key_id, args.s3_secret_access_key, args.s3_region
        )
    except ValueError as exc:
        raise BackupError(str(exc)) from None


def s3_flags() -> list[Any]:
    """Where backups go: flags and environment variables shared by backup and restore."""
    from modbot_runtime.flags import Flag

    return [
        Flag(
            "s3-endpoint",
            "MODBOT_S3_ENDPOINT",
            "https://s3.amazonaws.com",
            "S3-compatible endpoint for backups",
        ),
        Flag("s3-region", "MODBOT_S3_REGION", "us-east-1", "region the requests are signed for"),
        Flag("s3-access-key-id", "MODBOT_S3_ACCESS_KEY_ID", "", "access key id", secret=True),
        Flag(
            "s3-secret-access-key",
            "MODBOT_S3_SECRET_ACCESS_KEY",
            "",
            "secret access key",
            secret=True,
        ),
    ]
