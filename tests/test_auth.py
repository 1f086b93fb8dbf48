"""Sign-in and authorization, end to end: the simulator's OAuth2, the proxy's sessions,
the pods' re-check. Every row of issue 13's acceptance matrix is a test here."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import psycopg
import pytest
import pytest_asyncio
from conftest import PG_URL, free_port
from stack import INTERNAL, running_stack

from router_proxy.auth import (
    ADMINISTRATOR,
    COOKIE,
    MANAGE_GUILD,
    AuthSettings,
    GuildGrant,
    KeyRing,
    Sessions,
)

KEYS = "new-session-key-for-tests-0001,old-session-key-for-tests-0002"
VIEW = (1 << 10) | (1 << 11)
MOD_ROLE = "777000000000000001"
CLIENT_SECRET = "sim-client-secret"


def auth_settings(sim_url: str, port: int, **kw: Any) -> AuthSettings:
    return AuthSettings(
        discord_client_id="900000000000000001",
        discord_client_secret=CLIENT_SECRET,
        oauth_redirect_url=f"http://127.0.0.1:{port}/oauth/callback",
        discord_oauth_url=f"{sim_url}/oauth2/authorize",
        session_keys=KEYS,
        rate_limit_anon=kw.pop("rate_limit_anon", 0),
        rate_limit_user=kw.pop("rate_limit_user", 0),
        **kw,
    )


@dataclass
class AuthStack:
    stack: Any
    guild: int
    other: int
    users: dict[str, str]

    @property
    def proxy(self) -> str:
        return str(self.stack.proxy.url)


async def add_user(stack: Any, name: str, guilds: dict[int, dict[str, Any]]) -> str:
    body = {"username": name, "guilds": {str(g): v for g, v in guilds.items()}}
    async with stack.http.post(f"{stack.sim.url}/control/oauth/users", json=body) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["id"])


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def auth_stack(tmp_path_factory):
    """One stack for the module (pods are processes: starting them is the slow part)."""
    port = free_port()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    tmp = tmp_path_factory.mktemp("auth")
    try:
        async with running_stack(
            tmp, PG_URL, schema, pods=2, guilds=4, shard_count=4, proxy_port=port
        ) as stack:
            fresh = auth_settings(stack.sim.url, port)
            proxy = stack.proxy.proxy
            proxy.settings.auth = fresh
            proxy.gate.__init__(proxy, fresh)  # same object the routes hold, now configured
            guild, other = list(stack.world.guilds)[:2]
            users = {
                "member": await add_user(stack, "member", {guild: {"permissions": VIEW}}),
                "moderator": await add_user(
                    stack, "moderator", {guild: {"permissions": VIEW, "roles": [MOD_ROLE]}}
                ),
                "manager": await add_user(
                    stack,
                    "manager",
                    {guild: {"permissions": VIEW | MANAGE_GUILD}, other: {"permissions": VIEW}},
                ),
                "admin": await add_user(stack, "admin", {guild: {"permissions": ADMINISTRATOR}}),
            }
            yield AuthStack(stack, guild, other, users)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def sign_in(a: AuthStack, http: aiohttp.ClientSession, who: str, guild: int) -> None:
    """The whole authorization-code flow, as a browser would follow it."""
    async with http.get(
        f"{a.proxy}/login?next=/guild/{guild}/dashboard", allow_redirects=False
    ) as r:
        assert r.status == 302, await r.text()
        authorize = r.headers["Location"]
    q = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    assert q["scope"] == "identify guilds guilds.members.read"
    assert q["code_challenge_method"] == "S256" and q["state"]
    async with http.get(authorize) as r:  # the consent page renders
        assert r.status == 200 and 'id="authorize"' in await r.text()
    form = {**q, "user_id": a.users[who], "action": "authorize"}
    async with http.post(
        f"{a.stack.sim.url}/oauth2/authorize", data=form, allow_redirects=False
    ) as r:
        assert r.status == 302
        callback = r.headers["Location"]
    async with http.get(callback, allow_redirects=False) as r:
        assert r.status == 302, await r.text()
        assert r.headers["Location"] == f"/guild/{guild}/dashboard"
        assert "HttpOnly" in r.headers.getall("Set-Cookie")[0] or any(
            "httponly" in h.lower() for h in r.headers.getall("Set-Cookie")
        )


async def csrf_of(a: AuthStack, http: aiohttp.ClientSession, guild: int) -> str:
    async with http.get(f"{a.proxy}/guild/{guild}/dashboard") as r:
        assert r.status == 200, await r.text()
        m = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        assert m is not None
        return m.group(1)


# -- the login flow ------------------------------------------------------------------------------


async def test_sign_in_sets_a_signed_httponly_lax_cookie_and_no_discord_token(auth_stack):
    a = auth_stack
    async with client() as http:
        await sign_in(a, http, "manager", a.guild)
        cookies = {c.key: c for c in http.cookie_jar}
        session = cookies[COOKIE]
        assert session["httponly"] and session["samesite"] == "Lax"
        assert not session["secure"]  # http on loopback: local development
        oauth = a.stack.sim.sim.oauth
        for token in oauth.tokens:
            assert token not in session.value  # the Discord token never reaches the browser
        async with http.get(f"{a.proxy}/guild/{a.guild}/dashboard") as r:
            text = await r.text()
            assert r.status == 200 and 'id="save"' in text and 'id="logout"' in text


async def test_callback_with_a_wrong_state_or_no_flow_cookie_is_refused(auth_stack):
    a = auth_stack
    async with client() as http:
        async with http.get(f"{a.proxy}/login", allow_redirects=False) as r:
            authorize = r.headers["Location"]
        q = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
        form = {**q, "user_id": a.users["admin"], "action": "authorize"}
        async with http.post(
            f"{a.stack.sim.url}/oauth2/authorize", data=form, allow_redirects=False
        ) as r:
            callback = r.headers["Location"]
        tampered = callback.replace(f"state={q['state']}", "state=forged")
        async with http.get(tampered, allow_redirects=False) as r:
            assert r.status == 400
    async with client() as stranger, stranger.get(callback, allow_redirects=False) as r:
        assert r.status == 400  # login CSRF: a code delivered to someone else's browser


async def test_cancel_on_the_consent_page_signs_nobody_in(auth_stack):
    a = auth_stack
    async with client() as http:
        async with http.get(f"{a.proxy}/login", allow_redirects=False) as r:
            q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
        form = {**q, "user_id": a.users["admin"], "action": "cancel"}
        async with http.post(f"{a.stack.sim.url}/oauth2/authorize", data=form) as r:
            assert r.status == 401
        assert COOKIE not in {c.key for c in http.cookie_jar}


async def test_a_code_is_single_use_and_needs_the_pkce_verifier(auth_stack):
    a = auth_stack
    sim = a.stack.sim.url
    async with client() as http:
        async with http.get(f"{a.proxy}/login", allow_redirects=False) as r:
            q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
        form = {**q, "user_id": a.users["admin"], "action": "authorize"}
        async with http.post(f"{sim}/oauth2/authorize", data=form, allow_redirects=False) as r:
            code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
        token_form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": q["redirect_uri"],
            "code_verifier": "not-the-verifier",
            "client_id": q["client_id"],
            "client_secret": CLIENT_SECRET,
        }
        async with http.post(f"{sim}/api/oauth2/token", data=token_form) as r:
            assert r.status == 400 and (await r.json())["error"] == "invalid_grant"
        async with http.post(f"{sim}/api/oauth2/token", data=token_form) as r:
            assert r.status == 400  # used up, even by a failed attempt
        bad_client = {**token_form, "client_secret": "wrong"}
        async with http.post(f"{sim}/api/oauth2/token", data=bad_client) as r:
            assert r.status == 401 and (await r.json())["error"] == "invalid_client"


async def test_logout_clears_the_session_and_needs_csrf(auth_stack):
    a = auth_stack
    async with client() as http:
        await sign_in(a, http, "admin", a.guild)
        csrf = await csrf_of(a, http, a.guild)
        async with http.post(f"{a.proxy}/logout", data={"csrf": "wrong"}) as r:
            assert r.status == 403
        headers = {"Origin": a.proxy}
        async with http.post(f"{a.proxy}/logout", data={"csrf": csrf}, headers=headers) as r:
            assert r.status == 200
        async with http.get(f"{a.proxy}/guild/{a.guild}/dashboard", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"].startswith("/login")


# -- dashboard matrix ----------------------------------------------------------------------------


async def set_moderator_role(a: AuthStack) -> None:
    async with client() as http:
        await sign_in(a, http, "manager", a.guild)
        csrf = await csrf_of(a, http, a.guild)
        form = {"csrf": csrf, "moderator_role": MOD_ROLE, "mod_log": "5"}
        async with http.post(
            f"{a.proxy}/guild/{a.guild}/settings",
            data=form,
            headers={"Origin": a.proxy},
            allow_redirects=False,
        ) as r:
            assert r.status == 303, await r.text()


@pytest.mark.parametrize(
    ("who", "status"),
    [("member", 403), ("moderator", 200), ("manager", 200), ("admin", 200)],
)
async def test_dashboard_read(auth_stack, who, status):
    a = auth_stack
    await set_moderator_role(a)
    async with client() as http:
        await sign_in(a, http, who, a.guild)
        async with http.get(f"{a.proxy}/guild/{a.guild}/dashboard") as r:
            text = await r.text()
            assert r.status == status, text
            # only managers get the forms
            assert ('id="save"' in text) == (who in ("manager", "admin"))


async def test_dashboard_anonymous_is_sent_to_login(auth_stack):
    a = auth_stack
    async with (
        client() as http,
        http.get(f"{a.proxy}/guild/{a.guild}/dashboard", allow_redirects=False) as r,
    ):
        assert r.status == 302
        assert r.headers["Location"] == f"/login?next=/guild/{a.guild}/dashboard"


async def test_dashboard_cross_guild_is_refused(auth_stack):
    a = auth_stack  # the manager manages guild, is a plain member of other
    async with client() as http:
        await sign_in(a, http, "manager", a.guild)
        async with http.get(f"{a.proxy}/guild/{a.other}/dashboard") as r:
            assert r.status == 403
        third = list(a.stack.world.guilds)[2]
        async with http.get(f"{a.proxy}/guild/{third}/dashboard") as r:
            assert r.status == 403


# -- cookies -------------------------------------------------------------------------------------


def forged_cookies(a: AuthStack) -> dict[str, str]:
    uid = a.users["member"]
    grants = {str(a.guild): GuildGrant(ADMINISTRATOR)}
    good = Sessions(KeyRing.parse(KEYS)).issue(uid, "member", grants)
    head, _, mac = good.rpartition(".")
    version, kid, body = head.split(".")
    other_key = Sessions(KeyRing.parse("an-attackers-own-key-00000000")).issue(uid, "m", grants)
    expired = Sessions(KeyRing.parse(KEYS), ttl=10).issue(
        uid, "member", grants, now=time.time() - 3600
    )
    tampered_body = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    return {
        "other key": other_key,
        "expired": expired,
        "tampered payload": f"{version}.{kid}.{tampered_body}.{mac}",
        "no mac": head,
        "garbage": "v1.x.y.z",
    }


async def test_forged_expired_and_tampered_cookies_are_refused(auth_stack):
    a = auth_stack
    for name, value in forged_cookies(a).items():
        async with (
            aiohttp.ClientSession(cookies={COOKIE: value}) as http,
            http.get(f"{a.proxy}/guild/{a.guild}/dashboard", allow_redirects=False) as r,
        ):
            assert r.status == 302, name  # back to sign-in, never in


async def test_a_cookie_signed_with_the_second_key_still_works(auth_stack):
    a = auth_stack
    old_only = "old-session-key-for-tests-0002"
    cookie = Sessions(KeyRing.parse(old_only)).issue(
        a.users["admin"], "admin", {str(a.guild): GuildGrant(ADMINISTRATOR)}
    )
    async with (
        aiohttp.ClientSession(cookies={COOKIE: cookie}) as http,
        http.get(f"{a.proxy}/guild/{a.guild}/dashboard") as r,
    ):
        assert r.status == 200


async def test_settings_form_without_csrf_or_cross_site_is_refused(auth_stack):
    a = auth_stack
    async with client() as http:
        await sign_in(a, http, "admin", a.guild)
        csrf = await csrf_of(a, http, a.guild)
        url = f"{a.proxy}/guild/{a.guild}/settings"
        form = {"moderator_role": "1", "mod_log": "2"}
        async with http.post(url, data=form, headers={"Origin": a.proxy}) as r:
            assert r.status == 403  # no token
        async with http.post(
            url, data={**form, "csrf": csrf}, headers={"Origin": "https://evil.example"}
        ) as r:
            assert r.status == 403  # right token, wrong origin
        async with http.post(
            url, data={**form, "csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}
        ) as r:
            assert r.status == 403


async def test_the_pod_refuses_a_forged_or_replayed_identity(auth_stack):
    a = auth_stack
    stack = a.stack
    table = stack.proxy.tables.table
    pod = stack.pods[table.owner(a.guild)]
    path = f"/api/guilds/{a.guild}/settings"
    bearer = {"Authorization": f"Bearer {INTERNAL}"}
    async with stack.http.get(f"{pod.url}{path}", headers=bearer) as r:
        assert r.status == 401  # no identity at all
    from router_proxy.auth import Principal, sign_identity

    admin = Principal("1", "x", "session", {str(a.guild): GuildGrant(ADMINISTRATOR)})
    forged = sign_identity(b"k" * 32, admin, str(a.guild), "GET", path)
    async with stack.http.get(
        f"{pod.url}{path}", headers={**bearer, "X-Modbot-Identity": forged}
    ) as r:
        assert r.status == 401
    real = stack.pod_headers("GET", f"/api/guilds/{a.guild}/stats", a.guild)
    async with stack.http.put(f"{pod.url}{path}", headers=real, json={"mod_log": "1"}) as r:
        assert r.status == 401  # signed for another method and path


# -- API matrix (the fast path) ------------------------------------------------------------------

ROLES = ["anonymous", "member", "moderator", "manager", "admin"]


async def signed_in(a: AuthStack, who: str) -> aiohttp.ClientSession:
    http = client()
    if who != "anonymous":
        await sign_in(a, http, who, a.guild)
    return http


async def csrf_or_none(a: AuthStack, http: aiohttp.ClientSession) -> str:
    async with http.get(f"{a.proxy}/me") as r:
        m = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        return m.group(1) if m else ""


@pytest.mark.parametrize(
    ("who", "status"),
    [("anonymous", 401), ("member", 403), ("moderator", 200), ("manager", 200), ("admin", 200)],
)
async def test_api_read(auth_stack, who, status):
    a = auth_stack
    await set_moderator_role(a)
    async with (
        await signed_in(a, who) as http,
        http.get(f"{a.proxy}/api/guilds/{a.guild}/settings") as r,
    ):
        body = await r.json()
        assert r.status == status, body
        assert ("error" in body) == (status != 200)


@pytest.mark.parametrize(
    ("who", "status"),
    [("anonymous", 401), ("member", 403), ("moderator", 403), ("manager", 200), ("admin", 200)],
)
async def test_api_write(auth_stack, who, status):
    a = auth_stack
    await set_moderator_role(a)
    async with await signed_in(a, who) as http:
        csrf = await csrf_or_none(a, http)
        headers = {"Origin": a.proxy, "X-CSRF-Token": csrf}
        async with http.put(
            f"{a.proxy}/api/guilds/{a.guild}/settings",
            json={"moderator_role": MOD_ROLE, "mod_log": "6"},
            headers=headers,
        ) as r:
            assert r.status == status, await r.text()


async def new_token(a: AuthStack, http: aiohttp.ClientSession, guild: int, scope: str) -> Any:
    """(status, token or None) from the dashboard's token form."""
    csrf = await csrf_or_none(a, http)
    async with http.post(
        f"{a.proxy}/guild/{guild}/tokens",
        data={"csrf": csrf, "scope": scope},
        headers={"Origin": a.proxy},
        allow_redirects=False,
    ) as r:
        m = re.search(r'<code id="token">([^<]+)</code>', await r.text())
        return r.status, (m.group(1) if m else None)


@pytest.mark.parametrize(
    ("who", "status"),
    [("anonymous", 401), ("member", 403), ("moderator", 403), ("manager", 200), ("admin", 200)],
)
async def test_token_api_write(auth_stack, who, status):
    a = auth_stack
    await set_moderator_role(a)
    async with await signed_in(a, who) as http:
        made, token = await new_token(a, http, a.guild, "write")
    if token is None:  # members and moderators cannot make one; anonymous has none
        assert made in (302, 403)
        token = "mbt.forged.token.value"
    async with (
        aiohttp.ClientSession() as script,
        script.put(
            f"{a.proxy}/api/guilds/{a.guild}/settings",
            json={"moderator_role": MOD_ROLE, "mod_log": "7"},
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        assert r.status == (status if made == 200 else 401), await r.text()


async def test_api_cross_guild_is_refused_for_cookies_and_tokens(auth_stack):
    a = auth_stack
    async with await signed_in(a, "manager") as http:
        async with http.get(f"{a.proxy}/api/guilds/{a.other}/settings") as r:
            assert r.status == 403
        _, token = await new_token(a, http, a.guild, "write")
    async with (
        aiohttp.ClientSession() as script,
        script.get(
            f"{a.proxy}/api/guilds/{a.other}/stats", headers={"Authorization": f"Bearer {token}"}
        ) as r,
    ):
        assert r.status == 403


async def test_api_write_with_a_cookie_needs_csrf_and_same_origin(auth_stack):
    a = auth_stack
    url = f"{a.proxy}/api/guilds/{a.guild}/settings"
    async with await signed_in(a, "admin") as http:
        csrf = await csrf_or_none(a, http)
        for headers in (
            {"Origin": a.proxy},  # no token
            {"Origin": a.proxy, "X-CSRF-Token": "forged"},
            {"Origin": "https://evil.example", "X-CSRF-Token": csrf},
            {"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": csrf},
            {"X-CSRF-Token": csrf},  # no Origin at all: not a browser we can vouch for
        ):
            async with http.put(url, json={"mod_log": "8"}, headers=headers) as r:
                assert r.status == 403, headers


async def test_read_tokens_cannot_write_and_revoked_tokens_stop_at_once(auth_stack):
    a = auth_stack
    url = f"{a.proxy}/api/guilds/{a.guild}/settings"
    async with await signed_in(a, "manager") as http:
        _, read = await new_token(a, http, a.guild, "read")
        _, write = await new_token(a, http, a.guild, "write")
        async with aiohttp.ClientSession() as script:
            auth = {"Authorization": f"Bearer {read}"}
            async with script.get(url, headers=auth) as r:
                assert r.status == 200
            async with script.put(url, json={"mod_log": "9"}, headers=auth) as r:
                assert r.status == 403
        tid = write.split(".")[2]
        from router_proxy.auth import b64d

        token_id = __import__("json").loads(b64d(tid))["t"]
        csrf = await csrf_or_none(a, http)
        async with http.post(
            f"{a.proxy}/guild/{a.guild}/tokens/{token_id}/revoke",
            data={"csrf": csrf},
            headers={"Origin": a.proxy},
            allow_redirects=False,
        ) as r:
            assert r.status == 303, await r.text()
    async with (
        aiohttp.ClientSession() as script,
        script.put(url, json={"mod_log": "9"}, headers={"Authorization": f"Bearer {write}"}) as r,
    ):
        assert r.status == 401 and "revoked" in (await r.json())["error"]


async def test_an_identity_header_from_a_client_is_ignored(auth_stack):
    a = auth_stack
    from router_proxy.auth import Principal, identity_key_from, sign_identity

    # even one signed with the real key (a leaked header) is stripped at the edge
    key = identity_key_from("", INTERNAL)
    admin = Principal(a.users["admin"], "admin", "session", {str(a.guild): GuildGrant(8)})
    path = f"/api/guilds/{a.guild}/settings"
    forged = {"X-Modbot-Identity": sign_identity(key, admin, str(a.guild), "GET", path)}
    async with aiohttp.ClientSession() as http, http.get(f"{a.proxy}{path}", headers=forged) as r:
        assert r.status == 401
    async with (
        await signed_in(a, "member") as http,
        http.get(f"{a.proxy}{path}", headers=forged) as r,
    ):
        assert r.status == 403  # the member's own identity, not the forged admin one


async def test_rate_limits_answer_429_with_retry_after(auth_stack):
    from router_proxy.ratelimit import RateLimiter

    a = auth_stack
    gate = a.stack.proxy.proxy.gate
    saved = gate.anon, gate.user
    gate.anon, gate.user = RateLimiter(0.5, 2), RateLimiter(0.5, 2)
    try:
        async with aiohttp.ClientSession() as http:  # anonymous: per client IP
            statuses = []
            for _ in range(4):
                async with http.get(f"{a.proxy}/login", allow_redirects=False) as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert int(r.headers["Retry-After"]) >= 1
            assert statuses[:2] == [302, 302] and statuses[-1] == 429
        gate.anon = RateLimiter(0, 1)
        async with await signed_in(a, "admin") as http:  # signed in: per user
            gate.user = RateLimiter(0.5, 2)
            got = []
            for _ in range(4):
                async with http.get(f"{a.proxy}/api/guilds/{a.guild}/stats") as r:
                    got.append(r.status)
                    if r.status == 429:
                        assert int(r.headers["Retry-After"]) >= 1
            assert got[:2] == [200, 200] and got[-1] == 429
    finally:
        gate.anon, gate.user = saved


async def test_sim_cli_manages_sign_in_users(auth_stack):
    import asyncio
    import sys
    from pathlib import Path

    cli = str(Path(sys.executable).parent / "modbot-ring")
    sim = a = auth_stack.stack.sim.url
    proc = await asyncio.create_subprocess_exec(
        cli, "sim", "user", "carol", "--guild", f"{auth_stack.guild}:32", "--sim-url", sim,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and b"carol" in out
    proc = await asyncio.create_subprocess_exec(
        cli, "sim", "user", "dave", "--guild", "nonsense", "--sim-url", a,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode != 0 and len(err.decode().strip().splitlines()) == 1


async def test_discord_unreachable_during_sign_in_gives_503_and_no_session(auth_stack):
    a = auth_stack
    gate = a.stack.proxy.proxy.gate
    async with client() as http:
        async with http.get(f"{a.proxy}/login", allow_redirects=False) as r:
            q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
        form = {**q, "user_id": a.users["admin"], "action": "authorize"}
        async with http.post(
            f"{a.stack.sim.url}/oauth2/authorize", data=form, allow_redirects=False
        ) as r:
            callback = r.headers["Location"]
        saved = gate.api_url
        gate.api_url = f"http://127.0.0.1:{free_port()}/api/v10"  # nothing listens there
        try:
            async with http.get(callback, allow_redirects=False) as r:
                assert r.status == 503 and "did not answer" in await r.text()
        finally:
            gate.api_url = saved
        assert COOKIE not in {c.key for c in http.cookie_jar}


async def test_open_redirects_are_refused(auth_stack):
    a = auth_stack
    async with client() as http:
        for bad in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
            async with http.get(
                f"{a.proxy}/login", params={"next": bad}, allow_redirects=False
            ) as r:
                assert r.status == 302
            flow = next(c.value for c in http.cookie_jar if c.key == "modbot_login")
            from router_proxy.auth import b64d

            assert __import__("json").loads(b64d(flow.split(".")[2]))["n"] == "/me"


async def test_head_requests_take_the_aiohttp_path_with_the_same_rules(auth_stack):
    a = auth_stack
    url = f"{a.proxy}/api/guilds/{a.guild}/settings?probe=1"
    async with aiohttp.ClientSession() as http, http.head(url) as r:
        assert r.status == 401
    async with await signed_in(a, "manager") as http, http.head(url) as r:
        assert r.status in (200, 404)  # the pod's answer (404: not set up), never 401/403
