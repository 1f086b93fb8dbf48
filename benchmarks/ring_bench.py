"""Ring benchmark: lookup rate, balance, movement and build cost, against uhashring.

    python benchmarks/ring_bench.py            # 1,000,000 keys (the reported run)
    python benchmarks/ring_bench.py --keys 200000

Everything is measured in one run on the same keys, so ratios survive a noisy machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence

from uhashring import HashRing as UHashRing

from modbot_ring import HashRing, Pod, RoutingTable

PODS = [f"gateway-{i}" for i in range(10)]


def rate(fn: Callable[[int], object], keys: Sequence[int], repeats: int = 3) -> float:
    """Best-of-N lookups per second."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for key in keys:
            fn(key)
        best = min(best, time.perf_counter() - start)
    return len(keys) / best


def peak_to_mean(owners: Sequence[str], nodes: int) -> float:
    counts = Counter(owners)
    return max(counts.values()) / (len(owners) / nodes)


def name_sets() -> list[list[str]]:
    """20 pod-name sets, including the ones that break naive vnode naming."""
    sets = [
        [f"gateway-{i}" for i in range(10)],
        [f"gateway-{i}" for i in range(1, 11)],  # gateway-1 + "0" vs gateway-10
        [f"gateway-{i}" for i in range(10, 20)],
        [f"gateway-{i}" for i in (1, 11, 111, 2, 12, 112, 3, 13, 113, 4)],
        [f"gw{i}" for i in range(10)],
        [f"modbot-gateway-{i}" for i in range(10)],
        [f"gateway-{i}.gateway-internal.default.svc" for i in range(10)],
        [f"10.0.0.{i}:8701" for i in range(10)],
    ]
    rnd = random.Random(20)
    while len(sets) < 20:
        prefix = rnd.choice(["gateway", "pod", "shard", "bot", "g"])
        start = rnd.randrange(0, 500)
        sets.append([f"{prefix}-{start + i}" for i in range(10)])
    return sets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--pins", type=int, default=1_000_000, help="pins for the build/memory row")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    rnd = random.Random(42)
    keys = [rnd.getrandbits(64) or 1 for _ in range(args.keys)]
    pins = {rnd.getrandbits(64) or 1: PODS[i % 10] for i in range(1000)}
    results: dict[str, object] = {}
    rows: list[tuple[str, str, str]] = []

    def row(name: str, value: str, note: str = "") -> None:
        rows.append((name, value, note))
        print(f"  {name:<58} {value:>14}  {note}", flush=True)

    print(
        f"# ring_bench: {args.keys:,} keys, 10 pods, Python {platform.python_version()}, {platform.machine()}"
    )

    # -- lookup rate ----------------------------------------------------------------
    uh = UHashRing(PODS)
    uh_rate = rate(uh.get_node, keys, repeats=1)
    uh_owners = [uh.get_node(k) for k in keys]
    row(
        "uhashring 2.5 get_node (baseline)",
        f"{uh_rate / 1e6:.2f} M/s",
        f"peak/mean {peak_to_mean(uh_owners, 10):.3f}",
    )
    results["uhashring_rate"] = uh_rate

    pods = [Pod(p) for p in PODS]
    for label, shard_count, goal in (
        ("shard-keyed, 1,024 shards", 1024, 5),
        ("guild-keyed", None, 3),
    ):
        table = RoutingTable(pods, shard_count=shard_count, pins=pins)
        r = rate(table.owner, keys)
        ratio = r / uh_rate
        row(
            f"RoutingTable.owner, {label}, 1,000 pins",
            f"{r / 1e6:.2f} M/s",
            f"{ratio:.1f}x uhashring (goal >= {goal}x)",
        )
        results[f"owner_rate_{shard_count or 'guild'}"] = r
        results[f"owner_ratio_{shard_count or 'guild'}"] = ratio
    table = RoutingTable(pods, shard_count=1024, pins=pins)
    r = rate(table.route, keys[:200_000], repeats=1)
    row(
        "RoutingTable.route (parse + Route object), shard-keyed",
        f"{r / 1e6:.2f} M/s",
        "full explanation, not the hot path",
    )
    ketama = HashRing(PODS, algorithm="ketama")
    r = rate(ketama.get, keys[:200_000], repeats=1)
    row("HashRing ketama mode .get", f"{r / 1e6:.2f} M/s", f"{r / uh_rate:.1f}x uhashring")

    # -- balance --------------------------------------------------------------------
    worst, worst_set = 0.0, ""
    for names in name_sets():
        ring = HashRing(names).getter()
        pm = peak_to_mean([ring(k) for k in keys], 10)
        if pm > worst:
            worst, worst_set = pm, names[0]
    row(
        "guild-keyed peak/mean, worst of 20 pod-name sets",
        f"{worst:.4f}",
        f"goal <= 1.02 (worst set starts {worst_set})",
    )
    results["balance_worst"] = worst

    weights = {p: (2.0 if i % 3 == 0 else 1.0) for i, p in enumerate(PODS)}
    ring = HashRing(weights)
    counts = Counter(ring.getter()(k) for k in keys)
    total_w = sum(weights.values())
    err = max(abs(counts[p] / len(keys) / (w / total_w) - 1) for p, w in weights.items())
    row("weights 2:1 honoured, worst relative error", f"{err * 100:.2f}%", "goal <= 2%")
    results["weight_error"] = err

    for shards in (256, 1024):
        t = RoutingTable(pods, shard_count=shards)
        pm_shards = peak_to_mean([t.shard_owner(s) or "" for s in range(shards)], 10)
        pm_keys = peak_to_mean([t.owner(k) for k in keys], 10)
        row(
            f"shard-keyed {shards} shards: peak/mean shards | guilds",
            f"{pm_shards:.3f} | {pm_keys:.3f}",
            "granularity: the planner evens it",
        )
        results[f"shard_balance_{shards}"] = pm_keys

    # -- movement -------------------------------------------------------------------
    base = HashRing(PODS).getter()
    before = [base(k) for k in keys]
    grown = HashRing([*PODS, "gateway-10"]).getter()
    after = [grown(k) for k in keys]
    moved = sum(a != b for a, b in zip(before, after)) / len(keys)
    between = sum(a != b and b != "gateway-10" for a, b in zip(before, after))
    row(
        "add gateway-10: keys moved / ideal 1/11",
        f"{moved * 11:.3f}x",
        f"{moved * 100:.2f}% moved, {between} between old pods (goal <= 1.1x, 0)",
    )
    results["add_moved_ratio"], results["add_between"] = moved * 11, between
    shrunk = HashRing([p for p in PODS if p != "gateway-3"]).getter()
    after = [shrunk(k) for k in keys]
    moved = sum(a != b for a, b in zip(before, after)) / len(keys)
    between = sum(a != b and a != "gateway-3" for a, b in zip(before, after))
    row(
        "remove gateway-3: keys moved / ideal 1/10",
        f"{moved * 10:.3f}x",
        f"{moved * 100:.2f}% moved, {between} between others (goal <= 1.1x, 0)",
    )
    results["remove_moved_ratio"], results["remove_between"] = moved * 10, between

    # -- build cost -----------------------------------------------------------------
    from modbot_ring import hashring

    hashring._slot_table.cache_clear()
    start = time.perf_counter()
    HashRing([f"build-{i}" for i in range(10)])
    row(
        "ring build, 10 pods (655,360 points -> 2**20 slots)",
        f"{time.perf_counter() - start:.2f} s",
        "once per membership; cached",
    )
    big_pins = {rnd.getrandbits(63) or 1: PODS[i % 10] for i in range(args.pins)}
    gc.collect()
    start = time.perf_counter()
    big = RoutingTable(pods, shard_count=1024, pins=big_pins)
    build_s = time.perf_counter() - start
    del big
    gc.collect()
    tracemalloc.start()  # memory in a second build: tracemalloc slows what it watches
    big = RoutingTable(pods, shard_count=1024, pins=big_pins)
    size, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    row(
        f"table with {args.pins:,} pins: build",
        f"{build_s:.2f} s",
        f"retained {size / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB",
    )
    text = big.to_json()
    start = time.perf_counter()
    RoutingTable.from_json(text)
    row(
        f"table with {args.pins:,} pins: from_json",
        f"{time.perf_counter() - start:.2f} s",
        f"{len(text) / 2**20:.0f} MiB of JSON",
    )
    r = rate(big.owner, keys[:200_000], repeats=1)
    row(f"owner() with {args.pins:,} pins", f"{r / 1e6:.2f} M/s", f"{r / uh_rate:.1f}x uhashring")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
