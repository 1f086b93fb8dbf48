"""Pin propagation: from a pin write's commit until 3 client processes route by it.

    python benchmarks/propagation_bench.py                      # PostgreSQL + Redis (local)
    python benchmarks/propagation_bench.py --embedded           # SQLite + HTTP long-poll
    python benchmarks/propagation_bench.py --changes 200 --pg postgresql://... --redis redis://...

The config service runs in this process and timestamps each commit; each client runs a
``RoutingTableClient`` in its own process and timestamps the moment its in-memory table
routes the guild to the new pod. Both use CLOCK_MONOTONIC, which is system-wide on Linux.
Changes are made one at a time, so each latency is measured unloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GID = 81384788765712384
ADMIN = "bench-admin"


async def client_main(args: argparse.Namespace) -> None:
    from modbot_client.table_client import RoutingTableClient

    client = RoutingTableClient(
        redis_url=args.redis_url,
        redis_prefix=args.prefix,
        config_url=args.config_url,
        read_token=ADMIN,
        poll_interval=1.0,
    )

    def report(table, _old) -> None:  # type: ignore[no-untyped-def]
        now = time.monotonic()
        try:
            owner = table.owner(GID)
        except LookupError:
            owner = None
        print(json.dumps({"version": table.version, "owner": owner, "t": now}), flush=True)

    client.subscribe(report)
    await client.start(timeout=30)
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.Event().wait()


async def bench(args: argparse.Namespace) -> None:
    import aiohttp
    import psycopg
    from aiohttp import web

    from config_store.service import build_app
    from config_store.store import open_store

    schema = ""
    if args.embedded:
        tmp = tempfile.mkdtemp()
        db_url, redis_url = f"sqlite:///{tmp}/bench.db", ""
    else:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        db_url, redis_url = args.pg, args.redis
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    store = await open_store(db_url, schema=schema)
    await store.initialize_ring(16)
    commits: dict[int, float] = {}
    store.on_change(lambda version: commits.__setitem__(version, time.monotonic()))
    app = build_app(store, admin_token=ADMIN, redis_url=redis_url, redis_prefix=prefix)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = 18700 + os.getpid() % 1000
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {ADMIN}"}

    seen: list[dict[int, tuple[str | None, float]]] = [{} for _ in range(args.clients)]
    procs = []
    async with aiohttp.ClientSession() as http:
        for name in ("gateway-0", "gateway-1"):
            async with http.put(
                f"{url}/v1/pods/{name}", json={"url": f"http://{name}:1"}, headers=headers
            ) as r:
                assert r.status == 200
        for _i in range(args.clients):
            cmd = [sys.executable, __file__, "--client", "--prefix", prefix, "--config-url", url]
            if redis_url:
                cmd += ["--redis-url", redis_url]
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
            procs.append(proc)
        ready = [asyncio.Event() for _ in procs]

        async def read(i: int, proc: asyncio.subprocess.Process) -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                msg = json.loads(line)
                if msg.get("ready"):
                    ready[i].set()
                else:
                    seen[i][msg["version"]] = (msg["owner"], msg["t"])

        readers = [asyncio.create_task(read(i, p)) for i, p in enumerate(procs)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 60)

        latencies = []
        for n in range(args.changes):
            pod = f"gateway-{(n + 1) % 2}"
            async with http.put(f"{url}/v1/pins/{GID}", json={"pod": pod}, headers=headers) as r:
                version = (await r.json())["version"]
            deadline = time.monotonic() + 10
            while not all(version in s for s in seen):
                if time.monotonic() > deadline:
                    raise SystemExit(f"change {n} (v{version}) did not reach every client in 10 s")
                await asyncio.sleep(0.001)
            assert all(s[version][0] == pod for s in seen)
            latencies.append(max(s[version][1] for s in seen) - commits[version])
            await asyncio.sleep(0.01)

    for proc in procs:
        proc.kill()
        await proc.wait()
    for task in readers:
        task.cancel()
    await runner.cleanup()
    await store.close()
    if schema:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    ms = sorted(x * 1000 for x in latencies)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]  # noqa: E731
    mode = "SQLite + HTTP long-poll" if args.embedded else "PostgreSQL + Redis pub/sub"
    print(
        f"# propagation_bench: {args.changes} pin changes, {args.clients} client processes, {mode}, Python {platform.python_version()}"
    )
    print(
        f"  {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}   (ms from commit until all clients route by the pin)"
    )
    print(
        f"  {p(0.5):8.2f} {p(0.9):8.2f} {p(0.99):8.2f} {ms[-1]:8.2f} {statistics.mean(ms):8.2f}   goal: p99 <= 50 ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument(
        "--embedded", action="store_true", help="SQLite store, no Redis: clients long-poll"
    )
    parser.add_argument(
        "--pg",
        default=os.environ.get(
            "MODBOT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--redis", default=os.environ.get("MODBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--config-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.run(client_main(args) if args.client else bench(args))


if __name__ == "__main__":
    main()
