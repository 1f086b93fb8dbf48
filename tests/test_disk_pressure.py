"""Disk pressure (issue 15): gauges of the database and its volume, writes refused *before*
the volume is full (no commit fails half-way), readiness that says so, refused events
recovered once space frees (in memory, or by RESUME after a kill -9), and the alert rules
checked and unit-tested with promtool. Filesystems are real tmpfs mounts (root only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import eventually, small_tmpfs
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_durability_e2e import (  # noqa: F401 - the stack fixture is used by name
    counts_reach,
    expected_counts,
    gateway_counts,
    readyz,
    stack,
    stream,
    streaming,
)

from gateway_app.retention import RETENTION_FLAGS, Retention, RetentionPolicy
from gateway_app.server import StoreCollector
from gateway_app.storage import GuildStore, MessageRow, SessionMark, StorageUnavailable

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "manifests" / "monitoring" / "gateway-disk-rules.yaml"
MiB = 1024 * 1024
G = 333_333_333_333_333_333


def row(n: int, at: float = 1_790_000_000.0) -> MessageRow:
    return MessageRow(G, 1_000 + n, 5, 7, 3, 15, at + n)


def leave_free(directory: Path, free: int) -> Path:
    """A filler file that leaves about ``free`` bytes available (delete it to free space)."""
    st = os.statvfs(directory)
    available = st.f_bavail * st.f_frsize
    filler = directory / "filler"
    with open(filler, "wb") as f:
        left = max(available - free, 0)
        chunk = b"\0" * MiB
        while left > 0:
            f.write(chunk[: min(left, MiB)])
            left -= min(left, MiB)
    return filler


def scrape(store: GuildStore, retention: Retention | None = None) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    if retention is not None:
        registry.register(retention)
    text = generate_latest(registry).decode()
    values = {}
    for fam in text_string_to_metric_families(text):
        assert len(fam.documentation.split()) >= 3, fam.name
        for sample in fam.samples:
            assert sample.name.endswith("_total") == (fam.type == "counter"), sample.name
            values[sample.name] = sample.value
    return values


# -- happy path: the gauges ----------------------------------------------------------------------


async def test_gauges_report_the_database_and_its_volume_in_bytes(tmp_path):
    with small_tmpfs(tmp_path / "disk", size="8m") as disk:
        store = GuildStore(str(disk / "pod.db"), reserve_bytes=1 * MiB, max_used=0.95)
        await store.open()
        try:
            for n in range(20_000):
                store.message_created(row(n, at=1_000_000.0))  # ancient: retention takes them
            await store.flush()
            await store.check_disk()
            got = scrape(store)
            st = os.statvfs(disk)
            size = (st.f_blocks - st.f_bfree) * st.f_frsize + st.f_bavail * st.f_frsize
            assert got["modbot_gateway_volume_size_bytes"] == size == 8 * MiB
            assert got["modbot_gateway_volume_free_bytes"] == st.f_bavail * st.f_frsize
            files = [disk / "pod.db", disk / "pod.db-wal"]
            assert got["modbot_gateway_database_bytes"] == sum(f.stat().st_size for f in files)
            assert got["modbot_gateway_database_bytes"] > 500_000
            assert got["modbot_gateway_disk_reserve_bytes"] == 1 * MiB  # > 5% of 8 MiB
            assert got["modbot_gateway_disk_pressure"] == 0
            assert got["modbot_gateway_database_free_bytes"] == 0
            # retention deletes them: their pages become free pages inside the file
            retention = Retention(
                store,
                RetentionPolicy(days={"message_stats": 1}, batch=5_000, pause=0),
                after_run=lambda: store.check_disk(refresh=True),
            )
            report = await retention.run_once()
            assert report.deleted["message_stats"] == 20_000
            await store.measure_free_pages()
            got = scrape(store, retention)
            assert got["modbot_gateway_database_free_bytes"] > 300_000
            assert got["modbot_gateway_retention_rows_deleted_total"] == 20_000
            for name in got:
                if "bytes" in name:
                    assert name.endswith("_bytes"), name
        finally:
            await store.close()


# -- fault: a real small filesystem, filled by someone else ---------------------------------------


async def test_writes_are_refused_before_the_disk_is_full_then_resume_losing_nothing(tmp_path):
    with small_tmpfs(tmp_path / "disk", size="8m") as disk:
        store = GuildStore(
            str(disk / "pod.db"),
            reserve_bytes=2 * MiB,
            max_used=1.0,
            retry_initial=0.02,
            retry_max=0.2,
        )
        await store.open()
        try:
            for n in range(100):
                store.message_created(row(n))
            store.mark_session(SessionMark(0, 1, "s1", 100, "ws://x/gw"))
            await store.flush()
            filler = leave_free(disk, 1 * MiB)  # 1 MiB left: below the 2 MiB reserve
            for n in range(100, 3_100):
                store.message_created(row(n))
            store.mark_session(SessionMark(0, 1, "s1", 3_100, "ws://x/gw"))
            with pytest.raises(StorageUnavailable, match="disk almost full"):
                await store.flush()
            assert store.pressure is not None and "below the 2.0 MiB reserve" in store.pressure
            assert store.unwritable == f"failing: {store.pressure}"
            assert store.failure is None, "no commit was attempted, so none failed"
            assert store.batches_refused >= 1 and store.write_failures == store.batches_refused
            assert (await store.sessions())[0].sequence == 100, "nothing acknowledged"
            assert store.backlog == 3_000, "the refused writes wait, in order"
            st = os.statvfs(disk)
            assert st.f_bavail * st.f_frsize > 512 * 1024, "refused before the disk was full"
            # direct writes are refused too, with the reason
            with pytest.raises(StorageUnavailable, match="refused"):
                await store.add_report(G, 1, 2, 3, 4, "spam", "x")
            with pytest.raises(StorageUnavailable, match="refused"):
                await store.save_settings(G, {"mod_log": "1"})
            with pytest.raises(StorageUnavailable, match="refused"):
                async with store._bulk_connection():  # an import's connection
                    pass
            filler.unlink()  # space frees: the writer's next retry goes through
            await eventually(lambda: store.pressure is None and store.backlog == 0, timeout=10)
            await store.flush()
            counts = await store.row_counts(G)
            assert counts["message_stats"] == 3_100, "every refused write was kept"
            assert (await store.sessions())[0].sequence == 3_100
            assert store.failure is None and store.write_failures == store.batches_refused
            assert store.writes_refused == store.batches_refused + 2, "2 direct writes refused"
        finally:
            await store.close()


async def test_retention_frees_pages_that_end_the_refusal_without_freeing_the_volume(tmp_path):
    with small_tmpfs(tmp_path / "disk", size="8m") as disk:
        store = GuildStore(str(disk / "pod.db"), reserve_bytes=1 * MiB, max_used=1.0)
        await store.open()
        try:
            for n in range(40_000):  # about 3 MiB of rows, all past retention
                store.message_created(row(n, at=1_000_000.0))
            await store.flush()
            leave_free(disk, 512 * 1024)
            await store.check_disk()
            assert store.pressure is not None
            retention = Retention(
                store,
                RetentionPolicy(days={"message_stats": 30}, batch=2_000, pause=0),
                after_run=lambda: store.check_disk(refresh=True),
            )
            await retention.run_once()  # deletes run under pressure: they free space
            await retention.after_run()  # what run_forever does after each run
            disk_now = store.disk_state()
            assert disk_now is not None and disk_now.volume_free < 1 * MiB, "volume still full"
            assert disk_now.database_free > 1 * MiB
            assert store.pressure is None, "the free pages count: writes go on"
            store.message_created(row(99_999))
            await store.flush()
        finally:
            await store.close()


# -- fault, end to end: a real pod under a stream, its volume nearly full ------------------------


@pytest.mark.slow
async def test_a_pod_refuses_writes_near_full_goes_unready_and_loses_nothing(stack, tmp_path):  # noqa: F811
    """Phase 1: refused while running, space frees, the queued events are committed.
    Phase 2: refused, then kill -9; space frees, the restarted pod RESUMEs from the last
    committed position and Discord replays what was refused. 0 lost, 0 duplicated."""
    pod = stack.pods["gateway-0"]
    with small_tmpfs(tmp_path / "disk", size="24m") as disk:
        pod.kill()
        pod.database = str(disk / "gateway-0.db")
        pod.args[pod.args.index("--database") + 1] = pod.database
        pod.args += ["--disk-reserve-bytes", str(8 * MiB), "--disk-max-used", "1"]
        pod.args += ["--retention-interval", "0.5", "--retention-message-stats-days", "1"]
        pod.start()
        await stack.wait_ready("gateway-0", timeout=60)
        # retention runs in the pod: rows two days old go, batch by batch
        owned = next(iter(stack.world.guilds))
        with contextlib.closing(sqlite3.connect(pod.database, timeout=10)) as conn:
            conn.executemany(
                "INSERT INTO message_stats (guild_id, message_id, channel_id, author_id,"
                " word_count, char_count, sent_at) VALUES (?, ?, 5, 7, 3, 15, ?)",
                [(owned, n, time.time() - 2 * 86400) for n in range(1, 5_001)],
            )
            conn.commit()

        async def refusing() -> bool:
            status, body = await readyz(stack, pod)
            storage = body.get("storage", "")
            return status == 503 and storage.startswith("failing: disk almost full")

        async def metric(name: str) -> float:
            async with stack.http.get(f"{pod.url}/metrics") as r:
                text = await r.text()
            line = next(m for m in text.splitlines() if m.startswith(name + " "))
            return float(line.split()[-1])

        async def pruned() -> bool:
            return (
                await metric('modbot_gateway_retention_rows_deleted_total{table="message_stats"}')
                == 5_000
            )

        await eventually(pruned, timeout=20)
        assert pod.rows("SELECT count(*) FROM message_stats WHERE message_id <= 5000") == [(0,)]
        assert await metric("modbot_gateway_retention_batches_total") >= 3  # 2,000 a batch
        first: dict[int, int] = {}
        for phase in ("in memory", "kill -9"):
            before = await gateway_counts(stack)
            sending = asyncio.create_task(stream(stack, 6))
            await streaming(pod)
            filler = leave_free(disk, 4 * MiB)  # half the reserve left: not full
            await eventually(refusing, timeout=10, interval=0.1)
            _, body = await readyz(stack, pod)
            assert "writes are refused" in body["storage"] and "reserve" in body["storage"]
            assert body["disk"]["volume_free_bytes"] > 2 * MiB, "refused before the disk filled"
            assert await metric("modbot_gateway_disk_pressure") == 1
            refused = await metric("modbot_gateway_writes_refused_total")
            assert refused >= 1
            assert await metric("modbot_gateway_write_failures_total") == refused, (
                "no failed commit"
            )
            await asyncio.sleep(1.0)  # the sleep is the test: refused writes pile up
            if phase == "kill -9":
                pod.kill()  # its refused writes die with it: nothing acknowledged them
            filler.unlink()
            if phase == "kill -9":
                pod.start()
            await stack.wait_ready("gateway-0", timeout=60)
            sent = await sending
            want = expected_counts(stack, sent)
            totals = {g: want[g] for g in want}
            if phase == "kill -9":  # phase 1's rows are there too
                totals = {g: want[g] + first[g] for g in want}
            await eventually(lambda: counts_reach(stack, pod, totals), timeout=60)  # noqa: B023
            assert pod.message_counts() == totals, f"{phase}: 0 lost, 0 duplicated"
            after = await gateway_counts(stack)
            if phase == "kill -9":
                assert after["resumes"] - before["resumes"] == 2, "both shards RESUMEd"
            else:  # kept in memory: the sessions never dropped
                assert after["resumes"] == before["resumes"]
            assert after["identifies"] == before["identifies"], "no new session: none skipped"
            first = want
            print(f"{phase}: sent {sent['sent']}, stored all; refused batches {refused:.0f}")
        pod.kill()  # before the tmpfs goes away


# -- the alert rules -------------------------------------------------------------------------------


def promtool() -> str:
    """promtool from PATH, or where .ci/run unpacks Debian's prometheus package."""
    found = shutil.which("promtool")
    cached = Path.home() / ".cache/modbot-ring/prometheus/usr/bin/promtool"
    if found:
        return found
    if cached.exists():
        return str(cached)
    pytest.skip("promtool is not installed (.ci/run unpacks it from Debian's prometheus package)")


def rule_file(tmp_path: Path) -> Path:
    doc = yaml.safe_load(RULES.read_text())
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(doc["spec"]))
    return path


def test_the_prometheus_rule_is_well_formed_and_queries_exported_metrics():
    doc = yaml.safe_load(RULES.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["name"] and set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    rules = {r["alert"]: r for g in doc["spec"]["groups"] for r in g["rules"]}
    assert {"ModbotGatewayVolumeFilling", "ModbotGatewayWritesRefused"} <= set(rules)
    assert "0.80" in rules["ModbotGatewayVolumeFilling"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


async def test_every_metric_the_alerts_query_is_exported(tmp_path):
    store = GuildStore(str(tmp_path / "pod.db"), reserve_bytes=MiB)
    await store.open()
    try:
        retention = Retention(store, RetentionPolicy(days={"message_stats": 90}))
        exported = set(scrape(store, retention))
    finally:
        await store.close()
    exprs = " ".join(
        r["expr"] for g in yaml.safe_load(RULES.read_text())["spec"]["groups"] for r in g["rules"]
    )
    queried = set(re.findall(r"\bmodbot_[a-z0-9_]+", exprs))
    assert queried and not queried - exported, sorted(queried - exported)


def test_promtool_checks_the_rules_and_their_unit_tests_pass(tmp_path):
    tool = promtool()
    rules = rule_file(tmp_path)
    done = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    gib = 1024**3
    labels = '{instance="gateway-0"}'
    described = {
        r["alert"]: r["annotations"]["description"]
        for g in yaml.safe_load(RULES.read_text())["spec"]["groups"]
        for r in g["rules"]
    }
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {  # 79% used: quiet; 81% used for 10 minutes: fires
                "interval": "1m",
                "input_series": [
                    {
                        "series": f"modbot_gateway_volume_size_bytes{labels}",
                        "values": f"{gib}x40",
                    },
                    {
                        "series": f"modbot_gateway_volume_free_bytes{labels}",
                        "values": f"{int(gib * 0.17)}x15 {int(gib * 0.15)}x25",
                    },
                    {  # free pages count as free: 21%, then 19% of the volume free in all
                        "series": f"modbot_gateway_database_free_bytes{labels}",
                        "values": f"{int(gib * 0.04)}x40",
                    },
                    {"series": f"modbot_gateway_disk_pressure{labels}", "values": "0x20 1x20"},
                    {
                        "series": f"modbot_gateway_retention_errors_total{labels}",
                        "values": "0x40",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "14m",
                        "alertname": "ModbotGatewayVolumeFilling",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "20m",  # 81% used since minute 16: not yet 10 minutes
                        "alertname": "ModbotGatewayVolumeFilling",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "ModbotGatewayVolumeFilling",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "instance": "gateway-0"},
                                "exp_annotations": {
                                    "summary": "Gateway gateway-0: its volume is 81% used",
                                    "description": described["ModbotGatewayVolumeFilling"],
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "ModbotGatewayWritesRefused",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "23m",
                        "alertname": "ModbotGatewayWritesRefused",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "instance": "gateway-0"},
                                "exp_annotations": {
                                    "summary": "Gateway gateway-0 refuses writes:"
                                    " its volume is nearly full",
                                    "description": described["ModbotGatewayWritesRefused"],
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "ModbotGatewayRetentionFailing",
                        "exp_alerts": [],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    done = subprocess.run([tool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# -- the manifests ------------------------------------------------------------------------------


def test_the_gateway_statefulset_sets_retention_and_a_reserve_that_fits_its_volume():
    from test_manifests import build

    docs = [d for d in yaml.safe_load_all(build("production")) if d]
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "gateway")
    gateway = next(
        c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"
    )
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    flags = {f.env: f for f in RETENTION_FLAGS}
    for name in (
        "MODBOT_RETENTION_MESSAGE_STATS_DAYS",
        "MODBOT_DISK_RESERVE_BYTES",
        "MODBOT_DISK_MAX_USED",
    ):
        assert name in env, name
        flags[name].type(env[name])  # the pod would accept it
    [claim] = sts["spec"]["volumeClaimTemplates"]
    size = claim["spec"]["resources"]["requests"]["storage"]
    assert size.endswith("Gi")
    volume = int(size[:-2]) * 1024**3
    reserve = int(env["MODBOT_DISK_RESERVE_BYTES"])
    refuse_at = max(reserve, (1 - float(env["MODBOT_DISK_MAX_USED"])) * volume)
    assert 0 < refuse_at < 0.2 * volume, "refusal well after the 80% alert, before full"
