"""The typed client of a pod's migration API (modbot_client/pod_client.py) against real
aiohttp servers on 127.0.0.1: typed answers on the happy path; a hostile or broken pod
(wrong types, garbage JSON, a huge body, a redirect) is refused with a clear error; a pod
that is down or slow is ``PodUnavailable`` within the timeout; ``PodCalls`` retries only
what waiting can fix."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from conftest import ADMIN, AppServer, free_port

from config_store.pod_calls import PodCalls
from config_store.publisher import TablePublisher
from modbot_client.pod_client import (
    EXPORT_PATH,
    FREEZE_PATH,
    GUILD_PATH,
    GUILDS_PATH,
    HELD_PATH,
    IMPORT_PATH,
    REPLAY_PATH,
    SMALL_ANSWER,
    TABLE_PATH,
    UNFREEZE_PATH,
    GuildStatus,
    PodAnswerInvalid,
    PodClient,
    PodRefused,
    PodUnavailable,
    precopy_track,
)
from modbot_ring import Pod, RoutingTable

GID = 81384788765712384
TOKEN = "migration-token"
STATUS = {
    "guild_id": str(GID),
    "pod": "gateway-1",
    "epoch": 3,
    "state": "holding",
    "holding": True,
    "shard_ready": True,
    "held": 2,
    "rows": {"messages": 10},
    "table_version": 7,
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def pod_server(routes: dict[tuple[str, str], Handler]) -> AppServer:
    """A pod on 127.0.0.1 answering ``routes`` ((method, path pattern) -> handler)."""
    return AppServer(routes, shutdown_timeout=0.5)  # a stalled handler is not waited for


def answer(data: Any, status: int = 200) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.json_response(data, status=status)

    return handler


@contextlib.asynccontextmanager
async def client_of(
    routes: dict[tuple[str, str], Handler], timeout: float = 5.0
) -> AsyncIterator[PodClient]:
    async with pod_server(routes) as url, aiohttp.ClientSession() as http:
        yield PodClient(http, url, TOKEN, pod="gateway-1", timeout=timeout)


async def test_every_call_is_typed_and_carries_token_epoch_and_paths() -> None:
    seen: list[tuple[str, str, dict[str, str], str | None, bytes]] = []

    def recording(data: Any) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            seen.append(
                (
                    request.method,
                    request.path,
                    dict(request.query),
                    request.headers.get("Authorization"),
                    await request.read(),
                )
            )
            if isinstance(data, bytes):
                return web.Response(body=data, content_type="application/json")
            return web.json_response(data)

        return handler

    export = json.dumps({"rows": {}, "track": "t-1"}).encode()
    event = {"t": "MESSAGE_CREATE", "d": {"id": "1"}}
    routes = {
        ("GET", TABLE_PATH): recording({"pod": "gateway-1", "version": None}),
        ("GET", GUILDS_PATH): recording({"pod": "gateway-1", "guilds": [str(GID)]}),
        ("GET", GUILD_PATH): recording(STATUS),
        ("POST", FREEZE_PATH): recording({"frozen": True}),
        ("GET", EXPORT_PATH): recording(export),
        ("POST", IMPORT_PATH): recording(
            {"mode": "delta", "counts": {"m": 1}, "totals": {"m": 5}, "checksum": "abc"}
        ),
        ("GET", HELD_PATH): recording({"events": [["k1", event]]}),
        ("POST", REPLAY_PATH): recording({"applied": 1, "table_wait": 0.25}),
        ("POST", UNFREEZE_PATH): recording({"applied": 0, "rows": {"m": 5}}),
        ("DELETE", GUILD_PATH): recording({"deleted": {"m": 5}}),
    }
    async with client_of(routes) as pod:
        assert (await pod.table_version()).version is None
        assert (await pod.guilds()).guilds == (GID,)
        status = await pod.status(GID)
        assert isinstance(status, GuildStatus) and status.holding and status.epoch == 3
        await pod.freeze(GID, 3)
        body = await pod.export(GID, "delta", track="t-1")
        assert body == export and await precopy_track(body, "gateway-1") == "t-1"
        result = await pod.import_rows(GID, 3, body)
        assert result.totals == {"m": 5} and result.checksum == "abc"
        held = await pod.held(GID)
        assert held == (("k1", event),)
        replayed = await pod.replay(GID, 3, held, 9)
        assert (replayed.applied, replayed.table_wait, replayed.refused) == (1, 0.25, 0)
        assert (await pod.unfreeze(GID, 3)).rows == {"m": 5}
        assert (await pod.drop(GID, 3, force=True)).deleted == {"m": 5}
    assert all(auth == f"Bearer {TOKEN}" for *_, auth, _ in seen)
    by_path = {(m, p): (q, b) for m, p, q, _, b in seen}
    assert json.loads(by_path[("POST", f"/internal/guilds/{GID}/freeze")][1]) == {"epoch": 3}
    assert by_path[("GET", f"/internal/guilds/{GID}/export")][0] == {
        "mode": "delta",
        "track": "t-1",
    }
    assert by_path[("POST", f"/internal/guilds/{GID}/import")] == ({"epoch": "3"}, export)
    assert json.loads(by_path[("POST", f"/internal/guilds/{GID}/replay")][1]) == {
        "epoch": 3,
        "events": [["k1", event]],
        "version": 9,
    }
    assert by_path[("DELETE", f"/internal/guilds/{GID}")][0] == {"epoch": "3", "force": "1"}


def test_the_pod_routes_the_paths_the_client_declares() -> None:
    """One declaration of each path: the pod's router is built from the client's constants."""
    from gateway_app.migration_api import add_routes

    app = web.Application()
    add_routes(app)
    routed = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    assert routed == {
        ("GET", TABLE_PATH),
        ("GET", GUILDS_PATH),
        ("GET", GUILD_PATH),
        ("POST", FREEZE_PATH),
        ("GET", EXPORT_PATH),
        ("POST", IMPORT_PATH),
        ("GET", HELD_PATH),
        ("POST", REPLAY_PATH),
        ("POST", UNFREEZE_PATH),
        ("DELETE", GUILD_PATH),
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({**STATUS, "holding": "yes"}, "holding must be true or false"),
        ({**STATUS, "shard_ready": 1}, "shard_ready must be true or false"),
        ({**STATUS, "epoch": -5}, "epoch must be an integer"),
        ({**STATUS, "epoch": 2**64}, "epoch must be an integer"),
        ({**STATUS, "held": 1.5}, "held must be an integer"),
        ({**STATUS, "rows": {"messages": "10"}}, "rows"),
        ({**STATUS, "rows": []}, "rows must be an object"),
        ({**STATUS, "guild_id": "not-an-id"}, "guild_id"),
        ({k: v for k, v in STATUS.items() if k != "shard_ready"}, "shard_ready"),
        ([STATUS], "must be a JSON object"),
        (None, "must be a JSON object"),
    ],
)
async def test_a_status_of_the_wrong_shape_is_refused_clearly(data: Any, message: str) -> None:
    async with client_of({("GET", GUILD_PATH): answer(data)}) as pod:
        with pytest.raises(PodAnswerInvalid) as refused:
            await pod.status(GID)
    assert message in str(refused.value) and "gateway-1" in str(refused.value)
    assert refused.value.status == 0  # the pod said 200: no HTTP status to blame


@pytest.mark.parametrize(
    ("path", "call", "data", "message"),
    [
        (GUILDS_PATH, "guilds", {"guilds": [str(2**64)], "pod": "p"}, "guilds[0]"),
        (GUILDS_PATH, "guilds", {"guilds": [1, 2], "pod": "p"}, "guilds[0]"),
        (GUILDS_PATH, "guilds", {"guilds": "1,2", "pod": "p"}, "guilds must be a list"),
        (HELD_PATH, "held", {"events": [["k", "not an object"]]}, "events[0]"),
        (HELD_PATH, "held", {"events": [["k", {}, "extra"]]}, "events[0]"),
        (HELD_PATH, "held", {"events": {}}, "events must be a list"),
        (TABLE_PATH, "table_version", {"pod": "p", "version": "7"}, "version must be"),
        (GUILDS_PATH, "guilds", {"guilds": [], "pod": 5}, "pod must be a string"),
    ],
)
async def test_lists_and_versions_of_the_wrong_shape_are_refused(
    path: str, call: str, data: Any, message: str
) -> None:
    async with client_of({("GET", path): answer(data)}) as pod:
        method = getattr(pod, call)
        with pytest.raises(PodAnswerInvalid, match=re.escape(message)):
            await (method(GID) if "{guild_id}" in path else method())


async def test_only_the_informational_pod_name_may_be_missing() -> None:
    async with client_of({("GET", GUILDS_PATH): answer({"guilds": [str(GID)]})}) as pod:
        assert (await pod.guilds()).guilds == (GID,)


async def test_a_200_with_garbage_is_not_json() -> None:
    async def garbage(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b"\x00\xff{not json", content_type="application/json")

    async def deep(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b"[" * 100_000, content_type="application/json")

    for handler in (garbage, deep):
        async with client_of({("GET", GUILD_PATH): handler}) as pod:
            with pytest.raises(PodAnswerInvalid, match="not JSON"):
                await pod.status(GID)
    with pytest.raises(PodAnswerInvalid, match="not JSON"):
        await precopy_track(b"<html>", "gateway-0")
    with pytest.raises(PodAnswerInvalid, match="track must be a string"):
        await precopy_track(b'{"track": 5}', "gateway-0")


async def test_a_huge_answer_is_refused_without_reading_it_all() -> None:
    """Both a declared Content-Length over the cap and a chunked body that runs past it."""
    sent: list[int] = []

    async def declared(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b" " * (SMALL_ANSWER + 1), content_type="application/json")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            for _ in range(10_000):  # 640 MiB if nobody stopped reading
                await response.write(b" " * 65536)
                sent.append(1)
        return response

    for handler in (declared, endless):
        async with client_of({("GET", GUILD_PATH): handler}) as pod:
            with pytest.raises(PodAnswerInvalid, match="over 1048576 bytes"):
                await pod.status(GID)
    assert len(sent) < 1000  # it stopped reading near the cap, not at the end


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (409, PodUnavailable),  # stale epoch, not frozen yet: the coordinator waits
        (421, PodUnavailable),
        (500, PodUnavailable),
        (503, PodUnavailable),
        (400, PodRefused),
        (401, PodRefused),
        (404, PodRefused),
        (422, PodRefused),
    ],
)
async def test_statuses_are_classed_by_what_retrying_does(
    status: int, kind: type[Exception]
) -> None:
    async with client_of(
        {("POST", FREEZE_PATH): answer({"error": "no " + "x" * 5000}, status)}
    ) as pod:
        with pytest.raises(kind) as failed:
            await pod.freeze(GID, 1)
    assert getattr(failed.value, "status", None) == status
    assert str(status) in str(failed.value) and len(str(failed.value)) < 400  # body cut short


async def test_a_redirect_is_refused_not_followed() -> None:
    """The bearer token goes to the registered URL only, never where a pod points."""
    followed: list[str] = []

    async def elsewhere(_: web.Request) -> web.StreamResponse:
        followed.append("yes")
        return web.json_response({"pod": "x", "version": 1})

    async with pod_server({("GET", "/elsewhere"): elsewhere}) as other:

        async def redirect(_: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(f"{other}/elsewhere")

        async with client_of({("GET", TABLE_PATH): redirect}) as pod:
            with pytest.raises(PodRefused) as refused:
                await pod.table_version()
    assert refused.value.status == 302 and not followed


async def test_a_pod_that_is_down_is_unavailable_at_once() -> None:
    port = free_port()  # nothing listens there
    async with aiohttp.ClientSession() as http:
        pod = PodClient(http, f"http://127.0.0.1:{port}", TOKEN, pod="gateway-9", timeout=5)
        started = time.monotonic()
        with pytest.raises(PodUnavailable) as down:
            await pod.guilds()
    assert time.monotonic() - started < 2 and "gateway-9" in str(down.value)
    assert down.value.status == 0


async def test_a_slow_pod_is_unavailable_after_the_timeout() -> None:
    """Slow to answer at all, and slow in the middle of its body: both end at the timeout."""

    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)  # the slow pod: far past the client's timeout
        return web.json_response(STATUS)

    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"guild_id": ')
        await asyncio.sleep(30)  # stalls mid-body, far past the client's timeout
        return response

    for handler in (slow, stalls):
        async with client_of({("GET", GUILD_PATH): handler}, timeout=0.5) as pod:
            started = time.monotonic()
            with pytest.raises(PodUnavailable, match="no answer within 0.5 s"):
                await pod.status(GID)
            assert time.monotonic() - started < 3


def _publisher(url: str) -> TablePublisher:
    """A stand-in publisher whose snapshot names one pod at ``url``."""
    table = RoutingTable([Pod("gateway-1", url=url)])
    return cast(TablePublisher, SimpleNamespace(snapshot=SimpleNamespace(table=table)))


async def test_pod_calls_wait_for_a_pod_that_comes_back() -> None:
    """A migration step's call is retried while the pod is down, and succeeds once it is up."""
    pod = pod_server({("GET", GUILDS_PATH): answer({"pod": "gateway-1", "guilds": []})})
    calls = PodCalls(_publisher(pod.url), TOKEN)
    await calls.start()
    try:
        with pytest.raises(PodUnavailable):  # one-shot questions do not wait
            await calls.call("gateway-1", lambda c: c.guilds(), retry=False)
        waiting = asyncio.create_task(calls.call("gateway-1", lambda c: c.guilds()))
        await asyncio.sleep(0.5)  # the sleep is the test: half a second, and still waiting
        assert not waiting.done()
        await pod.start()
        assert (await asyncio.wait_for(waiting, 10)).guilds == ()
        with pytest.raises(PodUnavailable, match="no URL registered"):
            await calls.call("gateway-7", lambda c: c.guilds(), retry=False)
    finally:
        await calls.close()
        await pod.stop()


async def test_pod_calls_do_not_retry_a_refusal_or_nonsense() -> None:
    async with pod_server(
        {
            ("GET", GUILDS_PATH): answer({"error": "bad token"}, 401),
            ("GET", GUILD_PATH): answer({"holding": "maybe"}),
        }
    ) as url:
        calls = PodCalls(_publisher(url), TOKEN)
        await calls.start()
        try:
            with pytest.raises(PodRefused):
                await asyncio.wait_for(calls.call("gateway-1", lambda c: c.guilds()), 5)
            with pytest.raises(PodAnswerInvalid):
                await asyncio.wait_for(calls.call("gateway-1", lambda c: c.status(GID)), 5)
        finally:
            await calls.close()


async def test_verify_reports_a_slow_pod_and_a_garbage_pod_within_seconds(svc: Any) -> None:
    """Through the config service: a pod that never answers costs the quick timeout and
    is "did not answer"; a 200 of garbage is "answered nonsense"; neither is a 500."""

    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)  # never answers in time
        return web.json_response({"pod": "gateway-2", "guilds": []})

    async def garbage(_: web.Request) -> web.StreamResponse:
        return web.Response(body=b"<html>oops</html>", content_type="application/json")

    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        pod_server({("GET", GUILDS_PATH): slow}) as slow_url,
        pod_server({("GET", GUILDS_PATH): garbage}) as garbage_url,
    ):
        for name, url in (("gateway-2", slow_url), ("gateway-3", garbage_url)):
            async with svc.http.put(
                f"{svc.url}/v1/pods/{name}", json={"url": url}, headers=admin
            ) as r:
                assert r.status == 200, await r.text()
        started = time.monotonic()
        async with svc.http.get(f"{svc.url}/v1/verify", headers=admin) as r:
            assert r.status == 200, await r.text()
            report = await r.json()
        assert time.monotonic() - started < 10
    problems = "\n".join(report["problems"])
    assert not report["clean"]
    assert "pod gateway-2 did not answer" in problems and "no answer within 2 s" in problems
    assert "pod gateway-3 answered nonsense" in problems and "not JSON" in problems
