"""Scoped internal credentials (issue 12) on real pods, config service and proxy.

The proxy's forwarding token opens the guild routes only; the config service's migration
token opens the migration API only; each is refused (403 JSON) where the other belongs,
and a pod without a migration token keeps its migration API closed. Odd Authorization
headers are 401 JSON, never 500. Epochs are strict non-negative integers, and an import
never wipes a guild the pod owns.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
import yaml
from conftest import eventually
from stack import INTERNAL, MIGRATION, pod_process, running_stack

from modbot_runtime.auth import bearer_token, matching_token, same_token

F = {"Authorization": f"Bearer {INTERNAL}"}
M = {"Authorization": f"Bearer {MIGRATION}"}
TOO_BIG = "18446744073709551615"


# -- the helper ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, token",
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("Bearer a b", None),
        ("Bearer été", None),
        ("Bearer a\x00b", None),
        ("Bearer a\x7fb", None),
        ("Bearer \udcff", None),
        ("Bearer " + "x" * 5000, None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_parsing_never_raises(header, token):
    assert bearer_token(header) == token


def test_tokens_compare_as_bytes_and_unset_matches_nothing():
    assert same_token("s3cret", "s3cret")
    assert not same_token("s3cret", "s3cre")
    assert not same_token("été", "ete")  # hmac.compare_digest raises on non-ASCII str
    assert same_token("été", "été")
    assert not same_token("\udcff", "x")
    assert not same_token("", "")
    assert not same_token("x", "")
    tokens = {"forwarding": "f", "migration": "m"}
    assert matching_token("Bearer f", tokens) == "forwarding"
    assert matching_token("Bearer m", tokens) == "migration"
    assert matching_token("Bearer x", tokens) is None
    assert matching_token("Bearer f", {"forwarding": "f", "migration": "f"}) == "forwarding"


def test_manifests_give_each_token_only_to_its_holders():
    base = Path(__file__).resolve().parent.parent / "manifests" / "base"

    def keys(name: str) -> set[str]:
        found = set()
        for doc in yaml.safe_load_all((base / name).read_text()):
            text = json.dumps(doc)
            for key in ("internal-token", "migration-token"):
                if f'"key": "{key}"' in text:
                    found.add(key)
        return found

    assert keys("proxy.yaml") == {"internal-token"}
    assert keys("config-service.yaml") == {"migration-token"}
    assert keys("gateway.yaml") == {"internal-token", "migration-token"}


# -- on a real stack -------------------------------------------------------------------------


async def raw(port: int, request: bytes) -> tuple[int, dict | None]:
    """Send bytes as they are (aiohttp's client would refuse a non-ASCII header)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


@pytest.fixture
async def stack(tmp_path):
    async with running_stack(tmp_path, f"sqlite:///{tmp_path}/config.db", pods=2, guilds=4) as s:
        yield s


@pytest.mark.slow
async def test_scoped_tokens_epochs_and_imports_on_real_pods(stack, tmp_path):
    table = stack.proxy.tables.table
    guild = next(iter(stack.world.guilds))
    owner = stack.pods[table.owner(guild)]
    http = stack.http

    async def get(url, headers):
        async with http.get(url, headers=headers) as r:
            return r.status, await r.json()

    async def post(url, headers, body=None, data=None):
        async with http.post(url, headers=headers, json=body, data=data) as r:
            return r.status, await r.json()

    async with http.post(
        f"{stack.sim.url}/control/messages", json={"guild_ids": [str(guild)], "count": 5}
    ) as r:
        assert r.status == 200

    def counts():
        return {
            t: n
            for (t, n) in owner.rows(
                "SELECT 'm', count(*) FROM message_stats WHERE guild_id = ?", (guild,)
            )
        }

    before = await eventually(lambda: counts()["m"] >= 5 and counts(), timeout=10)

    # forwarding routes: the forwarding token only (past it, guild routes also need the
    # user identity the proxy signs; /interactions does not, so it shows the token passed)
    status, body = await post(f"{owner.url}/interactions", F, {"type": True})
    assert status == 400 and "integer type" in body["error"], body
    status, body = await post(f"{owner.url}/interactions", M, {"type": 1})
    assert status == 403 and "migration token" in body["error"]
    for path in (f"/data/guilds/{guild}", f"/api/guilds/{guild}/stats"):
        status, body = await get(f"{owner.url}{path}", M)
        assert status == 403 and "migration token" in body["error"]
    # the migration API: the migration token only
    status, body = await get(f"{owner.url}/internal/guilds", M)
    assert status == 200 and str(guild) in body["guilds"]
    for path in ("/internal/guilds", f"/internal/guilds/{guild}", "/internal/table"):
        status, body = await get(f"{owner.url}{path}", F)
        assert status == 403 and "forwarding token" in body["error"], (path, body)
    status, body = await post(f"{owner.url}/internal/guilds/{guild}/freeze", F, {"epoch": 99})
    assert status == 403
    status, body = await get(f"{owner.url}/internal/guilds", {})
    assert status == 401 and "error" in body

    # odd Authorization headers: 401 JSON on both scopes, never a 500
    for path in (f"/data/guilds/{guild}", "/internal/guilds"):
        for header in ("Bearer \xc3\xa9t\xc3\xa9".encode("latin-1"), b"Bearer \xff\xfe", b"Bearer"):
            status, body = await raw(
                owner.port,
                b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Authorization: " + header + b"\r\n\r\n",
            )
            assert status == 401 and body and "error" in body, (path, header, status)

    # guild ids beyond signed 64 bits: 400 on every edge (pod API, migration API, proxy)
    for url, headers in (
        (f"{owner.url}/api/guilds/{TOO_BIG}/settings", F),
        (f"{owner.url}/data/guilds/{TOO_BIG}", F),
        (f"{owner.url}/internal/guilds/{TOO_BIG}", M),
        (f"{stack.proxy.url}/api/guilds/{TOO_BIG}/settings", {}),
        (f"{stack.config.url}/v1/guilds/{TOO_BIG}/route", {"Authorization": "Bearer read-secret"}),
    ):
        status, body = await get(url, headers)
        assert status == 400 and "error" in body, (url, status, body)

    # epochs: strict non-negative integers
    freeze = f"{owner.url}/internal/guilds/{guild}/freeze"
    for epoch in (True, 1.5, "1.5", "7", -1, 2**63, None, [1], {"x": 1}):
        status, body = await post(freeze, M, {"epoch": epoch})
        assert status == 400 and "epoch" in body["error"], (epoch, body)
    for query in ("1.5", "true", "-1", "%201", "1e3", "9" * 20, "%C2%B2", ""):
        status, body = await post(f"{freeze}?epoch={query}", M)
        assert status == 400, (query, body)
    status, body = await post(freeze, M, data=b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and "JSON" in body["error"]
    status, body = await get(f"{owner.url}/internal/guilds/{guild}/export?since_id=1.5", M)
    assert status == 400
    status, body = await get(f"{owner.url}/internal/guilds/{guild}/export?since_time=nan", M)
    assert status == 400
    status, body = await post(
        f"{owner.url}/internal/guilds/{guild}/replay", M, {"epoch": 0, "events": [[1, 2, 3]]}
    )
    assert status == 400

    # a full import never wipes the rows of a guild the pod owns
    empty = {
        "mode": "full",
        "rows": {"guilds": [], "message_stats": [], "reported_messages": [], "mod_actions": []},
        "counts": {"guilds": 0, "message_stats": 0, "reported_messages": 0, "mod_actions": 0},
        "checksum": "0",
    }
    status, body = await post(f"{owner.url}/internal/guilds/{guild}/import?epoch=50", M, empty)
    assert status == 409 and "not migrating to this pod" in body["error"], body
    other = next(p for n, p in stack.pods.items() if p is not owner)
    status, body = await post(f"{other.url}/internal/guilds/{guild}/import?epoch=50", M, empty)
    assert status == 409, body  # not the owner, but not importing it either
    assert counts() == before

    # a pod without a migration token: its migration API is closed to every token
    extra = pod_process("gateway-7", stack.config.url, stack.sim, tmp_path)
    extra.env.pop("MODBOT_MIGRATION_TOKEN")
    extra.start()
    try:
        stack.pods["gateway-7"] = extra
        await stack.wait_ready("gateway-7")
        for headers in (M, F, {}):
            status, body = await get(f"{extra.url}/internal/guilds", headers)
            assert status == 403 and "closed" in body["error"], (headers, body)
    finally:
        extra.proc.terminate()
        extra.proc.wait(10)
        extra.proc = None


def _hostile_values(rng: random.Random, depth: int = 0) -> object:
    """A JSON value of the kinds that reach a handler by mistake or by malice."""
    leaves = [
        None,
        True,
        False,
        0,
        -1,
        1.5,
        float("1e308"),
        2**63,
        2**64 - 1,
        "",
        "1",
        "1.5",
        "-0",
        "²",
        "é" * 3,
        "\x00",
        "9" * 30,
        TOO_BIG,
    ]
    if depth < 3 and rng.random() < 0.4:
        if rng.random() < 0.5:
            return [_hostile_values(rng, depth + 1) for _ in range(rng.randrange(4))]
        keys = ["epoch", "events", "rows", "counts", "totals", "checksum", "mode", "x"]
        return {rng.choice(keys): _hostile_values(rng, depth + 1) for _ in range(rng.randrange(5))}
    return rng.choice(leaves)


@pytest.mark.slow
async def test_the_pod_api_never_answers_5xx_to_hostile_input(stack):
    """Bounded random fuzzing of every pod route (no OpenAPI document to drive
    schemathesis): 400 requests, fixed seed, each must get a 4xx/2xx JSON answer."""
    rng = random.Random(12)
    guild = next(iter(stack.world.guilds))
    owner = stack.pods[stack.proxy.tables.table.owner(guild)]
    ids = [str(guild), "0", "-1", TOO_BIG, "abc", "1" * 19, str(2**63 - 1)]
    routes = [
        ("POST", "/internal/guilds/{g}/freeze", M),
        ("GET", "/internal/guilds/{g}/export", M),
        ("POST", "/internal/guilds/{g}/import", M),
        ("POST", "/internal/guilds/{g}/replay", M),
        ("POST", "/internal/guilds/{g}/unfreeze", M),
        ("DELETE", "/internal/guilds/{g}", M),
        ("GET", "/internal/guilds/{g}", M),
        ("GET", "/internal/guilds/{g}/held", M),
        ("PUT", "/api/guilds/{g}/settings", F),
        ("POST", "/interactions", F),
    ]
    queries = ["", "?epoch=1.5", "?epoch=-1", f"?epoch={2**63}", "?mode=x", "?since_id=%C2%B2"]
    statuses = []
    for _ in range(400):
        method, path, headers = rng.choice(routes)
        # never a valid freeze/drop of the real guild: the stack must stay usable
        gid = (
            rng.choice(ids[1:])
            if method in ("POST", "DELETE") and rng.random() < 0.7
            else rng.choice(ids)
        )
        url = owner.url + path.format(g=gid) + rng.choice(queries)
        body = json.dumps(_hostile_values(rng)).encode()
        async with stack.http.request(method, url, headers=headers, data=body) as r:
            text = await r.text()
            assert r.status < 500, (method, url, body[:200], r.status, text[:300])
            assert r.content_type == "application/json", (url, r.status, text[:200])
            statuses.append(r.status)
    assert {400, 409} <= set(statuses)
