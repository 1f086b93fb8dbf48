"""The proxy's fast path in-process: CPU time per proxied request, no sockets, no wrk.

    python benchmarks/fastpath_bench.py                          # this tree
    python benchmarks/fastpath_bench.py --baseline-src /tmp/before --rounds 6
    python benchmarks/fastpath_bench.py --guilds 4096             # targets repeat

The twin of ``proxy_bench.py`` for changes on the hot path: ``Front`` and ``Upstream``
(router_proxy/fastpath.py) are driven with fake transports, one keep-alive client and
three pooled pod connections; each request is parsed, gated (``--no-auth``: a signed
identity), routed by a real ``RoutingTable``, sent to a fake pod whose answer is fed
back, and relayed. What is measured is the proxy's own Python per request (thread CPU
time, so a busy machine disturbs it less than wall time); what wrk adds (system calls,
the kernel's loopback) is not, so a ratio here is larger than the same change's ratio in
``proxy_bench.py`` (about half of the proxy's time per request is this part).

Each round runs this tree and the baseline in separate processes, alternately; the
figure per tree is the minimum over rounds of its median of 5 batches (the least
disturbed run), and the ratio compares those.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class _Transport:
    """What the protocols call on a transport; writes are kept for the next exchange."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed


async def _measure(requests: int, guilds: int) -> float:
    """Median µs of CPU per request over 5 batches, in this process's tree."""
    from modbot_client.table_client import RoutingTableClient
    from modbot_ring import RoutingTable
    from modbot_ring.table import Pod
    from router_proxy import proxy as proxy_module
    from router_proxy.fastpath import Front, FrontServer, Upstream
    from router_proxy.server import make_app

    kw: dict[str, Any] = {"internal_token": "inside", "upstream_timeout": 1.0}
    if "auth" in {f.name for f in dataclasses.fields(proxy_module.ProxySettings)}:
        from router_proxy.auth import AuthSettings

        kw["auth"] = AuthSettings(no_auth=True, rate_limit_anon=0, rate_limit_user=0)
    tables = RoutingTableClient(
        redis_url="", redis_prefix="bench", config_url="http://127.0.0.1:1", read_token=""
    )
    pods = [Pod(f"gateway-{i}", url=f"http://127.0.0.1:{9000 + i}") for i in range(3)]
    tables.table = RoutingTable(pods, version=1)
    _, proxy = make_app(proxy_module.ProxySettings(**kw), tables)
    front = FrontServer(proxy, "/nonexistent")
    front.loop = asyncio.get_running_loop()
    rnd = random.Random(1)
    ids = [rnd.randrange(10**17, 10**18) for _ in range(guilds)]
    heads = [
        b"GET /api/guilds/%d/stats HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n" % g
        for g in ids
    ]
    answer = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 11:00:00 GMT\r\n"
        b"Content-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n"
        b'\r\n{"ok":true}'
    )
    for i in range(3):
        conn = Upstream(front.pool, f"127.0.0.1:{9000 + i}")
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        front.pool.release(conn)
    client = Front(front)
    client_transport = _Transport()
    client.connection_made(client_transport)  # type: ignore[arg-type]

    def one(i: int) -> None:
        client.data_received(heads[i % len(heads)])
        exchange = client.exchange
        assert exchange is not None and exchange.conn is not None, "not dispatched"
        exchange.conn.data_received(answer)

    for i in range(2000):
        one(i + 10**6)
    assert client.exchange is None and b" 200 OK" in client_transport.out[-1]
    gc.collect()
    gc.disable()
    batches = []
    for batch in range(5):
        client_transport.out.clear()
        started = time.thread_time()
        for i in range(requests):
            one(i + batch * requests)
        batches.append((time.thread_time() - started) / requests * 1e6)
        for conn in front.pool.idle.get("127.0.0.1:9000", ()):
            conn.transport.out.clear()  # type: ignore[union-attr]
    gc.enable()
    return statistics.median(batches)


def _child(tree: Path, requests: int, guilds: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--requests", str(requests), "--guilds", str(guilds)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", type=Path, help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=10_000, help="per batch")
    parser.add_argument(
        "--guilds", type=int, default=131_072, help="distinct targets (default: all differ)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"{asyncio.run(_measure(args.requests, args.guilds)):.3f}")
        return 0
    trees = {"this tree": ROOT}
    if args.baseline_src is not None:
        if not (args.baseline_src / "router_proxy" / "fastpath.py").is_file():
            print(f"no router_proxy/fastpath.py under {args.baseline_src}", file=sys.stderr)
            return 2
        trees["before"] = args.baseline_src.resolve()
    runs: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            runs[name].append(_child(tree, args.requests, args.guilds))
    print(
        f"# fastpath_bench: {args.rounds} interleaved rounds x 5 batches of {args.requests} "
        f"keep-alive GETs, {args.guilds} distinct guilds, Python {sys.version.split()[0]}"
    )
    print(f"  {'tree':<12}{'µs/request (min of round medians)':>36}   rounds")
    for name, values in runs.items():
        print(f"  {name:<12}{min(values):>36.2f}   " + ", ".join(f"{v:.2f}" for v in values))
    if "before" in runs:
        print(f"  this tree / before: {min(runs['this tree']) / min(runs['before']):.3f}x time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
