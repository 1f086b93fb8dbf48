"""Migration hold window: how long writes to a guild pause while it moves, step by step.

    python benchmarks/migration_bench.py                # 100,000 rows, 100 msg/s, 5 rounds
    python benchmarks/migration_bench.py --rows 20000 --rounds 3 --rate 50

Two local systems run side by side (loopback only): one with the pre-copy (the bulk of
the rows moves before the freeze, only the rows changed since cross inside it), and the
baseline without it (``MODBOT_MIGRATION_PRECOPY=0``: everything is exported and imported
inside the freeze). Each round moves the guild once on each system, interleaved, while a
stream of ``--rate`` messages/s goes to the moved guild; the guild moves back and forth
between two pods, so every round moves the whole guild. Medians over the rounds.

The window runs from the source's freeze to the target's replay (it then writes live):
freeze, delta export, import (one verified transaction), flip (new table version),
propagation (the target has the new table), replay of the held events; "coordination"
is the rest (state writes and reads between the steps). At the end the bench checks that
every message sent (bulk + stream) is stored exactly once on the guild's owner.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import LocalSystem, call

STEPS = ("freeze", "delta_export", "import", "flip", "held_fetch", "propagation", "replay")
GOAL = 0.100


class Stream(threading.Thread):
    """``rate`` messages/s to one guild, in batches of a tenth of a second, until stopped."""

    def __init__(self, sim: str, guild: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.sim, self.guild, self.rate = sim, guild, rate
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        if self.rate <= 0:
            return  # --rate 0: a quiet guild
        batch = max(1, round(self.rate / 10))
        started = time.perf_counter()
        while not self.stop.is_set():
            reply = call(
                "POST", f"{self.sim}/control/messages", {"guild_id": self.guild, "count": batch}
            )
            self.sent += int(reply["sent"])
            delay = started + self.sent / self.rate - time.perf_counter()
            if delay > 0:
                self.stop.wait(delay)


class Bench:
    """One local system with one big guild that moves back and forth between two pods."""

    def __init__(self, name: str, precopy: bool, rows: int) -> None:
        self.name = name
        self.rows = rows
        self.system = LocalSystem(pods=2, shard_count=2)
        self.system.env["MODBOT_MIGRATION_PRECOPY"] = "1" if precopy else "0"
        self.guild = ""
        self.owner = 0
        self.results: list[dict[str, Any]] = []
        self.stream: Stream | None = None

    def __enter__(self) -> Bench:
        system = self.system.__enter__()
        self.guild = call("POST", f"{system.sim}/control/guilds", {"count": 1})["guilds"][0]["id"]
        time.sleep(1.0)
        route = call("GET", f"{system.config}/v1/guilds/{self.guild}/route")
        self.owner = int(route["pod"].split("-")[1])
        call(
            "POST",
            f"{system.sim}/control/messages",
            {"guild_id": self.guild, "count": self.rows},
            timeout=600,
        )
        deadline = time.monotonic() + 300
        while system.count(self.owner, int(self.guild)) < self.rows:
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: rows not stored in 300 s; logs in {system.tmp}")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None:
            self.stream.stop.set()
        self.system.__exit__(*exc)

    def move(self, rate: float) -> None:
        """Move the guild to the other pod under a stream; record the migration's figures."""
        system = self.system
        self.stream = Stream(system.sim, self.guild, rate)
        self.stream.start()
        time.sleep(0.5)  # the stream is flowing before the move starts
        started = time.perf_counter()
        target = f"gateway-{1 - self.owner}"
        migration = call(
            "POST", f"{system.config}/v1/migrations", {"guild_id": self.guild, "to": target}
        )
        deadline = time.monotonic() + 120
        while migration["state"] not in ("done", "rolled_back"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: migration stuck: {migration}")
            time.sleep(0.02)
            migration = call("GET", f"{system.config}/v1/migrations/{migration['id']}")
        total = time.perf_counter() - started
        time.sleep(0.3)
        self.stream.stop.set()
        self.stream.join()
        if migration["state"] != "done":
            raise SystemExit(f"{self.name}: migration ended {migration['state']}: {migration}")
        self.owner = 1 - self.owner
        detail = migration["detail"]
        timings = detail.get("timings", {})
        hold = float(detail["hold_seconds"])
        self.results.append(
            {
                "hold": hold,
                "total": total,
                **{s: float(timings.get(s, 0.0)) for s in STEPS},
                "coordination": hold - sum(float(timings.get(s, 0.0)) for s in STEPS),
                "delta_rows": int(detail.get("copied", {}).get("message_stats", 0)),
                "held": int(detail.get("replayed", 0)),
                "sent": self.stream.sent,
            }
        )

    def stored_exactly_once(self) -> tuple[int, int]:
        """(expected, stored) message rows of the guild: bulk plus every stream message."""
        expected = self.rows + sum(r["sent"] for r in self.results)
        deadline = time.monotonic() + 30
        while True:
            stored = self.system.count(self.owner, int(self.guild))
            other = self.system.count(1 - self.owner, int(self.guild))
            if (stored == expected and other == 0) or time.monotonic() > deadline:
                return expected, stored + other
            time.sleep(0.2)


def median(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="message rows in the guild")
    parser.add_argument(
        "--rate", type=float, default=100.0, help="stream to the guild, msg/s (0: none)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="moves per protocol (median)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="only the pre-copy protocol (faster)"
    )
    args = parser.parse_args()
    if not 0 <= args.rate <= 1000 or not 1 <= args.rounds <= 20 or not 0 < args.rows <= 1_000_000:
        parser.error("--rate must be in [0, 1000], --rounds in [1, 20], --rows in (0, 1e6]")

    benches = [Bench("pre-copy", True, args.rows)]
    if not args.no_baseline:
        benches.append(Bench("without pre-copy", False, args.rows))
    for bench in benches:
        bench.__enter__()
    try:
        for _ in range(args.rounds):  # interleaved: one move per protocol per round
            for bench in benches:
                bench.move(args.rate)
        checks = [bench.stored_exactly_once() for bench in benches]
    finally:
        for bench in benches:
            bench.__exit__(None, None, None)

    print(
        f"# migration_bench: one guild with {args.rows:,} message rows, {args.rate:g} msg/s to it"
        f" during each move, {args.rounds} interleaved rounds, SQLite pods,"
        f" Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    header = "| step (median, ms) | " + " | ".join(b.name for b in benches) + " |"
    print(header)
    print("| --- |" + " ---: |" * len(benches))
    for step in (*STEPS, "coordination"):
        cells = " | ".join(f"{median(b.results, step) * 1000:.1f}" for b in benches)
        print(f"| {step.replace('_', ' ')} | {cells} |")
    cells = " | ".join(f"**{median(b.results, 'hold') * 1000:.1f}**" for b in benches)
    print(f"| **hold window** | {cells} |")
    cells = " | ".join(f"{median(b.results, 'total'):.2f} s" for b in benches)
    print(f"| whole migration | {cells} |")
    cells = " | ".join(f"{median(b.results, 'delta_rows'):.0f}" for b in benches)
    print(f"| rows imported inside the freeze | {cells} |")
    cells = " | ".join(f"{median(b.results, 'held'):.0f}" for b in benches)
    print(f"| held events replayed | {cells} |")
    for bench in benches:
        holds = ", ".join(f"{r['hold'] * 1000:.0f}" for r in bench.results)
        print(f"  {bench.name}: hold windows (ms) {holds}")
    if len(benches) == 2:
        ratio = median(benches[1].results, "hold") / max(median(benches[0].results, "hold"), 1e-9)
        print(f"  baseline / pre-copy hold window: {ratio:.1f}x")
    hold = median(benches[0].results, "hold")
    verdict = "met" if hold <= GOAL else "NOT met"
    print(f"  goal: pre-copy hold window <= {GOAL * 1000:.0f} ms, median: {verdict}")
    for bench, (expected, stored) in zip(benches, checks, strict=True):
        print(
            f"  {bench.name}: {stored} rows stored for {expected} messages sent"
            f" ({'exactly once' if stored == expected else 'MISMATCH'})"
        )


if __name__ == "__main__":
    main()
