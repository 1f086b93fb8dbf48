"""The pod renders its own dashboard; the proxy relays it (issue 16).

1. The renderer (gateway_app/dashboard.py): names, settings, token owners and what the
   proxy passes in headers are escaped wherever they land (text, attribute, form).
2. The relay (router_proxy): a stand-in pod answers each way a pod can go wrong; the
   proxy relays a page byte for byte with its own security headers and none of the
   pod's, and answers anything else (not HTML, too big, encoded, slow, down, refused)
   with its own page, a request id and no hang.
3. A real stack: the page through the proxy is the owning pod's; the pod's route wants
   a signed identity for exactly it (absent, forged, for another target, another guild
   or a member without rights: 401/403).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from html import escape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import aiohttp
import psycopg
import pytest
import pytest_asyncio
from aiohttp import web
from conftest import PG_URL, AppServer, eventually
from stack import proxy_before

from gateway_app.dashboard import Viewer, render_dashboard, shown_tokens
from gateway_app.identity import identity_key_from, verify_header
from router_proxy.auth import (
    ADMINISTRATOR,
    MANAGE_GUILD,
    AuthSettings,
    GuildGrant,
    Principal,
    sign_identity,
)
from router_proxy.dashboard import MAX_PAGE_BYTES, SECURITY_HEADERS
from router_proxy.proxy import ProxySettings
from router_proxy.server import RunningProxy

HOSTILE = [
    "<script>window.__pwned=1</script>Evil",
    '</svg><img src=x onerror="window.__pwned=2">',
    "\"quoted' & <b>bold</b>",
    '"><form action="https://evil.example"><input name="csrf',
    "\u202eevil\u202c \u2066isolate",
]
GID = "1180000000000000001"
ROLE, CHANNEL = "1180000000000000002", "1180000000000000003"


class Tags(HTMLParser):
    """Every element and attribute the page really has, as a browser would parse it."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parsed(html: str) -> list[tuple[str, dict[str, str | None]]]:
    p = Tags()
    p.feed(html)
    return p.tags


def hostile_page(name: str, viewer: Viewer | None, reason: str = "ring") -> str:
    return render_dashboard(
        {
            "guild_id": GID,
            "settings": {"moderator_role": ROLE, "mod_log": CHANNEL},
            "names": {"guild": name, "roles": {ROLE: name}, "channels": {CHANNEL: name}},
            "messages_per_day": [{"day": "2024-05-01", "count": 3}],
            "messages": {"total": 3, "authors": 1, "deleted": 0},
            "reports_by_reason": {name: 1},
            "mod_actions_by_type": {name: 2},
        },
        pod="gateway-0",
        reason=reason,
        version=3,
        viewer=viewer,
    )


# -- 1. the renderer ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_csrf_and_token_owners_are_escaped_everywhere(name):
    viewer = Viewer(
        manages=True,
        csrf=name,  # the proxy's header: never trusted to be harmless either
        session_name=name,
        tokens=[
            {
                "id": "tok1",
                "user_name": name,
                "scope": "read",
                "expires_at": time.time() + 3600,
                "revoked_at": None,
            }
        ],
    )
    html = hostile_page(name, viewer, reason=name)
    tags = parsed(html)
    names = [t for t, _ in tags]
    assert "script" not in names and "img" not in names
    assert names.count("form") == 4  # sign out, settings, the token's revoke, new token
    assert names.count("svg") == 1
    assert all(not k.startswith("on") for _, attrs in tags for k in attrs)
    # every form posts to the proxy's own paths, with the csrf value as given
    actions = [a["action"] for t, a in tags if t == "form"]
    assert actions == [
        "/logout",
        f"/guild/{GID}/settings",
        f"/guild/{GID}/tokens/tok1/revoke",
        f"/guild/{GID}/tokens",
    ]
    csrf = {a.get("value") for t, a in tags if t == "input" and a.get("name") == "csrf"}
    assert csrf == {name}  # a value, however odd, stays inside its attribute
    inputs = {a["name"]: a["value"] for t, a in tags if t == "input" and a.get("id")}
    assert inputs == {"moderator_role": ROLE, "mod_log": CHANNEL}
    text = html.replace(f'value="{escape(name)}"', "")  # the csrf value is kept as given
    assert "\u202e" not in text and "\u2066" not in text


def test_a_reader_gets_no_forms_and_an_anonymous_render_no_panel():
    reader = hostile_page("R", Viewer(manages=False, csrf="c", session_name="mo"))
    assert 'id="logout"' in reader and 'id="save"' not in reader and "API tokens" not in reader
    plain = hostile_page("R", None)
    assert "<form" not in plain
    dev = hostile_page("R", Viewer(manages=True))  # --no-auth: manages, no session
    assert 'id="save"' in dev and 'id="logout"' not in dev


def test_the_token_table_stays_small_however_many_tokens_ended():
    now = time.time()
    live = [{"id": f"l{i}", "expires_at": now + 99, "revoked_at": None} for i in range(50)]
    ended = [{"id": f"e{i}", "expires_at": now + 99, "revoked_at": now} for i in range(5000)]
    expired = [{"id": "x", "expires_at": now - 1, "revoked_at": None}]
    shown = shown_tokens(live[:10] + ended + live[10:] + expired, now)
    ids = [t["id"] for t in shown]
    assert [i for i in ids if i.startswith("l")] == [f"l{i}" for i in range(50)]
    assert len(ids) == 100 and ids[-1] == "x" and "e4999" in ids and "e4950" not in ids


# -- 2. the relay, against a stand-in pod --------------------------------------------------------

RELAY = ProxySettings(
    auth=AuthSettings(no_auth=True, rate_limit_anon=1e9, rate_limit_user=1e9),
    internal_token="inside",
    upstream_timeout=1.0,
)
PAGE = (
    '<!doctype html><html><head><meta charset="utf-8"><title>g</title></head>'
    "<body><h1>Guild \u00e9\u6f22 42</h1></body></html>"
).encode()
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StandInPod(AppServer):
    """A pod whose dashboard route answers with ``answer`` (None: it never starts, its
    port stays closed); it records what it was sent."""

    def __init__(self, answer: Answer | None) -> None:
        super().__init__(
            {("GET", "/data/guilds/{guild_id}/dashboard"): self.page}, shutdown_timeout=0.1
        )
        self.answer = answer
        self.seen: list[web.Request] = []

    async def page(self, request: web.Request) -> web.StreamResponse:
        assert self.answer is not None
        self.seen.append(request)
        return await self.answer(request)

    async def start(self) -> str:
        return await super().start() if self.answer is not None else self.url


@contextlib.asynccontextmanager
async def relay(tmp_path, answer: Answer | None) -> AsyncIterator[tuple[RunningProxy, StandInPod]]:
    """A proxy whose only pod is a stand-in (``answer`` None: registered, not running)."""
    pod = StandInPod(answer)
    async with proxy_before(tmp_path, pod, "standin", RELAY) as (proxy, _):
        yield proxy, pod


async def get(proxy: RunningProxy, path: str, **headers: str) -> tuple[int, Any, bytes, float]:
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{proxy.url}{path}", headers=headers, allow_redirects=False) as r,
    ):
        return r.status, r.headers, await r.read(), time.monotonic() - started


def assert_secured(headers: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.getall(name) == [value], name
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none'


def assert_error_page(status: int, headers: Any, body: bytes, expected: int) -> str:
    text = body.decode()
    assert status == expected, text
    assert headers["Content-Type"].startswith("text/html")
    assert "briefly unavailable" in text and int(headers["Retry-After"]) >= 1
    rid = headers["X-Request-Id"]
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid) and rid in text
    assert headers["X-Modbot-Pod"] == "standin"
    assert_secured(headers)
    return text


async def test_the_pods_page_is_relayed_byte_for_byte_with_the_proxys_headers_only(tmp_path):
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=PAGE,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Set-Cookie": "modbot_session=planted; Path=/",
                "X-Frame-Options": "ALLOWALL",
                "Content-Security-Policy": "script-src *",
                "Access-Control-Allow-Origin": "*",
                "Location": "https://evil.example/",
            },
        )

    async with relay(tmp_path, answer) as (proxy, pod):
        status, headers, body, _ = await get(
            proxy,
            "/guild/42/dashboard?x=1",
            **{
                "X-Modbot-Route": "forged",
                "X-Modbot-Csrf": "forged",
                "X-Modbot-Identity": "forged",
                "Cookie": "modbot_session=whatever",
                "X-Request-Id": "trace-1",
            },
        )
        assert status == 200 and body == PAGE
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert_secured(headers)
        for leaked in ("Set-Cookie", "Access-Control-Allow-Origin", "Location"):
            assert leaked not in headers
        assert headers["X-Modbot-Pod"] == "standin" and headers["X-Request-Id"] == "trace-1"
        (seen,) = pod.seen
        # what the pod got: the proxy's token, an identity for exactly this route, the
        # route the proxy took; nothing the client sent under the proxy's names
        assert seen.path == "/data/guilds/42/dashboard" and not seen.query_string
        assert seen.headers["Authorization"] == "Bearer inside"
        key = identity_key_from("", "inside")
        who = verify_header(
            key, seen.headers["X-Modbot-Identity"], "GET", "/data/guilds/42/dashboard"
        )
        assert who["k"] == "dev"
        assert seen.headers["X-Modbot-Route"] in ("ring", "shard", "pin")
        assert int(seen.headers["X-Modbot-Table-Version"]) >= 1
        assert "X-Modbot-Csrf" not in seen.headers and "Cookie" not in seen.headers
        assert seen.headers["X-Request-Id"] == "trace-1"


def _not_a_page(kind: str) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        if kind == "json":
            return web.json_response({"settings": "<script>x</script>"})
        if kind == "latin-1":
            return web.Response(body=b"<p>\xe9</p>", content_type="text/html", charset="latin-1")
        if kind == "gzip":
            return web.Response(
                body=b"\x1f\x8b\x08", content_type="text/html", headers={"Content-Encoding": "gzip"}
            )
        if kind == "huge-length":
            return web.Response(body=b"a" * (MAX_PAGE_BYTES + 1), content_type="text/html")
        # huge, chunked: the size is only known by counting
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"<p>" + b"b" * 65536
        for _ in range(MAX_PAGE_BYTES // len(chunk) + 8):
            await response.write(chunk)
        await response.write_eof()
        return response

    return answer


@pytest.mark.parametrize("kind", ["json", "latin-1", "gzip", "huge-length", "huge-chunked"])
async def test_an_answer_that_is_not_a_page_is_not_relayed(tmp_path, kind):
    async with relay(tmp_path, _not_a_page(kind)) as (proxy, _):
        status, headers, body, took = await get(proxy, "/guild/42/dashboard")
        text = assert_error_page(status, headers, body, 502)
        assert "<script>x" not in text and "bbbb" not in text and len(body) < 4096
        assert took < 5
        # a pod that answered is up: its breaker stays closed, the next page is asked for
        status, *_ = await get(proxy, "/guild/42/dashboard")
        assert status == 502


async def test_the_pods_refusal_becomes_the_proxys_403_page(tmp_path):
    replies = [
        web.json_response({"error": "<script>alert(1)</script>needs its role"}, status=403),
        web.Response(status=401, body=b"\x00not json at all" * 9000),
        web.json_response(["error"], status=401),
    ]

    async def answer(_: web.Request) -> web.StreamResponse:
        return replies.pop(0)

    async with relay(tmp_path, answer) as (proxy, _):
        status, _h, body, _t = await get(proxy, "/guild/42/dashboard")
        text = body.decode()
        assert status == 403 and "You cannot open guild 42" in text
        assert_secured(_h)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;needs its role" in text
        assert "<script>" not in text
        for _ in range(2):
            status, _h, body, _t = await get(proxy, "/guild/42/dashboard")
            assert status == 403 and "the pod answered 401" in body.decode()


@pytest.mark.parametrize("kind", ["500", "421", "slow", "stalls-mid-page"])
async def test_a_pod_that_fails_slows_or_stalls_gives_a_503_page_in_bounded_time(tmp_path, kind):
    async def answer(request: web.Request) -> web.StreamResponse:
        if kind == "500":
            return web.json_response({"error": "boom"}, status=500)
        if kind == "421":
            return web.json_response({"error": "not mine", "owner": "x"}, status=421)
        if kind == "slow":
            await asyncio.sleep(30)  # far past the proxy's upstream timeout
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        response.content_length = 10_000
        await response.prepare(request)
        await response.write(b"<p>half")
        await asyncio.sleep(30)  # stalls mid-page, far past the upstream timeout
        return response

    async with relay(tmp_path, answer) as (proxy, _):
        status, headers, body, took = await get(
            proxy, "/guild/42/dashboard", **{"X-Request-Id": f"rid-{kind}"}
        )
        text = assert_error_page(status, headers, body, 503)
        assert headers["X-Request-Id"] == f"rid-{kind}"
        assert "half" not in text
        # one retry of a body-less request at most: 2 x upstream_timeout (1 s) and slack
        assert took < 4.5, took
        if kind == "421":
            assert "just moved" in text


async def test_a_pod_that_is_down_gives_a_503_page_at_once(tmp_path):
    async with relay(tmp_path, None) as (proxy, _):
        status, headers, body, took = await get(proxy, "/guild/42/dashboard")
        text = assert_error_page(status, headers, body, 503)
        assert "did not answer" in text and took < 3


# -- 3. a real stack: the owning pod renders, its route checks who asks ---------------------------

pytestmark_stack = pytest.mark.asyncio(loop_scope="module")
VIEW = (1 << 10) | (1 << 11)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):
    from stack import running_stack

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        async with running_stack(
            tmp_path_factory.mktemp("pod-dashboard"),
            PG_URL,
            schema,
            pods=2,
            guilds=4,
            shard_count=4,
        ) as s:
            yield s
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def as_user(
    gid: int, path: str, perms: int, roles: tuple[str, ...] = (), key: bytes | None = None
) -> dict[str, str]:
    from stack import INTERNAL

    who = Principal("4242", "someone", "session", {str(gid): GuildGrant(perms, roles)})
    signed = sign_identity(key or identity_key_from("", INTERNAL), who, str(gid), "GET", path)
    return {"Authorization": f"Bearer {INTERNAL}", "X-Modbot-Identity": signed}


@pytestmark_stack
async def test_the_dashboard_through_the_proxy_is_the_owning_pods_page(stack):
    gid = next(iter(stack.world.guilds))
    await stack.send_messages([gid], 7)
    table = stack.proxy.tables.table
    route = table.route(gid)

    async def page() -> tuple[Any, str] | None:
        async with stack.http.get(
            f"{stack.proxy.url}/guild/{gid}/dashboard",
            headers={"X-Modbot-Route": "<b>forged</b>", "X-Modbot-Csrf": "forged-csrf"},
        ) as r:
            text = await r.text()
            return (r.headers, text) if r.status == 200 and "7 messages" in text else None

    headers, text = await eventually(page, timeout=15, interval=0.1)  # the messages show
    assert headers["X-Modbot-Pod"] == route.pod
    assert_secured(headers)
    line = f"served by <b>{route.pod}</b> ({route.reason.value}), routing table v{table.version}"
    assert line in text
    assert "forged" not in text  # the client's X-Modbot-* never reach the pod
    assert 'id="save"' in text and 'id="logout"' not in text  # --no-auth: the developer
    # the pod serves the same page itself, to the proxy's credentials only
    path = f"/data/guilds/{gid}/dashboard"
    owner = stack.pods[route.pod]
    async with stack.http.get(
        f"{owner.url}{path}", headers=stack.pod_headers("GET", path, gid)
    ) as r:
        assert r.status == 200 and r.content_type == "text/html" and r.charset == "utf-8"
        own = await r.text()
        assert "7 messages" in own and f"<b>{route.pod}</b>" in own
        assert r.headers["Cache-Control"] == "no-store"
    other = next(p for name, p in stack.pods.items() if name != route.pod)
    async with stack.http.get(
        f"{other.url}{path}", headers=stack.pod_headers("GET", path, gid)
    ) as r:
        assert r.status == 421 and (await r.json())["owner"] == route.pod


@pytestmark_stack
async def test_the_pods_page_wants_a_signed_identity_for_exactly_it(stack):
    from stack import INTERNAL, MIGRATION

    gid, other_gid = list(stack.world.guilds)[:2]
    owner = stack.pods[stack.proxy.tables.table.owner(gid)]
    path = f"/data/guilds/{gid}/dashboard"
    url = f"{owner.url}{path}"
    dev_json = stack.pod_headers("GET", f"/data/guilds/{gid}", gid)  # the JSON route's
    cases = {
        "no identity": ({"Authorization": f"Bearer {INTERNAL}"}, 401),
        "no token": (
            {"X-Modbot-Identity": as_user(gid, path, MANAGE_GUILD)["X-Modbot-Identity"]},
            401,
        ),
        "migration token": (
            {**as_user(gid, path, MANAGE_GUILD), "Authorization": f"Bearer {MIGRATION}"},
            403,
        ),
        "forged": (as_user(gid, path, ADMINISTRATOR, key=b"k" * 32), 401),
        "another target": (dev_json, 401),
        "another guild": (as_user(other_gid, path, ADMINISTRATOR), 401),
        "a member": (as_user(gid, path, VIEW), 403),
        "garbage": ({"Authorization": f"Bearer {INTERNAL}", "X-Modbot-Identity": "v1.<x>.y"}, 401),
    }
    for name, (headers, status) in cases.items():
        async with stack.http.get(url, headers=headers) as r:
            body = await r.json()
            assert r.status == status, (name, r.status, body)
            assert "error" in body and "Guild" not in json.dumps(body)
    async with stack.http.get(url, headers=as_user(gid, path, MANAGE_GUILD)) as r:
        assert r.status == 200  # the control: the same request, rightly signed


@pytestmark_stack
async def test_a_session_gets_its_forms_escaped_and_a_moderator_reads_without_them(stack):
    gid = list(stack.world.guilds)[2]
    owner = stack.pods[stack.proxy.tables.table.owner(gid)]
    settings = f"/api/guilds/{gid}/settings"
    async with stack.http.put(
        f"{owner.url}{settings}",
        json={"moderator_role": "777", "mod_log": "778"},
        headers=stack.pod_headers("PUT", settings, gid),
    ) as r:
        assert r.status == 200, await r.text()
    tokens = f"/data/guilds/{gid}/tokens"
    record = {
        "id": "tokhostile1",
        "hash": "h",
        "user_id": "0",
        "user_name": HOSTILE[0],
        "scope": "read",
        "permissions": ADMINISTRATOR,
        "roles": [],
        "created_at": time.time(),
        "expires_at": time.time() + 3600,
    }
    async with stack.http.post(
        f"{owner.url}{tokens}", json=record, headers=stack.pod_headers("POST", tokens, gid)
    ) as r:
        assert r.status == 201, await r.text()
    path = f"/data/guilds/{gid}/dashboard"
    page = {
        "X-Modbot-Csrf": 'c"sr<f>',
        "X-Modbot-User-Name": quote(HOSTILE[1] + " \u00e9", safe=""),
        "X-Modbot-Route": "<i>ring</i>",
    }
    async with stack.http.get(
        f"{owner.url}{path}", headers={**as_user(gid, path, MANAGE_GUILD), **page}
    ) as r:
        text = await r.text()
        assert r.status == 200, text
    tags = parsed(text)
    assert not [t for t, _ in tags if t in ("script", "img", "i")]
    assert {a["value"] for t, a in tags if t == "input" and a.get("name") == "csrf"} == {'c"sr<f>'}
    assert "&lt;/svg&gt;&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt; \u00e9" in text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;Evil" in text  # the token's owner
    assert 'value="777"' in text and "tokhostile1" in text
    async with stack.http.get(
        f"{owner.url}{path}", headers={**as_user(gid, path, VIEW, ("777",)), **page}
    ) as r:
        text = await r.text()
        assert r.status == 200, text
        assert 'id="logout"' in text and 'id="save"' not in text and "tokhostile1" not in text


@pytestmark_stack
async def test_a_killed_owner_gives_the_proxys_503_page_with_a_request_id(stack):
    gid = list(stack.world.guilds)[3]
    name = stack.proxy.tables.table.owner(gid)
    stack.pods[name].kill()  # the last test of the module's stack
    started = time.monotonic()
    async with stack.http.get(
        f"{stack.proxy.url}/guild/{gid}/dashboard", headers={"X-Request-Id": "killed-1"}
    ) as r:
        text = await r.text()
        assert r.status == 503 and "briefly unavailable" in text, text
        assert "killed-1" in text and r.headers["X-Request-Id"] == "killed-1"
        assert r.headers["X-Modbot-Pod"] == name and name in text
        assert_secured(r.headers)
    assert time.monotonic() - started < 5
