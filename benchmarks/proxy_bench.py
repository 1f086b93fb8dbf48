"""Proxy throughput and latency: direct vs nginx (``hash $guild consistent``) vs this proxy.

    python benchmarks/proxy_bench.py                 # 10 s per target, 64 connections
    python benchmarks/proxy_bench.py --duration 5 --connections 32
    python benchmarks/proxy_bench.py --baseline-src /tmp/before   # a change's before/after
    python benchmarks/proxy_bench.py --signed-in     # + a proxy checking a session cookie

``--signed-in`` adds a proxy with sign-in on (session keys set), and every request of every
target carries the same signed session cookie (Administrator in ``--cookie-guilds``
guilds, default 10: a 550-byte cookie; 60, the most a cookie holds, gives ~2.5 KB; wrk
picks a guild among them per request): the signed-in proxy verifies it (HMAC, then its cache), checks the per-user rate
limit (set high enough never to refuse) and signs the identity header for the pod; the
anonymous proxy (``--no-auth``) ignores the cookie. Goal: signed-in >= 0.9x anonymous.

``--baseline-src DIR`` runs a second config service + proxy from another checkout of this
repository (``git archive <commit> | tar -x -C DIR``) in the same interleaved rounds, so a
change on the hot path is quoted against its own "before" under the same noise.

Needs ``wrk`` and ``nginx`` (Debian packages ``wrk`` and ``nginx-light``). Everything
listens on 127.0.0.1. Three nginx "pods" answer instantly, so what is measured is the
proxy in front of them. wrk requests ``/api/guilds/<random id>/stats``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench-admin"

WRK_SCRIPT = """
math.randomseed(os.time())
request = function()
  local id = string.format("%d%09d", math.random(100000000, 999999999), math.random(0, 999999999))
  return wrk.format("GET", "/api/guilds/" .. id .. "/stats")
end
"""


SIGNED_IN_GUILDS = [str((1 << 60) + i * 7919) for i in range(200)]
BENCH_SESSION_KEY = "proxy-bench-session-key-0123456789"


def signed_in_script(cookie: str, guilds: int) -> str:
    ids = ", ".join(f'"{g}"' for g in SIGNED_IN_GUILDS[:guilds])
    return f"""
math.randomseed(os.time())
local ids = {{{ids}}}
request = function()
  local id = ids[math.random(1, #ids)]
  return wrk.format("GET", "/api/guilds/" .. id .. "/stats", {{["Cookie"] = "modbot_session={cookie}"}})
end
"""


def bench_cookie(guilds: int) -> str:
    sys.path.insert(0, str(ROOT))
    from router_proxy.auth import ADMINISTRATOR, GuildGrant, KeyRing, Sessions

    grants = {g: GuildGrant(ADMINISTRATOR) for g in SIGNED_IN_GUILDS[:guilds]}
    return Sessions(KeyRing.parse(BENCH_SESSION_KEY), ttl=86400).issue("1", "bench", grants)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_conf(tmp: Path, name: str, workers: int, servers: str, upstream: str = "") -> Path:
    """One nginx instance: the backends and the proxying nginx run as separate instances,
    so the nginx proxy's workers do only proxying, like ours."""
    root = tmp / name
    root.mkdir()
    conf = root / "nginx.conf"
    conf.write_text(
        f"""
worker_processes {workers};
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy; fastcgi_temp_path {root}/fcgi;
  uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  {upstream}
  {servers}
}}
"""
    )
    return conf


def backend_conf(tmp: Path, backends: list[int]) -> Path:
    servers = "\n".join(
        f"server {{ listen 127.0.0.1:{p}; access_log off; location / {{ default_type application/json; return 200 '{{\"ok\":true}}'; }} }}"
        for p in backends
    )
    return nginx_conf(tmp, "backends", 1, servers)


def hash_proxy_conf(tmp: Path, backends: list[int], port: int, workers: int) -> Path:
    upstream = " ".join(f"server 127.0.0.1:{p};" for p in backends)
    server = f"""server {{
    listen 127.0.0.1:{port};
    location ~ ^/api/guilds/(?<guild>[0-9]+)/ {{
      proxy_pass http://pods; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}"""
    return nginx_conf(
        tmp,
        "hash-proxy",
        workers,
        server,
        f"upstream pods {{ hash $guild consistent; {upstream} keepalive 128; }}",
    )


def wrk(url: str, duration: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50": pct("50"),
        "p99": pct("99"),
        "non2xx": int(errors.group(1)) if errors else 0,
    }


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def print_profile(path: Path, top: int = 14) -> None:
    """Self and inclusive time by function, from py-spy's raw (collapsed stack) output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split("/")[-1] for f in stack.split(";")
        ]
        n = int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    print(f"# profile of the proxy process ({total} samples)")
    for title, table in (("self", own), ("inclusive", inclusive)):
        print(f"  top {title} time:")
        for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {100 * n / total:5.1f}%  {name}")


def start_stack(
    procs: list[subprocess.Popen[bytes]],
    cli: str,
    env: dict[str, str],
    tmp: Path,
    backends: list[int],
    workers: int,
    src: Path | None,
    signed_in: bool = False,
) -> int:
    """A config service and ``workers`` proxy processes (from ``src`` if given) in front of
    the backends; returns the proxy's port once it is ready."""
    if src is not None:
        env = {**env, "PYTHONPATH": str(src.resolve())}
    config_port, proxy_port = free_port(), free_port()
    name = "before" if src is not None else "signed-in" if signed_in else "after"
    procs.append(
        subprocess.Popen(
            [
                cli,
                "serve",
                "config",
                "--port",
                str(config_port),
                "--database-url",
                f"sqlite:///{tmp}/config-{name}.db",
                "--shard-count",
                "0",
                "--heartbeat-timeout",
                "1e9",
                "--log-level",
                "warning",
            ],
            env=env,
        )
    )
    wait_http(f"http://127.0.0.1:{config_port}/healthz")
    for i, port in enumerate(backends):
        req = urllib.request.Request(
            f"http://127.0.0.1:{config_port}/v1/pods/gateway-{i}",
            method="PUT",
            data=json.dumps({"url": f"http://127.0.0.1:{port}"}).encode(),
            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(req).read()
    extra: list[str] = []
    usage = subprocess.run(
        [cli, "serve", "proxy", "--help"], env=env, capture_output=True, text=True
    )
    # anonymous API traffic, unthrottled: what this benchmark has always measured (a tree
    # from before login existed ignores these variables)
    env = {**env, "MODBOT_NO_AUTH": "true", "MODBOT_RATE_LIMIT_ANON": "0"}
    if signed_in:  # sign-in on: cookies verified, per-user limit checked (never reached)
        env |= {
            "MODBOT_NO_AUTH": "false",
            "MODBOT_SESSION_KEYS": BENCH_SESSION_KEY,
            "MODBOT_RATE_LIMIT_USER": "1e9",
        }
    admin_port = 0
    if "--admin-port" in usage.stdout:  # health and metrics off the public port
        admin_port = free_port()
        extra += ["--admin-port", str(admin_port)]
    for _ in range(workers):  # several workers share one port (SO_REUSEPORT)
        procs.append(
            subprocess.Popen(
                [
                    cli,
                    "serve",
                    "proxy",
                    "--port",
                    str(proxy_port),
                    "--config-url",
                    f"http://127.0.0.1:{config_port}",
                    "--log-level",
                    "warning",
                    *extra,
                ],
                env=env,
            )
        )
    wait_http(f"http://127.0.0.1:{admin_port or proxy_port}/readyz")
    return proxy_port


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--nginx-workers",
        type=int,
        default=1,
        help="nginx worker processes (default 1: one core, like the proxy)",
    )
    parser.add_argument("--proxy-workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another checkout of this repo: its proxy joins the rounds as 'before'",
    )
    parser.add_argument(
        "--signed-in",
        action="store_true",
        help="add a proxy with sign-in on; every request carries a session cookie",
    )
    parser.add_argument(
        "--cookie-guilds",
        type=int,
        default=10,
        help="guilds in the bench's session cookie (its size; default 10)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the proxy during its run and print where the time goes",
    )
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is needed: apt-get install wrk nginx-light")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    script = tmp / "random.lua"
    cookie = bench_cookie(args.cookie_guilds)
    script.write_text(
        signed_in_script(cookie, args.cookie_guilds) if args.signed_in else WRK_SCRIPT
    )
    backends = [free_port() for _ in range(3)]
    nginx_port = free_port()
    confs = [
        backend_conf(tmp, backends),
        hash_proxy_conf(tmp, backends, nginx_port, args.nginx_workers),
    ]
    procs: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "MODBOT_ADMIN_TOKEN": ADMIN,
        "MODBOT_READ_TOKEN": ADMIN,
        "MODBOT_INTERNAL_TOKEN": "x",
    }
    cli = str(Path(sys.executable).parent / "modbot-ring")
    try:
        for conf in confs:
            procs.append(subprocess.Popen([nginx, "-c", str(conf), "-g", "daemon off;"]))
        wait_http(f"http://127.0.0.1:{backends[0]}/")
        proxy_port = start_stack(procs, cli, env, tmp, backends, args.proxy_workers, None)
        proxy_pid = procs[-1].pid
        before_port = (
            start_stack(procs, cli, env, tmp, backends, args.proxy_workers, args.baseline_src)
            if args.baseline_src
            else 0
        )
        signed_port = (
            start_stack(procs, cli, env, tmp, backends, args.proxy_workers, None, signed_in=True)
            if args.signed_in
            else 0
        )
        if signed_port:
            warm = wrk(f"http://127.0.0.1:{signed_port}", 2, args.connections, script)
            if warm["non2xx"]:
                raise SystemExit("the signed-in proxy refused the bench's session cookie")
        wrk(f"http://127.0.0.1:{proxy_port}", 2, args.connections, script)  # warm up pools
        if before_port:
            wrk(f"http://127.0.0.1:{before_port}", 2, args.connections, script)
        wrk(f"http://127.0.0.1:{nginx_port}", 2, args.connections, script)
        targets = {
            "direct (one backend)": f"http://127.0.0.1:{backends[0]}",
            f"nginx hash $guild consistent ({args.nginx_workers} worker)": f"http://127.0.0.1:{nginx_port}",
            f"modbot-ring proxy ({args.proxy_workers} process)": f"http://127.0.0.1:{proxy_port}",
        }
        if before_port:
            targets[f"before: proxy ({args.proxy_workers} process)"] = (
                f"http://127.0.0.1:{before_port}"
            )
        if signed_port:
            targets[f"signed-in proxy ({args.proxy_workers} process)"] = (
                f"http://127.0.0.1:{signed_port}"
            )
        # rounds interleave the targets, and each figure is the median over rounds:
        # this VM's speed drifts, so a baseline measured minutes apart would mislead
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, url in targets.items():
                runs[name].append(wrk(url, args.duration, args.connections, script))
        rows = {
            name: {
                key: statistics.median(r[key] for r in results)
                for key in ("rps", "p50", "p99", "non2xx")
            }
            for name, results in runs.items()
        }
        rows_all = runs
        if args.profile:
            spy = subprocess.Popen(
                [
                    shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--format",
                    "raw",
                    "-o",
                    str(tmp / "profile.txt"),
                    "-d",
                    str(args.duration),
                    "--nonblocking",
                    "--pid",
                    str(proxy_pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wrk(f"http://127.0.0.1:{proxy_port}", args.duration, args.connections, script)
            spy.wait(30)
            print_profile(tmp / "profile.txt")
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    nginx_row = rows[next(k for k in rows if k.startswith("nginx"))]
    print(
        f"# proxy_bench: wrk -t1 -c{args.connections} -d{args.duration}s x {args.rounds} interleaved rounds (medians), random guild ids, 3 instant backends (their own nginx), Python {platform.python_version()}"
    )
    for name, results in rows_all.items():
        print(f"  rounds, {name}: " + ", ".join(f"{r['rps']:.0f}" for r in results) + " req/s")
    print(
        f"  {'target':<46} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'vs nginx':>9}"
    )
    for name, r in rows.items():
        print(
            f"  {name:<46} {r['rps']:>10.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} {int(r['non2xx']):>8d} {r['rps'] / nginx_row['rps']:>8.2f}x"
        )
    proxy_row = rows[next(k for k in rows if k.startswith("modbot"))]
    print(
        f"  goal: throughput >= 0.5x nginx (got {proxy_row['rps'] / nginx_row['rps']:.2f}x), p99 <= 3x nginx's (got {proxy_row['p99'] / nginx_row['p99']:.2f}x)"
    )
    signed = next((r for k, r in rows.items() if k.startswith("signed-in")), None)
    if signed is not None:
        print(
            f"  signed-in/anonymous ({len(cookie)}-byte cookie): throughput {signed['rps'] / proxy_row['rps']:.3f}x (goal >= 0.9x), "
            f"p50 {signed['p50'] / proxy_row['p50']:.2f}x, p99 {signed['p99'] / proxy_row['p99']:.2f}x"
        )
    before = next((r for k, r in rows.items() if k.startswith("before")), None)
    if before is not None:
        print(
            f"  after/before: throughput {proxy_row['rps'] / before['rps']:.3f}x, "
            f"p50 {proxy_row['p50'] / before['p50']:.2f}x, p99 {proxy_row['p99'] / before['p99']:.2f}x"
        )


if __name__ == "__main__":
    main()
