"""Metrics and logs that follow the conventions operators and Prometheus expect.

One real stack (simulator, config service on SQLite without Redis, proxy, one gateway pod
as a subprocess) is scraped on every service's /metrics and checked with Prometheus' own
text parser; request ids are followed from the client through the proxy into the pod's
log; the Grafana dashboard may only query metric names the scrapes contain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import stack as stack_module
from conftest import READ, eventually
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from stack import Stack, running_stack

from modbot_client.table_client import RoutingTableClient
from modbot_runtime import observability

on_module_loop = pytest.mark.asyncio(loop_scope="module")  # one stack for the module

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "manifests" / "grafana" / "modbot-ring.json"
SANE = re.compile(r"[A-Za-z0-9._-]{1,64}")
LONG_POLL_WAIT = 1.0


class Capture(logging.Handler):
    """The services' own JSON formatter, kept in memory (config and proxy run in-process)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(observability._JsonFormatter("test"))
        self.addFilter(observability._RequestIdFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    handler = Capture()
    root, access = logging.getLogger(), logging.getLogger("modbot.request")
    before = access.level
    root.addHandler(handler)
    access.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    access.setLevel(before)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, capture: Capture) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("metrics")
    real = stack_module.pod_process

    def debug_pod(*args: Any, **kw: Any) -> Any:  # the pod's per-request log line is debug
        proc = real(*args, **kw)
        proc.args[proc.args.index("--log-level") + 1] = "debug"
        return proc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stack_module, "pod_process", debug_pod)
        # embedded control plane: Redis deliberately not configured
        async with running_stack(
            tmp, f"sqlite:///{tmp / 'config.db'}", pods=1, guilds=3, shard_count=2
        ) as s:
            yield s


async def _text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as r:
        assert r.status == 200, url
        return await r.text()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scrapes(stack: Stack) -> dict[str, str]:
    """Each service's /metrics after some traffic, including one long-poll held ~1 s."""
    http = stack.http
    gid = next(iter(stack.world.guilds))
    async with http.get(f"{stack.proxy.url}/guild/{gid}/dashboard") as r:
        assert r.status == 200
    async with http.get(f"{stack.proxy.url}/api/guilds/{gid}/stats") as r:
        assert r.status == 200
    auth = {"Authorization": f"Bearer {READ}"}
    async with http.get(f"{stack.config.url}/v1/table", headers=auth) as r:
        etag = r.headers["ETag"]
    async with http.get(
        f"{stack.config.url}/v1/table",
        params={"wait": str(LONG_POLL_WAIT)},
        headers={**auth, "If-None-Match": etag},
    ) as r:
        assert r.status == 304  # nothing changed: held for the whole wait
    pod = next(iter(stack.pods.values()))
    return {
        "config": await _text(http, f"{stack.config.url}/metrics"),
        "proxy": await _text(http, f"{stack.proxy.admin_url}/metrics"),
        "gateway": await _text(http, f"{pod.url}/metrics"),
    }


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def series_names(text: str) -> set[str]:
    """Every name a query may use: a labelled family with no child yet has no samples, but
    its HELP and TYPE are exported, so its series names are known."""
    names = sample_names(text)
    for fam in text_string_to_metric_families(text):
        names |= {fam.name + suffix for suffix in SUFFIXES.get(fam.type, ("",))}
    return names


# -- 1. metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["config", "proxy", "gateway"])
@on_module_loop
async def test_every_family_follows_prometheus_conventions(scrapes, component):
    text = scrapes[component]
    fams = families(text)
    assert fams, text
    for name, fam in fams.items():
        assert len(fam.documentation.split()) >= 3, (name, fam.documentation)
        for sample in fam.samples:
            assert not sample.name.endswith("_created"), sample.name
            if fam.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            else:  # a _total that is not a counter would mislead rate()
                assert not sample.name.endswith("_total"), (sample.name, fam.type)
    assert "_created" not in text
    info = fams["modbot_build_info"]
    assert info.type == "gauge"
    [sample] = info.samples
    assert sample.value == 1.0
    assert sample.labels["component"] == component
    assert sample.labels["version"] and re.fullmatch(r"3\.\d+\.\d+.*", sample.labels["python"])


@on_module_loop
async def test_the_long_poll_is_not_in_the_latency_histogram(scrapes):
    fams = families(scrapes["config"])
    latency = fams["modbot_config_request_seconds"].samples
    table_sum = sum(
        s.value for s in latency if s.name.endswith("_sum") and s.labels["route"] == "/v1/table"
    )
    assert table_sum < LONG_POLL_WAIT / 2, table_sum  # only the quick GETs
    polls = {s.name: s.value for s in fams["modbot_config_table_long_poll_seconds"].samples}
    assert polls["modbot_config_table_long_poll_seconds_count"] >= 1
    assert polls["modbot_config_table_long_poll_seconds_sum"] >= LONG_POLL_WAIT * 0.9
    # the request itself is still counted
    counted = [
        s
        for s in fams["modbot_config_requests"].samples
        if s.labels["route"] == "/v1/table" and s.labels["status"] == "304"
    ]
    assert counted and counted[0].value >= 1


@on_module_loop
async def test_cumulative_values_are_counters(scrapes):
    fams = families(scrapes["gateway"])
    assert fams["modbot_gateway_rows_written"].type == "counter"
    assert "modbot_gateway_rows_written_total" in sample_names(scrapes["gateway"])
    assert fams["modbot_gateway_write_failures"].type == "counter"


@on_module_loop
async def test_an_unconfigured_redis_is_not_reported_down(scrapes):
    for component in ("proxy", "gateway"):
        ups = [
            s for s in families(scrapes[component])[f"modbot_{component}_table_source_up"].samples
        ]
        assert {s.labels["source"] for s in ups} == {"config"}, ups
        assert all(s.value == 1.0 for s in ups)
    assert "modbot_config_redis_up" not in families(scrapes["config"])


def test_a_configured_redis_is_reported():
    """The other side: with a Redis URL the source is exported, and 0 until it answers."""
    registry = CollectorRegistry()
    client = RoutingTableClient(redis_url="redis://127.0.0.1:1/0", config_url="")
    client.register_metrics(registry, "x")
    assert registry.get_sample_value("x_table_source_up", {"source": "redis"}) == 0.0
    assert registry.get_sample_value("x_table_source_up", {"source": "config"}) is None


@on_module_loop
async def test_the_proxy_reports_circuit_breakers(stack, scrapes):
    pod = next(iter(stack.pods))
    stack.proxy.proxy.breaker_for(pod)
    text = await _text(stack.http, f"{stack.proxy.admin_url}/metrics")
    assert families(text)["modbot_proxy_circuit_open"].samples[0].labels == {"pod": pod}


# -- 2. logs and request ids ---------------------------------------------------------------------


def test_log_times_are_iso_8601_utc_with_milliseconds():
    fmt = observability._JsonFormatter("svc")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    record.created = 1_764_230_400.1234
    entry = json.loads(fmt.format(record))
    assert entry["ts"] == "2025-11-27T08:00:00.123Z"


def _logged(name: str, msg: str, *args: object) -> dict[str, Any]:
    """One record as discord.py logs it (``exc_info=`` an error raised and caught)."""
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 34077)")
        except OSError as cause:
            raise aiohttp.ClientConnectionError("Cannot connect to host 127.0.0.1:34077") from cause
    except aiohttp.ClientError as exc:
        error = exc
    record = logging.LogRecord(
        name, logging.ERROR, __file__, 1, msg, args, (type(error), error, error.__traceback__)
    )
    entry: dict[str, Any] = json.loads(observability._JsonFormatter("svc").format(record))
    return entry


def test_discord_unreachable_is_one_line_not_a_traceback_per_attempt():
    """discord.py logs every reconnect attempt at ERROR with the network error's traceback;
    a Discord outage (or the simulator dying before the pods in a kill -9 of `dev up`) must
    not fill the pods' logs with tracebacks: the error's one line stays."""
    for name, msg, args in (
        ("discord.shard", "Attempting a reconnect for shard ID %s in %.2fs", (1, 0.5)),
        ("discord.client", "Attempting a reconnect in %.2fs", (2.0,)),
    ):
        entry = _logged(name, msg, *args)
        assert entry["level"] == "error" and entry["msg"].startswith("Attempting a reconnect")
        assert entry["exc"] == "ClientConnectionError: Cannot connect to host 127.0.0.1:34077"
    # anything else keeps its traceback: another discord.py error, or our own logger
    for name, msg, args in (
        ("discord.shard", "Failed to connect for shard_id: %s. Retrying...", (1,)),
        ("modbot.gateway", "Attempting a reconnect for shard ID %s in %.2fs", (1, 0.5)),
    ):
        exc = _logged(name, msg, *args)["exc"]
        assert exc.startswith("Traceback (most recent call last):"), exc
        assert "ConnectionRefusedError" in exc  # the cause, with its own traceback


@pytest.mark.parametrize(
    "value, sane",
    [
        ("abc-123._XYZ", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("abc\r\nSet-Cookie: x=1", False),
        ("réquest", False),
        ("a b", False),
        ("abc%0D%0A", False),
    ],
)
def test_request_id_sanity(value, sane):
    assert (observability.sane_request_id(value) == value) is sane


@on_module_loop
async def test_a_request_id_goes_through_the_proxy_into_the_pods_log(stack, capture):
    gid = next(iter(stack.world.guilds))
    rid = "trace-4f2a.9_Z"
    async with stack.http.get(
        f"{stack.proxy.url}/guild/{gid}/dashboard", headers={"X-Request-Id": rid}
    ) as r:
        assert r.status == 200
        assert r.headers["X-Request-Id"] == rid
    # the proxy (in this process) logged it
    assert any(e.get("request_id") == rid for e in capture.entries())
    # the owning pod got it from the proxy and logged it
    owner = stack.proxy.tables.table.owner(gid)
    log_path = Path(stack.pods[owner].log_path)

    async def pod_logged() -> bool:
        for line in log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("request_id") == rid:
                    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
                    return True
        return False

    await eventually(pod_logged, timeout=5, interval=0.1)  # a line with the request id


@on_module_loop
async def test_each_service_answers_with_a_request_id(stack, capture):
    pod = next(iter(stack.pods.values()))
    urls = {
        "config": f"{stack.config.url}/healthz",
        "proxy-admin": f"{stack.proxy.admin_url}/healthz",
        "gateway": f"{pod.url}/healthz",
    }
    for name, url in urls.items():
        rid = f"given-{name}"
        async with stack.http.get(url, headers={"X-Request-Id": rid}) as r:
            assert r.headers["X-Request-Id"] == rid, name
        async with stack.http.get(url) as r:  # none given: one is made
            assert SANE.fullmatch(r.headers["X-Request-Id"]), name
    assert any(e.get("request_id") == "given-config" for e in capture.entries())
    # an error answer carries it too
    async with stack.http.get(
        f"{stack.config.url}/v1/nowhere", headers={"X-Request-Id": "err-1"}
    ) as r:
        assert r.status == 404 and r.headers["X-Request-Id"] == "err-1"


async def _raw(url: str, header_lines: list[bytes]) -> tuple[bytes, bytes]:
    """A request written byte for byte (clients refuse to send these headers)."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + b"".join(h + b"\r\n" for h in header_lines)
            + b"\r\n"
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


HOSTILE = {
    "crlf-encoded": b"X-Request-Id: abc%0D%0ASet-Cookie:%20evil=1",
    "obs-fold": b"X-Request-Id: abc\r\n Set-Cookie: evil=1",
    "10k": b"X-Request-Id: " + b"A" * 10_240,
    "65": b"X-Request-Id: " + b"B" * 65,
    "non-ascii": "X-Request-Id: r\u00e9q-\u00fc-\u4e2d".encode(),
    "space": b"X-Request-Id: two words",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@on_module_loop
async def test_a_hostile_request_id_is_replaced_never_echoed(stack, capture, case):
    pod = next(iter(stack.pods.values()))
    hostile = HOSTILE[case].split(b": ", 1)[1]
    for url in (stack.config.url, stack.proxy.admin_url, pod.url, stack.proxy.url):
        before = len(capture.lines)
        head, _ = await _raw(url, [HOSTILE[case]])
        assert b"evil" not in head and hostile not in head and hostile[:64] not in head, head
        ids = [
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-request-id:")
        ]
        if ids:  # a handler answered (200, or 404 on the proxy's public port): a fresh id
            assert len(ids) == 1 and SANE.fullmatch(ids[0].decode()), head
        else:  # refused by the HTTP parser before any handler: no id to echo
            assert head.split(b" ")[1] in (b"400", b"431"), head
        # never logged as the request id either (aiohttp's own parse-error line may quote
        # the raw header, JSON-escaped, which is not ours to change)
        for entry in capture.entries()[before:]:
            rid = entry.get("request_id")
            assert rid is None or SANE.fullmatch(rid), entry


# -- 3. the Grafana dashboard -------------------------------------------------------------------


def _queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert exprs
    names: set[str] = set()
    for expr in exprs:
        # strip label matchers and strings, then keep identifiers that name our metrics
        bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"", "", expr)
        names |= set(re.findall(r"\bmodbot_[a-z0-9_]+", bare))
    return names


@on_module_loop
async def test_every_metric_the_dashboard_queries_exists(scrapes):
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["title"] and dashboard["uid"]
    assert {"proxy", "gateway", "config"} <= {
        p["title"].split(":")[0].lower() for p in dashboard["panels"] if p["type"] == "row"
    }
    exported = set().union(*(series_names(t) for t in scrapes.values()))
    # a family's own name counts for gauges; histograms are queried by their _bucket etc.
    queried = _queried_metrics(dashboard)
    missing = sorted(queried - exported)
    assert not missing, missing
    # and the dashboard covers what the issue asks for
    for needed in (
        "modbot_proxy_requests_total",
        "modbot_proxy_request_seconds_bucket",
        "modbot_proxy_refused_requests_total",
        "modbot_proxy_circuit_open",
        "modbot_gateway_write_failures_total",
        "modbot_gateway_session_starts_remaining",
        "modbot_config_load_skew",
        "modbot_config_plans_waiting",
    ):
        assert needed in queried, needed


def test_the_dashboard_check_catches_an_unknown_metric():
    fake = {
        "panels": [{"type": "timeseries", "targets": [{"expr": "rate(modbot_nope_total[5m])"}]}]
    }
    assert _queried_metrics(fake) == {"modbot_nope_total"}
