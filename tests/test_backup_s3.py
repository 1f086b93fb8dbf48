"""Backups to a real S3-compatible server (moto in server mode, on loopback), with
restore drills: a gateway pod's SQLite file through Litestream with the manifests' own
configuration, and the control plane's PostgreSQL through ``modbot-ring db backup``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest
import yaml
from conftest import ADMIN, PG_URL, eventually_sync, free_port, running_config
from litestream import Litestream

from config_store.s3 import S3Client, S3Error, S3Url
from gateway_app.storage import GuildStore, MessageRow

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "modbot-ring")
KEYS = {"access": "AKIDMODBOTTEST", "secret": "modbot-test-secret"}
A = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).read()
            return True
        return False

    try:
        eventually_sync(up, timeout=30, interval=0.2)
    except AssertionError:
        proc.kill()
        pytest.fail("moto_server did not start")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def bucket(s3_endpoint: str) -> tuple[S3Client, str]:
    s3 = S3Client(s3_endpoint, KEYS["access"], KEYS["secret"])
    name = f"b{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return s3, name


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        **os.environ,
        "MODBOT_S3_ENDPOINT": endpoint,
        "MODBOT_S3_ACCESS_KEY_ID": KEYS["access"],
        "MODBOT_S3_SECRET_ACCESS_KEY": KEYS["secret"],
    }


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)


# -- the S3 client ---------------------------------------------------------------------------


EMPTY = hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    ("method", "path", "query", "body"),
    [
        ("PUT", "/my-bucket/gateway/a%20b/c.dump", "", b"hello, world"),
        ("GET", "/my-bucket", "list-type=2&prefix=gateway%2F", b""),
        ("PUT", "/my-bucket", "", b""),
    ],
)
def test_the_signature_matches_botocore_for_the_same_request(
    monkeypatch, method, path, query, body
):
    """moto does not check signatures, so ours is checked against the AWS SDK's signer."""
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    now = dt.datetime(2026, 11, 27, 8, 30, 0, tzinfo=dt.UTC)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    client = S3Client(
        "https://s3.eu-west-1.amazonaws.com", "AKIDEXAMPLE", "secret/key+1", "eu-west-1"
    )
    payload = hashlib.sha256(body).hexdigest() if body else EMPTY
    ours = client.sign(method, path, query, payload, now)
    url = f"https://s3.eu-west-1.amazonaws.com{path}" + (f"?{query}" if query else "")
    request = AWSRequest(
        method=method, url=url, data=body, headers={"x-amz-content-sha256": payload}
    )
    signer = botocore.auth.S3SigV4Auth(
        Credentials("AKIDEXAMPLE", "secret/key+1"), "s3", "eu-west-1"
    )
    signer.add_auth(request)
    assert request.headers["X-Amz-Date"] == ours["x-amz-date"]
    assert request.headers["Authorization"] == ours["Authorization"]


def test_s3_round_trip_and_clear_errors(bucket):
    s3, name = bucket
    s3.put(S3Url(name, "a/b c.txt"), b"payload")
    assert s3.get(S3Url(name, "a/b c.txt")) == b"payload"
    assert s3.list_keys(name, "a/") == ["a/b c.txt"]
    with pytest.raises(S3Error) as missing:
        s3.get(S3Url(name, "a/none"))
    assert missing.value.status == 404
    with pytest.raises(S3Error) as down:
        S3Client(f"http://127.0.0.1:{free_port()}", "k", "s").get(S3Url(name, "x"))
    assert down.value.status == 0 and "unreachable" in str(down.value)
    for bad in ("http://bucket/key", "s3:///key", "s3://bu cket/k"):
        with pytest.raises(ValueError):
            S3Url.parse(bad)


# -- gateway pods: Litestream with the manifests' configuration ---------------------------------


def manifest_litestream_config(db: str) -> str:
    """The ConfigMap's litestream.yml, with only the database path and the metrics
    address changed for a test (the S3 part is exactly what the pods run)."""
    docs = yaml.safe_load((ROOT / "manifests/base/litestream-config.yaml").read_text())
    config = yaml.safe_load(docs["data"]["litestream.yml"])
    config.pop("addr", None)
    config["dbs"][0]["path"] = db
    config["dbs"][0]["replica"]["sync-interval"] = "200ms"
    return yaml.safe_dump(config)


def dump(path: str) -> dict[str, list[tuple]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("guilds", "message_stats")
        }


@pytest.mark.slow
async def test_a_lost_pod_volume_is_restored_from_s3_by_the_init_container(
    bucket, s3_endpoint, tmp_path
):
    s3, name = bucket
    db = str(tmp_path / "data" / "gateway.db")
    env = {
        "POD_NAME": "gateway-2",
        "LITESTREAM_BUCKET": name,
        "LITESTREAM_ENDPOINT": s3_endpoint,
        "LITESTREAM_ACCESS_KEY_ID": KEYS["access"],
        "LITESTREAM_SECRET_ACCESS_KEY": KEYS["secret"],
    }
    ls = Litestream(db, None, tmp_path, config=manifest_litestream_config(db), env=env)
    # this machine sets AWS_CA_BUNDLE; Litestream 0.5's S3 client cannot combine it with a
    # custom endpoint ("unable to add custom RootCAs"). The pods' image does not set it.
    ls.env.pop("AWS_CA_BUNDLE", None)
    store = GuildStore(db)
    await store.open()
    await store.save_settings(1001, {"mod_log": "42"})
    ls.replicate()
    try:
        for batch in range(4):
            for i in range(batch * 250, batch * 250 + 250):
                store.message_created(MessageRow(1001 + batch % 2, i, 7, 9, 4, 16, float(i)))
            await store.flush()
        await asyncio.to_thread(ls.replicated, "SELECT count(*) FROM message_stats", 1000, tmp_path)
        before = dump(db)
    finally:
        await store.close()
        ls.stop()
    assert any(k.startswith("gateway/gateway-2/") for k in s3.list_keys(name, "gateway/"))
    for suffix in ("", "-wal", "-shm"):  # the volume is lost
        Path(db + suffix).unlink(missing_ok=True)
    result = ls.restore()  # exactly the init container's arguments
    assert result.returncode == 0, result.stderr
    assert dump(db) == before
    assert ls.restore().returncode == 0 and dump(db) == before  # a no-op when present


# -- the control plane: pg_dump to S3 and a restore drill --------------------------------------


async def populate(config_url: str) -> dict[str, object]:
    async with aiohttp.ClientSession(headers=A) as http:
        for i in range(3):
            async with http.put(
                f"{config_url}/v1/pods/gateway-{i}", json={"url": f"http://127.0.0.1:{9000 + i}"}
            ) as r:
                assert r.status == 200, await r.text()
        for gid, pod in ((81384788765712384, "gateway-2"), (175928847299117063, "gateway-0")):
            async with http.put(
                f"{config_url}/v1/pins/{gid}", json={"pod": pod, "reason": "drill"}
            ) as r:
                assert r.status in (200, 201), await r.text()
        return await snapshot(config_url, http)


async def snapshot(config_url: str, http: aiohttp.ClientSession) -> dict[str, object]:
    async with http.get(f"{config_url}/v1/table") as r:
        table = await r.json()
    async with http.get(f"{config_url}/v1/pins") as r:
        pins = await r.json()
    async with http.get(f"{config_url}/v1/audit?limit=100") as r:
        audit = await r.json()
    return {"table": table, "pins": pins, "audit_count": len(audit.get("entries", audit))}


@pytest.mark.slow
async def test_postgres_backup_then_restore_into_an_empty_database(bucket, s3_endpoint, pg_schema):
    s3, name = bucket
    env = s3_env(s3_endpoint)
    async with running_config(PG_URL, pg_schema, shard_count=4, heartbeat_timeout=3600) as config:
        saved = await populate(config.url)
    result = cli("db", "backup", "--database-url", PG_URL, "--db-schema", pg_schema,
                 "--to", f"s3://{name}/config/", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "backed up table version" in result.stdout
    keys = s3.list_keys(name, "config/")
    assert "config/latest.json" in keys and any(k.endswith(".dump") for k in keys)

    target_db = f"restore_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target_db}"')
    target = PG_URL.rsplit("/", 1)[0] + f"/{target_db}"
    try:
        result = cli(
            "db", "restore", "--database-url", target, "--from", f"s3://{name}/config/", env=env
        )
        assert result.returncode == 0, result.stderr
        assert "checked" in result.stdout
        async with (
            running_config(target, pg_schema, shard_count=4, heartbeat_timeout=3600) as restored,
            aiohttp.ClientSession(headers=A) as http,
        ):
            back = await snapshot(restored.url, http)
        assert back["table"] == saved["table"]  # pods, pins, shards, version: all of it
        assert back["pins"] == saved["pins"]
        assert back["audit_count"] == saved["audit_count"]
        # a second restore into the same (now full) database is refused, nothing touched
        again = cli(
            "db", "restore", "--database-url", target, "--from", f"s3://{name}/config/", env=env
        )
        assert again.returncode != 0 and "empty" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{target_db}" WITH (FORCE)')


async def test_embedded_sqlite_backup_and_restore(bucket, s3_endpoint, tmp_path):
    _, name = bucket
    env = s3_env(s3_endpoint)
    source = f"sqlite:///{tmp_path}/config.db"
    async with running_config(source, shard_count=4, heartbeat_timeout=3600) as config:
        saved = await populate(config.url)
    assert (
        cli(
            "db", "backup", "--database-url", source, "--to", f"s3://{name}/embedded", env=env
        ).returncode
        == 0
    )
    target = f"sqlite:///{tmp_path}/restored/config.db"
    result = cli(
        "db", "restore", "--database-url", target, "--from", f"s3://{name}/embedded/", env=env
    )
    assert result.returncode == 0, result.stderr
    async with (
        running_config(target, shard_count=4, heartbeat_timeout=3600) as restored,
        aiohttp.ClientSession(headers=A) as http,
    ):
        assert (await snapshot(restored.url, http))["table"] == saved["table"]


def test_hostile_and_faulty_backups_fail_in_one_line_and_keep_the_last_good_one(
    bucket, s3_endpoint, tmp_path
):
    s3, name = bucket
    env = s3_env(s3_endpoint)
    db = f"sqlite:///{tmp_path}/config.db"

    async def initialise() -> None:
        async with running_config(db, shard_count=4):
            pass

    asyncio.run(initialise())
    cases = [
        # the object store is down: unreachable, exit 5, nothing written
        (["db", "backup", "--database-url", db, "--to", f"s3://{name}/x"],
         {**env, "MODBOT_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}, 5, ""),
        # PostgreSQL is down
        (["db", "backup", "--database-url", f"postgresql://postgres@127.0.0.1:{free_port()}/x",
          "--to", f"s3://{name}/x"], env, 5, ""),
        # not an s3 URL, not a database URL
        (["db", "backup", "--database-url", db, "--to", "/tmp/backup"], env, 2, "s3://"),
        (["db", "backup", "--database-url", "mysql://x", "--to", f"s3://{name}/x"], env, 2, "postgresql://"),
        # no backup there, or a bucket that does not exist
        (["db", "restore", "--database-url", f"sqlite:///{tmp_path}/n.db", "--from", f"s3://{name}/none/"],
         env, 3, "no backup"),
        (["db", "restore", "--database-url", f"sqlite:///{tmp_path}/n.db", "--from", "s3://no-such-bucket/x/"],
         env, 3, "no backup"),
        # a file that is not our database
        (["db", "backup", "--database-url", f"sqlite:///{tmp_path}/other.db", "--to", f"s3://{name}/x"],
         env, 3, "does not exist"),
    ]  # fmt: skip
    for args, case_env, code, text in cases:
        result = cli(*args, env=case_env)
        assert result.returncode == code, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert text in result.stderr, result.stderr
    assert s3.list_keys(name, "x/") == []  # nothing half-written

    # a tampered dump is refused by its checksum, and the target stays absent
    assert (
        cli("db", "backup", "--database-url", db, "--to", f"s3://{name}/t", env=env).returncode == 0
    )
    dump_key = next(k for k in s3.list_keys(name, "t/") if k.endswith(".dump"))
    s3.put(S3Url(name, dump_key), b"not the database")
    target = tmp_path / "tampered.db"
    result = cli(
        "db",
        "restore",
        "--database-url",
        f"sqlite:///{target}",
        "--from",
        f"s3://{name}/t/",
        env=env,
    )
    assert result.returncode == 1 and "does not match" in result.stderr
    assert not target.exists()
