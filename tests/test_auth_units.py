"""The proxy's credentials and limits, without servers: cookies, tokens, identity, CSRF,
rate limits, configuration refusals."""

from __future__ import annotations

import time

import pytest

from gateway_app.identity import Refused, verify_header
from gateway_app.identity import identity_key_from as pod_key
from router_proxy.auth import (
    ADMINISTRATOR,
    MANAGE_GUILD,
    Authenticator,
    AuthError,
    AuthSettings,
    GuildGrant,
    KeyRing,
    Principal,
    Sessions,
    identity_key_from,
    read_cookie,
    same_origin,
    sign_identity,
)
from router_proxy.ratelimit import RateLimiter, client_ip

KEYS = "first-key-0123456789abcdef,second-key-0123456789abcdef"


def sessions(keys: str = KEYS, ttl: float = 3600) -> Sessions:
    return Sessions(KeyRing.parse(keys), ttl)


def test_a_cookie_round_trips_and_any_listed_key_verifies():
    s = sessions()
    cookie = s.issue("42", "ann", {"7": GuildGrant(MANAGE_GUILD, ("1",))})
    who = s.verify(cookie)
    assert who.user_id == "42" and who.guilds["7"] == GuildGrant(MANAGE_GUILD, ("1",))
    rotated = sessions("brand-new-key-0123456789," + KEYS)  # new first key: old cookies live
    assert rotated.verify(cookie).user_id == "42"
    dropped = sessions("brand-new-key-0123456789")
    with pytest.raises(AuthError):
        dropped.verify(cookie)


@pytest.mark.parametrize("mutate", ["payload", "mac", "kid", "version", "truncate"])
def test_tampered_cookies_fail(mutate):
    s = sessions()
    cookie = s.issue("42", "ann", {"7": GuildGrant(ADMINISTRATOR)})
    version, kid, body, mac = cookie.split(".")
    bad = {
        "payload": f"{version}.{kid}.{body[:-1]}{'A' if body[-1] != 'A' else 'B'}.{mac}",
        "mac": f"{version}.{kid}.{body}.{mac[:-2]}xx",
        "kid": f"{version}.00000000.{body}.{mac}",
        "version": f"v2.{kid}.{body}.{mac}",
        "truncate": f"{version}.{kid}.{body}",
    }[mutate]
    with pytest.raises(AuthError):
        sessions().verify(bad)


def test_expired_cookies_fail_even_from_the_cache():
    s = sessions(ttl=1)
    now = time.time()
    cookie = s.issue("1", "a", {}, now=now)
    assert s.verify(cookie, now=now).user_id == "1"
    with pytest.raises(AuthError):
        s.verify(cookie, now=now + 5)
    with pytest.raises(AuthError):
        sessions(ttl=1).verify(cookie, now=now + 5)


def test_cookie_stays_under_4k_for_a_user_managing_many_guilds():
    s = sessions()
    guilds = {str(10**18 + i): GuildGrant(ADMINISTRATOR) for i in range(500)}
    assert len(s.issue("1", "a" * 200, guilds)) < 4096


def test_csrf_token_is_bound_to_the_session():
    s = sessions()
    one = s.verify(s.issue("1", "a", {}))
    two = s.verify(s.issue("1", "a", {}))
    assert s.csrf_ok(one, s.csrf_token(one))
    assert not s.csrf_ok(one, s.csrf_token(two))
    assert not s.csrf_ok(one, None) and not s.csrf_ok(one, "")


def test_same_origin_rules():
    assert same_origin(None, "same-origin", "https://a.example", None)
    assert not same_origin("https://a.example", "cross-site", "https://a.example", None)
    assert same_origin("https://a.example", None, "https://a.example", None)
    assert not same_origin("https://evil.example", None, "https://a.example", None)
    assert not same_origin(None, None, "https://a.example", None)
    assert not same_origin("null", None, "", "h:1")
    assert same_origin("http://h:1", None, "", "h:1")


def test_api_tokens_round_trip_and_refuse_tampering():
    s = sessions()
    who = Principal("42", "ann", "session", {"7": GuildGrant(MANAGE_GUILD)})
    token, record = s.mint_token(who, "7", "read", 60)
    assert token not in str(record) and record["hash"] != token
    got = s.verify_token(token)
    assert got.kind == "token" and got.scope == "read" and got.grant("7") is not None
    with pytest.raises(AuthError):
        s.verify_token(token[:-3] + "abc")
    with pytest.raises(AuthError):
        sessions().verify_token(s.mint_token(who, "7", "read", -1)[0])


def test_identity_verifies_on_the_pod_only_for_its_method_and_target():
    proxy_key = identity_key_from("", "internal")
    assert proxy_key == pod_key("", "internal")  # same derivation on both sides
    who = Principal("42", "ann", "session", {"7": GuildGrant(MANAGE_GUILD)})
    value = sign_identity(proxy_key, who, "7", "GET", "/api/guilds/7/settings")
    payload = verify_header(proxy_key, value, "GET", "/api/guilds/7/settings")
    assert payload["u"] == "42" and payload["p"] == MANAGE_GUILD
    for method, target in [("PUT", "/api/guilds/7/settings"), ("GET", "/api/guilds/8/settings")]:
        with pytest.raises(Refused):
            verify_header(proxy_key, value, method, target)
    with pytest.raises(Refused):
        verify_header(pod_key("", "other"), value, "GET", "/api/guilds/7/settings")
    old = sign_identity(proxy_key, who, "7", "GET", "/x", now=time.time() - 120)
    with pytest.raises(Refused):
        verify_header(proxy_key, old, "GET", "/x")


def test_only_the_developer_identity_may_name_any_guild_and_target():
    """--no-auth signs one identity per method (the fast path's cheap case); the pod takes
    ``*`` from a dev identity only, never from a session or a token."""
    key = identity_key_from("", "internal")
    dev = Authenticator(None, key, no_auth=True).dev
    value = sign_identity(key, dev, "*", "GET", "*")
    assert verify_header(key, value, "GET", "/api/guilds/7/stats")["k"] == "dev"
    with pytest.raises(Refused):  # the method is still bound
        verify_header(key, value, "PUT", "/api/guilds/7/stats")
    ann = Principal("42", "ann", "session", {"7": GuildGrant(ADMINISTRATOR)})
    with pytest.raises(ValueError):
        sign_identity(key, ann, "*", "GET", "*")
    # a session identity forged with "*" (as if the proxy's key had signed it) is refused
    import json as _json

    from router_proxy.auth import b64e, mac

    text = _json.dumps(
        {
            "k": "session",
            "u": "42",
            "g": "*",
            "p": 8,
            "r": [],
            "m": "GET",
            "t": "*",
            "e": int(time.time()) + 60,
        }
    )
    body = b64e(text.encode())
    forged = f"v1.{body}.{b64e(mac(key, f'v1.{body}'.encode()))}"
    with pytest.raises(Refused):
        verify_header(key, forged, "GET", "/api/guilds/7/stats")


def test_targets_that_need_escaping_are_signed_as_json_would():
    key = identity_key_from("", "internal")
    who = Principal("42", "ann", "session", {"7": GuildGrant(MANAGE_GUILD)})
    for target in ['/api/guilds/7/a"b', "/api/guilds/7/a\\b", "/api/guilds/7/\u00e9", "/x\x01"]:
        value = sign_identity(key, who, "7", "GET", target)
        assert verify_header(key, value, "GET", target)["t"] == target


def test_authenticator_decisions():
    s = sessions()
    auth = Authenticator(s, b"k" * 32, public_origin="https://a.example")
    manager = s.issue("1", "m", {"7": GuildGrant(MANAGE_GUILD)})
    cookie = f"modbot_session={manager}"
    ok = auth.check("GET", "/api/guilds/7/x", "7", cookie=cookie, authorization=None)
    assert ok.status == 0 and ok.identity
    assert auth.check("GET", "/x", "8", cookie=cookie, authorization=None).status == 403
    assert auth.check("GET", "/x", "7", cookie=None, authorization=None).status == 401
    assert auth.check("GET", "/x", "7", cookie=None, authorization="Bearer junk").status == 401
    who = s.verify(manager)
    write = auth.check(
        "PUT", "/x", "7", cookie=cookie, authorization=None,
        origin="https://a.example", csrf=s.csrf_token(who),
    )  # fmt: skip
    assert write.status == 0
    no_csrf = auth.check(
        "PUT", "/x", "7", cookie=cookie, authorization=None, origin="https://a.example"
    )
    assert no_csrf.status == 403


def test_rate_limiter_refuses_with_retry_after_and_refills():
    limiter = RateLimiter(rate=2, burst=2)
    assert limiter.hit("a", now=0) == 0 and limiter.hit("a", now=0) == 0
    assert limiter.hit("a", now=0) >= 1
    assert limiter.hit("b", now=0) == 0  # per key
    assert limiter.hit("a", now=1.0) == 0  # refilled
    assert RateLimiter(rate=0, burst=1).hit("a") == 0  # off


def test_rate_limiter_memory_is_bounded():
    limiter = RateLimiter(rate=1, burst=1, max_keys=100)
    for i in range(1000):
        limiter.hit(str(i), now=float(i))
    assert len(limiter.buckets) <= 100


def test_client_ip_trusts_only_the_configured_hops():
    assert client_ip("6.6.6.6", "10.0.0.1", 0) == "10.0.0.1"  # spoofed XFF ignored
    assert client_ip("6.6.6.6, 1.2.3.4", "10.0.0.1", 1) == "1.2.3.4"
    assert client_ip(None, "10.0.0.1", 1) == "10.0.0.1"


def test_cookie_header_parsing():
    assert read_cookie("a=1; modbot_session=xyz; b=2") == "xyz"
    assert read_cookie("modbot_sessionx=1") is None and read_cookie(None) is None


def test_no_auth_is_refused_off_loopback_and_login_needs_https_off_loopback():
    assert AuthSettings(no_auth=True).problems("0.0.0.0")
    assert not AuthSettings(no_auth=True).problems("127.0.0.1")
    insecure = AuthSettings(
        discord_client_id="1",
        discord_client_secret="s",
        session_keys="k" * 20,
        oauth_redirect_url="http://example.com/oauth/callback",
    )
    assert any("https" in p for p in insecure.problems("0.0.0.0"))
    assert AuthSettings(session_keys="short").problems("127.0.0.1")
    assert AuthSettings(discord_client_id="1").problems("127.0.0.1")


def test_health_and_metrics_are_not_routed_publicly():
    from pathlib import Path

    import yaml

    base = Path(__file__).resolve().parent.parent / "manifests" / "base"
    ingress = yaml.safe_load((base / "ingress.yaml").read_text())
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert {p["path"] for p in paths} >= {"/login", "/oauth/callback", "/api/guilds/"}
    assert not [p for p in paths if p["path"] in ("/", "/metrics", "/readyz", "/healthz")]
    assert {p["backend"]["service"]["port"]["name"] for p in paths} == {"http"}
    docs = list(yaml.safe_load_all((base / "proxy.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["port"] == "admin"
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


async def test_the_pod_gets_a_signed_identity_and_never_the_session_cookie(tmp_path):
    """Through the fast path to a recording upstream: the cookie stops at the proxy, a
    client's identity header is replaced by the proxy's own."""
    import aiohttp
    from aiohttp import web
    from conftest import AppServer
    from stack import proxy_before

    from router_proxy.proxy import ProxySettings

    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"ok": True})

    keys = "units-session-key-0123456789"
    settings = ProxySettings(
        internal_token="inside",
        auth=AuthSettings(session_keys=keys, rate_limit_anon=0, rate_limit_user=0),
    )
    async with (
        proxy_before(tmp_path, AppServer(record), "rec", settings) as (proxy, _),
        aiohttp.ClientSession() as http,
    ):
        cookie = sessions(keys).issue("42", "ann", {"77": GuildGrant(MANAGE_GUILD)})
        headers = {"Cookie": f"modbot_session={cookie}", "X-Modbot-Identity": "forged"}
        async with http.get(f"{proxy.url}/api/guilds/77/x?y=1", headers=headers) as r:
            assert r.status == 200
        async with http.get(f"{proxy.url}/api/guilds/78/x", headers=headers) as r:
            assert r.status == 403  # cross-guild: refused at the edge
    assert len(seen) == 1
    got = seen[0]
    assert "Cookie" not in got and got["Authorization"] == "Bearer inside"
    payload = verify_header(
        pod_key("", "inside"), got["X-Modbot-Identity"], "GET", "/api/guilds/77/x?y=1"
    )
    assert payload["u"] == "42" and payload["g"] == "77" and payload["p"] == MANAGE_GUILD


def test_cookies_are_secure_whenever_the_public_url_is_https():
    assert AuthSettings(oauth_redirect_url="https://m.example/oauth/callback").secure_cookies
    assert not AuthSettings(
        oauth_redirect_url="http://127.0.0.1:8080/oauth/callback"
    ).secure_cookies
    assert AuthSettings(oauth_redirect_url="https://m.example/oauth/callback").public_origin == (
        "https://m.example"
    )


async def test_the_simulator_speaks_discords_oauth2_shapes():
    import aiohttp

    from discord_sim.server import start_sim

    sim = await start_sim()
    try:
        async with aiohttp.ClientSession() as http:
            base = sim.url
            body = {"username": "ann", "guilds": {"5": {"permissions": "40", "roles": ["9"]}}}
            async with http.post(f"{base}/control/oauth/users", json=body) as r:
                uid = (await r.json())["id"]
            q = {
                "client_id": "900000000000000001",
                "response_type": "code",
                "redirect_uri": "http://127.0.0.1:1/oauth/callback",
                "scope": "identify guilds guilds.members.read",
                "state": "s1",
            }
            for bad in ({"client_id": "1"}, {"scope": "identify bot2"}, {"redirect_uri": "x"}):
                async with http.get(f"{base}/oauth2/authorize", params={**q, **bad}) as r:
                    assert r.status == 400, bad
            form = {**q, "user_id": uid, "action": "authorize"}
            async with http.post(f"{base}/oauth2/authorize", data=form, allow_redirects=False) as r:
                code = r.headers["Location"].split("code=")[1].split("&")[0]
                assert "state=s1" in r.headers["Location"]
            token_form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": "http://127.0.0.1:1/other",
                "client_id": "900000000000000001",
                "client_secret": "sim-client-secret",
            }
            async with http.post(f"{base}/api/v10/oauth2/token", data=token_form) as r:
                assert r.status == 400  # redirect_uri must match the authorize one
            async with http.post(f"{base}/oauth2/authorize", data=form, allow_redirects=False) as r:
                code = r.headers["Location"].split("code=")[1].split("&")[0]
            token_form |= {"code": code, "redirect_uri": q["redirect_uri"]}
            async with http.post(f"{base}/api/v10/oauth2/token", data=token_form) as r:
                grant = await r.json()
                assert r.status == 200 and grant["token_type"] == "Bearer"
            user = {"Authorization": f"Bearer {grant['access_token']}"}
            async with http.get(f"{base}/api/v10/users/@me", headers=user) as r:
                assert (await r.json())["username"] == "ann"
            async with http.get(f"{base}/api/v10/users/@me/guilds", headers=user) as r:
                guilds = await r.json()
                assert guilds[0]["permissions"] == "40" and guilds[0]["id"] == "5"
            async with http.get(f"{base}/api/v10/users/@me/guilds/5/member", headers=user) as r:
                assert (await r.json())["roles"] == ["9"]
            async with http.get(f"{base}/api/v10/users/@me/guilds/6/member", headers=user) as r:
                assert r.status == 404 and (await r.json())["code"] == 10004
            bad = {"Authorization": "Bearer nope"}
            async with http.get(f"{base}/api/v10/users/@me/guilds", headers=bad) as r:
                assert r.status == 401
            async with http.get(
                f"{base}/api/v10/users/@me", headers={"Authorization": "Bot sim-token"}
            ) as r:
                assert (await r.json())["bot"] is True  # the bot's own /users/@me still works
    finally:
        await sim.stop()
