"""Gateway throughput: MESSAGE_CREATE events one pod persists through a real discord.py
client, from the simulator, with nothing lost.

    python benchmarks/gateway_bench.py                 # 50,000 events over 20 guilds
    python benchmarks/gateway_bench.py --events 100000

The pod runs pinned to one CPU (taskset -c 0) and the simulator elsewhere. Strategy: the
pod's batch writer commits up to 1,000 rows per transaction or every 20 ms (SQLite WAL,
synchronous=NORMAL); message rows are idempotent on (guild_id, message_id).
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
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--guilds", type=int, default=20)
    args = parser.parse_args()
    per_guild = args.events // args.guilds
    with LocalSystem(pods=1, shard_count=1, cpu_for_pods="0") as system:
        guilds = [
            g["id"]
            for g in call("POST", f"{system.sim}/control/guilds", {"count": args.guilds})["guilds"]
        ]
        time.sleep(1.0)  # the pod sees the new guilds (GUILD_CREATE)
        started = time.perf_counter()
        sent = call(
            "POST",
            f"{system.sim}/control/messages",
            {"guild_ids": guilds, "count": per_guild},
            timeout=600,
        )
        injected = time.perf_counter() - started
        total = sent["sent"]
        stored = 0
        deadline = time.time() + 300
        while time.time() < deadline:
            stored = system.count(0)
            if stored >= total:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    print(
        f"# gateway_bench: {total:,} MESSAGE_CREATE over {args.guilds} guilds, 1 pod on 1 CPU, Python {platform.python_version()}"
    )
    print(f"  simulator sent all events in   {injected:8.2f} s")
    print(f"  all persisted after            {elapsed:8.2f} s")
    print(f"  persisted events/s             {stored / elapsed:8.0f}      goal >= 5,000")
    print(f"  lost (sent - stored)           {total - stored:8d}      goal 0")


if __name__ == "__main__":
    main()
