"""Migration hold window: how long writes to a guild pause while it moves.

    python benchmarks/migration_bench.py               # a guild with 100,000 message rows
    python benchmarks/migration_bench.py --rows 20000

The window runs from the source's freeze to the target's replay (it then writes live):
export, import in one verified transaction, routing flip, replay of held events.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import LocalSystem, call


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with LocalSystem(pods=2, shard_count=2) as system:
        guild = call("POST", f"{system.sim}/control/guilds", {"count": 1})["guilds"][0]["id"]
        time.sleep(1.0)
        route = call("GET", f"{system.config}/v1/guilds/{guild}/route")
        source = int(route["pod"].split("-")[1])
        target = f"gateway-{1 - source}"
        call(
            "POST",
            f"{system.sim}/control/messages",
            {"guild_id": guild, "count": args.rows},
            timeout=600,
        )
        while system.count(source, int(guild)) < args.rows:
            time.sleep(0.2)
        started = time.perf_counter()
        migration = call(
            "POST", f"{system.config}/v1/migrations", {"guild_id": guild, "to": target}
        )
        while migration["state"] not in ("done", "rolled_back"):
            time.sleep(0.05)
            migration = call("GET", f"{system.config}/v1/migrations/{migration['id']}")
        total = time.perf_counter() - started
        moved = system.count(1 - source, int(guild))
    hold = migration["detail"]["hold_seconds"]
    print(
        f"# migration_bench: one guild with {args.rows:,} message rows, SQLite pods, Python {platform.python_version()}"
    )
    print(f"  hold window (writes paused)   {hold:8.3f} s     goal <= 1 s")
    print(
        f"  whole migration               {total:8.3f} s     (includes the target joining the guild's shard)"
    )
    print(f"  rows on the target            {moved:8d}     ({migration['state']})")


if __name__ == "__main__":
    main()
