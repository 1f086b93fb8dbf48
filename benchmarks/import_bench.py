"""import-monolith throughput: a mod-bot database into a 3-pod local system.

    python benchmarks/import_bench.py                       # 50 guilds, 200,000 messages, 3 rounds
    python benchmarks/import_bench.py --messages 50000 --rounds 2

Each round imports the whole generated database (every table of the facts file) with
``modbot-ring import-monolith`` into three gateway pods (loopback only), then empties the
pods through the migration API (``DELETE /internal/guilds/G?force=1``) for the next round.
The rate is rows written / the importer's own time (plan pass included; Python start-up
excluded, shown separately as wall time). The baseline, interleaved in the same rounds,
is the ceiling of the old design: the same rows copied by one process into one SQLite
file (``INSERT`` in one transaction, no network, no checksums). Goal: >= 20,000 rows/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

from _local import ADMIN, CLI, MIGRATION, LocalSystem, call  # noqa: E402
from monolith_gen import generate  # noqa: E402

GOAL = 20_000


def baseline(source: Path, target: Path) -> tuple[int, float]:
    """Every row of every table copied into one SQLite file, one transaction."""
    target.unlink(missing_ok=True)
    started = time.perf_counter()
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    rows = 0
    tables = [r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    dst.execute("BEGIN")
    for t in tables:
        cols = [r[1] for r in src.execute(f'PRAGMA table_info("{t}")')]
        dst.execute(f'CREATE TABLE "{t}" ({", ".join(cols)})')
        marks = ", ".join("?" for _ in cols)
        cur = src.execute(f'SELECT * FROM "{t}"')
        while chunk := cur.fetchmany(5000):
            dst.executemany(f'INSERT INTO "{t}" VALUES ({marks})', chunk)
            rows += len(chunk)
    dst.execute("COMMIT")
    src.close()
    dst.close()
    return rows, time.perf_counter() - started


def empty_pods(system: LocalSystem, guilds: list[int]) -> None:
    for i in range(system.pods):
        for gid in guilds:
            call(
                "DELETE",
                f"{system.pod_url(i)}/internal/guilds/{gid}?epoch=0&force=1",
                token=MIGRATION,
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--guilds", type=int, default=50)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk-rows", type=int, default=5000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="modbot-import-bench-"))
    source = tmp / "modbot.db"
    info = generate(source, guilds=args.guilds, messages=args.messages)
    total = sum(n for t, n in info["counts"].items() if t not in ("users", "sessions"))
    print(
        f"source: {args.guilds} guilds, {info['counts']['message_stats']:,} message rows, {total:,} rows in all"
    )
    results: list[tuple[float, float, float]] = []
    with LocalSystem(pods=3, shard_count=4) as system:
        env = {
            **os.environ,
            "MODBOT_CONFIG_URL": system.config,
            "MODBOT_ADMIN_TOKEN": ADMIN,
            "MODBOT_MIGRATION_TOKEN": MIGRATION,
        }
        deadline = time.time() + 60
        while len(call("GET", f"{system.config}/v1/pods")["pods"]) < 3 and time.time() < deadline:
            time.sleep(0.2)
        print(f"{'round':>5}  {'import rows/s':>14}  {'wall s':>7}  {'baseline rows/s':>16}  ratio")
        for r in range(1, args.rounds + 1):
            base_rows, base_s = baseline(source, tmp / "baseline.db")
            started = time.perf_counter()
            proc = subprocess.run(
                [
                    CLI,
                    "import-monolith",
                    str(source),
                    "--json",
                    "--no-progress",
                    "--chunk-rows",
                    str(args.chunk_rows),
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=1800,
            )
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise SystemExit(f"import failed: {proc.stderr.strip()}")
            report = json.loads(proc.stdout)
            for line in proc.stderr.splitlines():
                if "resuming" in line:
                    print(f"  ({line.removeprefix('modbot-ring: ')})")
            written = sum(sum(c.values()) for c in report["rows_written"].values())
            if written != total:
                raise SystemExit(f"round {r}: {written} rows written, {total} expected")
            rate, base_rate = written / report["seconds"], base_rows / base_s
            results.append((rate, wall, base_rate))
            print(
                f"{r:>5}  {rate:>14,.0f}  {wall:>7.2f}  {base_rate:>16,.0f}  {rate / base_rate:.2f}x"
            )
            empty_pods(system, info["guilds"])
    rate = statistics.median(x[0] for x in results)
    base = statistics.median(x[2] for x in results)
    print(
        f"median: {rate:,.0f} rows/s into 3 pods ({'meets' if rate >= GOAL else 'MISSES'} the"
        f" {GOAL:,} rows/s goal); baseline one-file copy {base:,.0f} rows/s; ratio {rate / base:.2f}x"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
