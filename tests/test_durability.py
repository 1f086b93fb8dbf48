"""Zero-loss pods, the fast parts: the batch writer under a full disk, gateway positions
committed with the rows, a pod refusing an unusable database file, and the simulator's
resume window (issue 14)."""

import asyncio
import json
import os
import subprocess
import time

import aiohttp
import pytest
from conftest import eventually, fill, free_port, small_tmpfs
from stack import CLI

from discord_sim.server import start_sim
from gateway_app.storage import (
    GuildStore,
    MessageRow,
    SessionMark,
    StorageUnavailable,
)


def row(n: int, guild: int = 1) -> MessageRow:
    return MessageRow(guild, 10_000 + n, 5, 7, 3, 15, 1_700_000_000.0 + n)


async def test_a_failed_commit_fails_flush_keeps_the_rows_and_retries_until_space_returns(
    tmp_path,
):
    with small_tmpfs(tmp_path / "disk") as disk:
        store = GuildStore(str(disk / "pod.db"), retry_initial=0.02, retry_max=0.2)
        await store.open()
        try:
            for n in range(10):
                store.message_created(row(n))
            store.mark_session(SessionMark(0, 1, "s1", 10, "ws://x/gw"))
            await store.flush()
            filler = fill(disk)
            for n in range(10, 6010):  # needs new pages: cannot fit on a full disk
                store.message_created(row(n))
            store.mark_session(SessionMark(0, 1, "s1", 6010, "ws://x/gw"))
            with pytest.raises(StorageUnavailable, match="full"):
                await store.flush()
            assert store.failure is not None and "full" in store.failure
            assert store.write_failures >= 1 and store.backlog > 0
            with pytest.raises(StorageUnavailable):  # the barrier refuses while writes fail
                await store.flush()
            # the position did not advance past what is committed
            assert (await store.sessions())[0].sequence == 10
            await eventually(lambda: store.write_failures >= 2)  # it retries
            filler.unlink()
            await eventually(lambda: store.failure is None, timeout=10)
            await store.flush()
            counts = await store.row_counts(1)
            assert counts["message_stats"] == 6010, "every row written during the fault is kept"
            assert (await store.sessions())[0].sequence == 6010
            assert store.backlog == 0
        finally:
            await store.close()


async def test_positions_commit_with_the_rows_before_them_and_a_new_session_replaces_the_old(
    tmp_path,
):
    store = GuildStore(str(tmp_path / "pod.db"))
    await store.open()
    try:
        store.message_created(row(1))
        store.mark_session(SessionMark(2, 4, "a", 7, "ws://h/gw"))
        store.mark_session(SessionMark(3, 4, "b", 3, "ws://h/gw"))
        await store.flush()
        got = await store.sessions()
        assert got[2] == SessionMark(2, 4, "a", 7, "ws://h/gw") and got[3].sequence == 3
        store.mark_session(SessionMark(2, 4, "a", 5, "ws://h/gw"))  # older: never goes back
        await store.flush()
        assert (await store.sessions())[2].sequence == 7
        store.mark_session(SessionMark(2, 4, "c", 2, "ws://h2/gw"))  # a new session
        await store.flush()
        assert (await store.sessions())[2] == SessionMark(2, 4, "c", 2, "ws://h2/gw")
    finally:
        await store.close()
    reopened = GuildStore(str(tmp_path / "pod.db"))
    await reopened.open()
    try:
        assert (await reopened.sessions())[3] == SessionMark(3, 4, "b", 3, "ws://h/gw")
    finally:
        await reopened.close()


def serve_gateway(database: str) -> subprocess.CompletedProcess[str]:
    port = free_port()
    return subprocess.run(
        [CLI, "serve", "gateway", "--name", "gateway-0", "--port", str(port)]
        + ["--database", database, "--config-url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "MODBOT_LOG_LEVEL": "error"},
    )


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_database_file_refuses_to_start_with_one_line(tmp_path, damage):
    path = tmp_path / "pod.db"
    if damage == "garbage":
        path.write_bytes(b"this is not an SQLite file at all" * 100)
    else:
        import sqlite3

        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(200),) for _ in range(2000)])
        conn.commit()
        conn.close()
        data = path.read_bytes()
        path.write_bytes(data[:100] + os.urandom(4096) + data[4196 : len(data) // 2])
    done = serve_gateway(str(path))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "corrupt" in lines[0] and str(path) in lines[0]


def test_a_read_only_database_refuses_to_start_with_one_line(tmp_path):
    with small_tmpfs(tmp_path / "ro") as disk:
        import sqlite3

        conn = sqlite3.connect(disk / "pod.db")
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        done = serve_gateway(str(disk / "pod.db"))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "not writable" in lines[0] or "cannot open" in lines[0], lines[0]


# -- the simulator: RESUME, replay and the resume window ---------------------------------------


async def identify(ws: aiohttp.ClientWebSocketResponse, shard: list[int]) -> dict:
    await ws.receive_json()  # HELLO
    intents = (1 << 0) | (1 << 9) | (1 << 15)
    await ws.send_json(
        {"op": 2, "d": {"token": "Bot sim-token", "intents": intents, "shard": shard}}
    )
    while True:
        msg = await asyncio.wait_for(ws.receive_json(), 5)
        assert msg.get("op") != 9, "IDENTIFY refused"
        if msg.get("t") == "READY":
            return msg


async def frames_until(ws: aiohttp.ClientWebSocketResponse, what: str) -> list[dict]:
    got = []
    while True:
        msg = await asyncio.wait_for(ws.receive_json(), 5)
        got.append(msg)
        if msg.get("t") == what or msg.get("op") == 9:
            return got


async def resume(http, url, session_id, seq) -> list[dict]:
    async with http.ws_connect(url) as ws:
        await ws.receive_json()  # HELLO
        await ws.send_json(
            {"op": 6, "d": {"token": "Bot sim-token", "session_id": session_id, "seq": seq}}
        )
        return await frames_until(ws, "RESUMED")


async def test_sim_replays_after_the_given_sequence_inside_the_window_and_invalidates_outside():
    sim = await start_sim(resume_window=1.0, max_concurrency=2)
    guild = sim.sim.world.create_guild("g")
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(sim.gateway_url)
            ready = await identify(ws, [0, 1])
            session_id = ready["d"]["session_id"]
            resume_url = ready["d"]["resume_gateway_url"]
            first = await frames_until(ws, "GUILD_CREATE")
            seen = first[-1]["s"]
            await ws.close(code=4000)  # dropped, not ended: resumable
            await eventually(lambda: sim.sim.sessions[session_id].disconnected_at is not None)
            for _ in range(3):  # while nobody is connected
                sim.sim.dispatch(guild.id, "MESSAGE_CREATE", {"n": _})
            frames = await resume(http, resume_url, session_id, seen)
            assert [f["t"] for f in frames] == ["MESSAGE_CREATE"] * 3 + ["RESUMED"]
            assert [f["d"]["n"] for f in frames[:3]] == [0, 1, 2]
            assert frames[0]["s"] == seen + 1
            # a sequence number the buffer does not cover, or from the future: op 9
            frames = await resume(http, resume_url, session_id, frames[-1]["s"] + 50)
            assert frames == [{"op": 9, "d": False, "s": None, "t": None}]
            # past the window: op 9, d=false, as Discord answers
            await asyncio.sleep(1.3)  # the sleep is the test: past the resume window
            sim.sim.dispatch(guild.id, "MESSAGE_CREATE", {"n": 3})
            frames = await resume(http, resume_url, session_id, seen)
            assert frames == [{"op": 9, "d": False, "s": None, "t": None}]
            # a session its client closed with 1000 is over at once
            ws = await http.ws_connect(sim.gateway_url)
            ready = await identify(ws, [1, 2])  # another max_concurrency bucket
            await ws.close(code=1000)
            await eventually(lambda: ready["d"]["session_id"] not in sim.sim.sessions)
            frames = await resume(http, resume_url, ready["d"]["session_id"], ready["s"])
            assert frames[-1]["op"] == 9 and frames[-1]["d"] is False
    finally:
        await sim.stop()


def test_sim_resume_window_is_a_flag():
    from discord_sim.settings import SERVE_FLAGS

    flag = next(f for f in SERVE_FLAGS if f.name == "resume-window")
    assert flag.env == "MODBOT_SIM_RESUME_WINDOW" and flag.default == 120.0


async def test_hostile_resume_payloads_get_invalid_session_not_a_crash():
    sim = await start_sim()
    try:
        async with aiohttp.ClientSession() as http:
            for d in (None, [], {"session_id": 5}, {"session_id": "x", "seq": "1"}, "zzz"):
                async with http.ws_connect(sim.gateway_url) as ws:
                    await ws.receive_json()
                    await ws.send_str(json.dumps({"op": 6, "d": d}))
                    msg = await asyncio.wait_for(ws.receive(), 5)
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
                    assert json.loads(msg.data)["op"] == 9
            t0 = time.monotonic()
            async with http.ws_connect(sim.gateway_url) as ws:  # the sim still works
                await identify(ws, [0, 1])
            assert time.monotonic() - t0 < 5
    finally:
        await sim.stop()
