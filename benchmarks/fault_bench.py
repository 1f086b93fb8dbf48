"""Fault figures of issue 14's acceptance list, measured on a local system, as one table.

    python benchmarks/fault_bench.py                      # everything below (~4 min)
    python benchmarks/fault_bench.py --only kill-matrix   # one scenario
    python benchmarks/fault_bench.py --hold-rows 20000    # a smaller guild for the hold window

Loopback only (simulator, config service on SQLite, gateway pods as real ``modbot-ring
serve`` processes, started by ``benchmarks/_local.py``); every wait is bounded and every
process stops at the end. Scenarios:

* ``kill-matrix``: a guild migrates under a 100 messages/s stream while its source or its
  target is killed (SIGKILL) at each step of the move, then restarted; lost = messages
  sent minus rows stored on the owner, duplicated = rows beyond those sent plus rows left
  on the other pod (a guild's rows live on one pod).
* ``pod-kill``: a pod owning guilds is killed under a 300 messages/s stream over 20 guilds
  and restarted at once, then again after 60 s down (``--pod-down``): lost / duplicated
  messages of its guilds (the figure the durable RESUME work drives to 0).
* ``hold-window``: the migration hold window of a 100k-row guild under a 100 messages/s
  stream, median of 5 (``benchmarks/migration_bench.py`` has the per-step breakdown).

Scenarios of the acceptance list with no measurement here yet are listed as such, so the
table shows what is and is not measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _local import CLI, LocalSystem, call
from migration_bench import Bench

STEPS = ("prepared", "frozen", "imported", "flipped", "replayed")
NOT_MEASURED = [
    ("disk full 30 s under load, space freed", "0 lost, /readyz 503 with reason"),
    ("100 pin changes affecting one pod", "IDENTIFYs = shards added"),
    ("drain -> plan -> apply -> verify", "clean, no dashboard gap"),
    ("PostgreSQL cut 60 s", "no pod offline, 1st write <= 2 s"),
    ("config kill -9 during a 5-move plan", "5 moves done, verify clean"),
]


class FaultSystem(LocalSystem):
    """A local system whose pods can be killed (SIGKILL) and started again on the same
    port and database, as a supervisor would."""

    def __init__(self, pods: int, shard_count: int, step_delay: float = 0.0) -> None:
        super().__init__(pods, shard_count)
        self.env["MODBOT_MIGRATION_STEP_DELAY"] = str(step_delay)
        self.info: dict[str, Any] = {}

    def __enter__(self) -> FaultSystem:
        super().__enter__()
        self.info = call("GET", f"{self.sim}/control/info")
        return self

    def _pod_index(self, i: int) -> int:
        return 2 + i  # spawn order: simulator, config service, then the pods

    def kill_pod(self, i: int) -> None:
        proc = self.procs[self._pod_index(i)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def start_pod(self, i: int) -> None:
        log = open(self.tmp / f"gateway-{i}-restart.log", "ab")  # noqa: SIM115
        args = [
            CLI,
            "serve",
            "gateway",
            "--name",
            f"gateway-{i}",
            "--port",
            str(self.pod_ports[i]),
            "--config-url",
            self.config,
            "--database",
            self.database(i),
            "--discord-api-url",
            self.info["api_url"],
            "--discord-gateway-url",
            self.info["gateway_url"],
            "--identify-interval",
            "0",
        ]
        self.procs[self._pod_index(i)] = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=log
        )
        self.wait(f"{self.pod_url(i)}/readyz", timeout=60)

    def guild_rows(self, guild: str) -> tuple[list[int], int]:
        """(rows per pod, rows of the guild in total)."""
        rows = [self.count(i, int(guild)) for i in range(self.pods)]
        return rows, sum(rows)


class Stream(threading.Thread):
    """``rate`` messages/s spread over ``guilds``, in tenth-of-a-second batches."""

    def __init__(self, sim: str, guilds: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.sim, self.guilds, self.rate = sim, guilds, rate
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        per_guild = max(1, round(self.rate / 10 / len(self.guilds)))
        started = time.perf_counter()
        while not self.stop.is_set():
            reply = call(
                "POST",
                f"{self.sim}/control/messages",
                {"guild_ids": self.guilds, "count": per_guild},
            )
            self.sent += int(reply["sent"])
            delay = started + self.sent / self.rate - time.perf_counter()
            if delay > 0:
                self.stop.wait(delay)

    def finish(self) -> int:
        self.stop.set()
        self.join(30)
        return self.sent


def settle(system: FaultSystem, guilds: list[str], expected: int, timeout: float = 20) -> int:
    """Rows stored for ``guilds`` once they stop changing (or ``expected`` is reached)."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        total = sum(system.guild_rows(g)[1] for g in guilds)
        if total == expected or time.monotonic() > deadline:
            return total
        if total == last:
            time.sleep(0.5)
        last = total
        time.sleep(0.2)


def kill_matrix(args: argparse.Namespace) -> list[tuple[str, str, str, bool]]:
    """Per (victim, step): a migration under a stream with that pod killed at that step."""
    rows: list[tuple[str, str, str, bool]] = []
    total_lost = total_dup = 0
    with FaultSystem(pods=2, shard_count=4, step_delay=0.5) as system:
        guild = call("POST", f"{system.sim}/control/guilds", {"count": 1})["guilds"][0]["id"]
        time.sleep(1.0)
        sent = int(
            call("POST", f"{system.sim}/control/messages", {"guild_id": guild, "count": 100})[
                "sent"
            ]
        )
        settle(system, [guild], sent)
        for step in STEPS:
            for victim in ("source", "target"):
                route = call("GET", f"{system.config}/v1/guilds/{guild}/route")
                source = int(route["pod"].split("-")[1])
                target = 1 - source
                case_start = sent
                stream = Stream(system.sim, [guild], 100)
                stream.start()
                time.sleep(0.3)
                migration = call(
                    "POST",
                    f"{system.config}/v1/migrations",
                    {"guild_id": guild, "to": f"gateway-{target}"},
                )
                mid = migration["id"]
                deadline = time.monotonic() + 30
                while migration["state"] != step:
                    if migration["state"] in ("done", "rolled_back") or time.monotonic() > deadline:
                        stream.finish()
                        raise SystemExit(f"migration never stopped at {step}: {migration}")
                    time.sleep(0.01)
                    migration = call("GET", f"{system.config}/v1/migrations/{mid}")
                pod = source if victim == "source" else target
                system.kill_pod(pod)
                time.sleep(0.8)
                system.start_pod(pod)
                deadline = time.monotonic() + 90
                while migration["state"] not in ("done", "rolled_back"):
                    if time.monotonic() > deadline:
                        stream.finish()
                        raise SystemExit(f"migration stuck after the kill: {migration}")
                    time.sleep(0.05)
                    migration = call("GET", f"{system.config}/v1/migrations/{mid}")
                time.sleep(0.5)
                sent += stream.finish()
                settle(system, [guild], sent)
                per_pod, _ = system.guild_rows(guild)
                owner = target if migration["state"] == "done" else source
                # the guild's rows so far (cumulative); this case adds what changed since
                lost = max(0, sent - per_pod[owner]) - total_lost
                dup = max(0, per_pod[owner] - sent) + per_pod[1 - owner] - total_dup
                total_lost += lost
                total_dup += dup
                rows.append(
                    (
                        f"migration: {victim} killed at {step}",
                        f"{lost} lost, {dup} duplicated of {sent - case_start} sent"
                        f" ({migration['state']})",
                        "0 lost, 0 duplicated",
                        lost == 0 and dup == 0,
                    )
                )
    rows.append(
        (
            "migration kill matrix, total",
            f"{total_lost} lost, {total_dup} duplicated",
            "0 lost, 0 duplicated",
            total_lost == 0 and total_dup == 0,
        )
    )
    return rows


def pod_kill(args: argparse.Namespace) -> list[tuple[str, str, str, bool]]:
    """kill -9 of a pod under 300 msg/s over 20 guilds, restarted after ``--pod-down``
    seconds each (0: at once, as a supervisor does; 60: inside the resume window)."""
    rows = []
    for pause in args.pod_down:
        with FaultSystem(pods=2, shard_count=4) as system:
            guilds = [
                g["id"]
                for g in call("POST", f"{system.sim}/control/guilds", {"count": 20})["guilds"]
            ]
            time.sleep(1.0)
            stream = Stream(system.sim, guilds, 300)
            stream.start()
            time.sleep(2.0)
            system.kill_pod(0)
            killed = time.perf_counter()
            time.sleep(pause)
            system.start_pod(0)
            down = time.perf_counter() - killed
            time.sleep(3.0)
            sent = stream.finish()
            stored = settle(system, guilds, sent, timeout=30)
        lost, dup = max(0, sent - stored), max(0, stored - sent)
        rows.append(
            (
                f"pod kill -9 under 300 msg/s, down {down:.1f} s",
                f"{lost} lost, {dup} duplicated of {sent}",
                "0 lost, 0 duplicated",
                lost == 0 and dup == 0,
            )
        )
    return rows


def hold_window(args: argparse.Namespace) -> list[tuple[str, str, str, bool]]:
    """Median hold window of ``--hold-rounds`` moves under a 100 msg/s stream."""
    bench = Bench("pre-copy", True, args.hold_rows)
    with bench:
        for _ in range(args.hold_rounds):
            bench.move(100)
        expected, stored = bench.stored_exactly_once()
    holds = [r["hold"] for r in bench.results]
    median = statistics.median(holds)
    return [
        (
            f"migration hold window, {args.hold_rows:,} rows, 100 msg/s",
            f"{median * 1000:.0f} ms median of {len(holds)}"
            f" ({', '.join(f'{h * 1000:.0f}' for h in holds)})",
            "<= 100 ms",
            median <= 0.100,
        ),
        (
            "  rows after the hold-window moves",
            f"{stored} stored for {expected} sent",
            "equal",
            stored == expected,
        ),
    ]


SCENARIOS: dict[str, Callable[[argparse.Namespace], list[tuple[str, str, str, bool]]]] = {
    "kill-matrix": kill_matrix,
    "pod-kill": pod_kill,
    "hold-window": hold_window,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--hold-rows", type=int, default=100_000)
    parser.add_argument("--hold-rounds", type=int, default=5)
    parser.add_argument(
        "--pod-down",
        type=float,
        nargs="+",
        default=[0.0, 60.0],
        help="seconds a killed pod stays down before it restarts (default: 0 and 60)",
    )
    args = parser.parse_args()
    if not 0 < args.hold_rows <= 1_000_000 or not 1 <= args.hold_rounds <= 20:
        parser.error("--hold-rows must be in (0, 1e6], --hold-rounds in [1, 20]")
    if not all(0 <= d <= 110 for d in args.pod_down):
        parser.error("--pod-down must be in [0, 110] s (the simulator's resume window is 120 s)")
    table: list[tuple[str, str, str, bool]] = []
    for name in args.only or list(SCENARIOS):
        started = time.perf_counter()
        table += SCENARIOS[name](args)
        print(f"  ({name}: {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print(
        f"# fault_bench: local system on loopback, SQLite pods and config,"
        f" Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print("| fault | measured | goal | met |")
    print("| --- | --- | --- | --- |")
    for fault, figure, goal, ok in table:
        print(f"| {fault} | {figure} | {goal} | {'yes' if ok else '**no**'} |")
    if not args.only:
        for fault, goal in NOT_MEASURED:
            print(f"| {fault} | not measured here yet | {goal} | - |")


if __name__ == "__main__":
    main()
