import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest
from conftest import ADMIN, PG_URL, free_port
from stack import run_cli

CLI = str(Path(sys.executable).parent / "modbot-ring")
GID = "81384788765712384"


def cli(*args: str, url: str, token: str = ADMIN):
    return run_cli(url, *args, token=token)


async def test_operator_flow(pg_svc):
    code, out, err = await cli("pin", GID, "gateway-1", "--reason", "hot guild", url=pg_svc.url)
    assert code == 0 and f"pinned guild {GID} to gateway-1" in out and not err
    code, out, _ = await cli("route", GID, url=pg_svc.url)
    assert code == 0 and f"guild {GID} -> gateway-1 (pinned to this pod)" in out
    code, out, _ = await cli("route", GID, "--json", url=pg_svc.url)
    assert json.loads(out)["reason"] == "pin"
    code, out, _ = await cli("status", url=pg_svc.url)
    assert (
        code == 0
        and "gateway-0" in out
        and "gateway-1" in out
        and "1 pinned guilds" in out
        and "4 shards" in out
    )
    code, out, _ = await cli("pods", "--json", url=pg_svc.url)
    assert [p["name"] for p in json.loads(out)["pods"]] == ["gateway-0", "gateway-1"]
    code, out, _ = await cli("drain", "gateway-0", url=pg_svc.url)
    assert code == 0 and "draining" in out
    code, out, _ = await cli("unpin", GID, url=pg_svc.url)
    assert code == 0 and "unpinned" in out
    code, out, _ = await cli("audit", "--limit", "3", url=pg_svc.url)
    assert code == 0 and "pin.delete" in out and "pod.drain" in out


@pytest.mark.parametrize(
    "args, code, message",
    [
        (("pin", "12x", "gateway-0"), 2, "invalid guild id '12x'"),
        (("pin", GID, "ghost"), 3, "HTTP 404: cannot pin to unknown pod 'ghost'"),
        (("unpin", GID), 3, "HTTP 404"),
        (("drain", "ghost"), 3, "no pod named 'ghost'"),
    ],
)
async def test_errors_exit_non_zero_with_one_line(pg_svc, args, code, message):
    got, out, err = await cli(*args, url=pg_svc.url)
    assert got == code and message in err and err.count("\n") == 1 and not out


async def test_wrong_token_and_unreachable_service(pg_svc):
    got, _, err = await cli("pin", GID, "gateway-0", url=pg_svc.url, token="nope")
    assert got == 1 and "HTTP 401" in err and err.count("\n") == 1
    got, _, err = await cli("status", url=f"http://127.0.0.1:{free_port()}")
    assert got == 5 and "cannot reach the config service" in err and err.count("\n") == 1


async def test_db_upgrade(pg_schema, tmp_path):
    for url, schema in ((PG_URL, pg_schema), (f"sqlite:///{tmp_path}/c.db", "")):
        args = ["db", "upgrade", "--database-url", url] + (
            ["--db-schema", schema] if schema else []
        )
        proc = await asyncio.create_subprocess_exec(
            CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and b"0001_initial" in out
        proc = await asyncio.create_subprocess_exec(
            CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and b"schema is current" in out
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "db",
        "upgrade",
        "--database-url",
        "mysql://x",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2 and err.count(b"\n") == 1 and b"postgresql://" in err


async def test_bad_plan_paths_and_ids_are_refused_before_anything_is_created(pg_svc, tmp_path):
    code, out, err = await cli(
        "plan", "--svg", str(tmp_path / "missing" / "chart.svg"), url=pg_svc.url
    )
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and "cannot write" in err
    code, _, err = await cli("plan", "-o", str(tmp_path), url=pg_svc.url)  # a folder, not a file
    assert code == 2 and "cannot write" in err
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{pg_svc.url}/v1/plans", headers={"Authorization": f"Bearer {ADMIN}"}) as r,
    ):
        assert (await r.json())["plans"] == []  # no plan was made
    code, _, err = await cli("apply", "../pods/x", "--yes", url=pg_svc.url)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a plan id" in err
    code, _, err = await cli("apply", "plan-that-does-not-exist", "--yes", url=pg_svc.url)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "no plan" in err
