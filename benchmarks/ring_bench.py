"""Ring benchmark: lookup rate, balance, movement and build cost, against uhashring.

    python benchmarks/ring_bench.py            # the reported run (1,000,000 keys, 7 rounds)
    python benchmarks/ring_bench.py --quick    # CI smoke: small sizes, same table shape
    python benchmarks/ring_bench.py --algorithm slots   # the pure-function ring instead

``--algorithm`` (default ``quota``, the control plane's default) picks the ring that
every section measures; ketama mode is measured in the lookups either way.

Fairness: every rate is measured in interleaved rounds over the same keys (within a
round, contenders alternate every 10,000 keys, the order rotating) and every ratio is
the median rate of one side over the median rate of the other. Per-round figures are
printed so that the spread on a noisy machine is visible.

Balance and movement are exact: they compare the key-space share each node owns (the
slot table), not a sample of keys, so they do not carry sampling noise.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from operator import ne

from uhashring import HashRing as UHashRing  # type: ignore[import-untyped]

from modbot_ring import HashRing, Pod, RoutingTable
from modbot_ring import hashring as hashring_module

PODS = [f"gateway-{i}" for i in range(10)]


BLOCK = 10_000  # keys per timed block: contenders alternate block by block


def timed_block(fn: Callable[[int], object], keys: Sequence[int]) -> float:
    start = time.perf_counter()
    for key in keys:
        fn(key)
    return time.perf_counter() - start


def interleaved(
    contenders: dict[str, Callable[[int], object]], keys: Sequence[int], rounds: int
) -> dict[str, list[float]]:
    """Per-round rates (lookups/s) of every contender over the same keys.

    Each round walks the keys in blocks of BLOCK and times every contender on each
    block before moving on (the order rotating per block), so a burst of load from a
    neighbour on this shared machine lands on all sides alike instead of on whichever
    contender happened to run during it."""
    names = list(contenders)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        gc.collect()
        spent = dict.fromkeys(names, 0.0)
        for b, at in enumerate(range(0, len(keys), BLOCK)):
            block = keys[at : at + BLOCK]
            for name in names[b % len(names) :] + names[: b % len(names)]:
                spent[name] += timed_block(contenders[name], block)
        for name in names:
            rates[name].append(len(keys) / spent[name])
    return rates


def name_sets() -> list[list[str]]:
    """20 pod-name sets of 3..100 pods, including names that break naive vnode naming
    (``gateway-1`` + ``0`` vs ``gateway-10``) and long or address-like names."""
    sizes = [3, 4, 5, 8, 10, 10, 10, 10, 12, 16, 20, 24, 30, 40, 50, 60, 64, 75, 90, 100]
    patterns: list[Callable[[int], str]] = [
        lambda i: f"gateway-{i}",
        lambda i: f"gateway-{i + 1}",
        lambda i: f"gw{i}",
        lambda i: f"modbot-gateway-{i}",
        lambda i: f"gateway-{i}.gateway-internal.default.svc",
        lambda i: f"10.0.{i // 256}.{i % 256}:8701",
        lambda i: f"gateway-{(1, 11, 111, 2, 12, 112, 3, 13, 113, 4)[i]}",
    ]
    rnd = random.Random(20)
    sets = []
    for k, n in enumerate(sizes):
        if k < len(patterns):
            sets.append([patterns[k](i) for i in range(n)])
        else:
            prefix = rnd.choice(["gateway", "pod", "shard", "bot", "g"])
            start = rnd.randrange(0, 500)
            sets.append([f"{prefix}-{start + i}" for i in range(n)])
    return sets


def peak_to_mean(ring: HashRing) -> float:
    share = ring.share()
    total = sum(ring.nodes.values())
    return max(share[n] / (w / total) for n, w in ring.nodes.items())


def build_cost(
    pods: int, weight: float | str, repeats: int, algorithm: str
) -> tuple[float, float, float]:
    """Median wall and CPU seconds of ``repeats`` cold builds, and the peak MiB of one
    more build under tracemalloc (which slows what it watches, hence a separate run)."""
    names = [f"gateway-{i}" for i in range(pods)]
    if weight == "mixed":
        spec = {n: (1.0 if i % 2 else 2.0) for i, n in enumerate(names)}
    else:
        spec = dict.fromkeys(names, float(weight))
    times, cpu = [], []
    for _ in range(repeats):
        hashring_module._slot_table.cache_clear()
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        HashRing(spec, algorithm=algorithm)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    hashring_module._slot_table.cache_clear()
    gc.collect()
    tracemalloc.start()
    HashRing(spec, algorithm=algorithm)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hashring_module._slot_table.cache_clear()
    return statistics.median(times), statistics.median(cpu), peak / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: small sizes")
    parser.add_argument("--keys", type=int, default=None, help="lookup keys (1,000,000)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (7)")
    parser.add_argument("--pins", type=int, default=None, help="pins of the big table (1M)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--algorithm", choices=("quota", "slots"), default="quota", help="the ring measured"
    )
    args = parser.parse_args(argv)
    algo = args.algorithm

    def ring(nodes: dict[str, float] | list[str]) -> HashRing:
        return HashRing(nodes, algorithm=algo)

    quick = args.quick
    n_keys = args.keys or (20_000 if quick else 1_000_000)
    rounds = args.rounds or (3 if quick else 7)
    n_pins = args.pins or (20_000 if quick else 1_000_000)
    build_sizes = (3, 10) if quick else (3, 10, 30, 100, 1000)
    sets = name_sets()[:4] if quick else name_sets()

    rnd = random.Random(42)
    keys = [rnd.getrandbits(63) or 1 for _ in range(n_keys)]
    pins = {rnd.getrandbits(63) or 1: PODS[i % 10] for i in range(1000)}
    results: dict[str, object] = {}

    def row(name: str, value: str, note: str = "") -> None:
        print(f"  {name:<56} {value:>14}  {note}", flush=True)

    print(
        f"# ring_bench{' --quick' if quick else ''}: {n_keys:,} keys, {rounds} interleaved"
        f" rounds (medians), 10 pods, algorithm {algo},"
        f" Python {platform.python_version()}, {platform.machine()}"
    )

    # -- build cost ---------------------------------------------------------------------
    print("## build (cold: cache cleared), median time and tracemalloc peak")
    print("   (ratio: CPU time over the same pod count's weight-1 build, in this run)")
    for count in build_sizes:
        base_cpu = 0.0
        for weight in (1, 100, "mixed"):
            repeats = 1 if count >= 1000 or weight == "mixed" else 3 if quick else 5
            seconds, cpu, mib = build_cost(count, weight, repeats, algo)
            label = "weights 2:1 mixed" if weight == "mixed" else f"weight {weight}"
            base_cpu = base_cpu or cpu
            row(
                f"HashRing build, {count} pods, {label}",
                f"{seconds:.3f} s",
                f"cpu {cpu:.3f} s ({cpu / base_cpu:.1f}x), peak {mib:.1f} MiB (x{repeats})",
            )
            results[f"build_{count}_{weight}"] = {"seconds": seconds, "cpu": cpu, "peak_mib": mib}
    start = time.perf_counter()
    UHashRing([f"gateway-{i}" for i in range(10)])
    row("uhashring 10 nodes build (reference)", f"{time.perf_counter() - start:.3f} s")

    # -- lookups ------------------------------------------------------------------------
    print("## lookups: rounds interleaved with uhashring on the same keys")
    uh = UHashRing(PODS)
    pods = [Pod(p) for p in PODS]
    shard_table = RoutingTable(pods, shard_count=1024, pins=pins, algorithm=algo)
    guild_table = RoutingTable(pods, pins=pins, algorithm=algo)
    big_pins = {rnd.getrandbits(63) or 1: PODS[i % 10] for i in range(n_pins)}
    gc.collect()
    start = time.perf_counter()
    big = RoutingTable(pods, shard_count=1024, pins=big_pins, algorithm=algo)
    big_build = time.perf_counter() - start
    ketama = HashRing(PODS, algorithm="ketama")
    short = keys[: max(1, len(keys) // 5)]
    contenders: dict[str, Callable[[int], object]] = {
        "uhashring": uh.get_node,
        "shard": shard_table.owner,
        "guild": guild_table.owner,
        "bigpins": big.owner,
        "ketama": ketama.get,
    }
    rates = interleaved(contenders, keys, rounds)
    uh_short = interleaved({"uhashring": uh.get_node, "route": shard_table.route}, short, rounds)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, label, goal in (
        ("uhashring", "uhashring 2.5 get_node (baseline)", None),
        ("shard", "RoutingTable.owner, shard-keyed (1,024), 1,000 pins", 10),
        ("guild", "RoutingTable.owner, guild-keyed, 1,000 pins", 5),
        ("bigpins", f"RoutingTable.owner, shard-keyed, {n_pins:,} pins", 3),
        ("ketama", "HashRing ketama mode .get", None),
    ):
        ratio = medians[name] / medians["uhashring"]
        note = "" if name == "uhashring" else f"{ratio:.1f}x uhashring"
        if goal:
            note += f" (goal >= {goal}x)"
        row(label, f"{medians[name] / 1e6:.2f} M/s", note)
        print(f"      rounds: {', '.join(f'{r / 1e6:.2f}' for r in rates[name])} M/s")
        results[f"rate_{name}"] = medians[name]
        results[f"ratio_{name}"] = ratio
    route_ratio = statistics.median(uh_short["route"]) / statistics.median(uh_short["uhashring"])
    row(
        "RoutingTable.route (parse + Route object), shard-keyed",
        f"{statistics.median(uh_short['route']) / 1e6:.2f} M/s",
        f"{route_ratio:.1f}x uhashring; the explanation, not the hot path",
    )
    row(f"table with {n_pins:,} pins: build", f"{big_build:.2f} s")

    # -- balance ------------------------------------------------------------------------
    print("## balance (exact key-space shares)")
    worst, worst_set = 0.0, ""
    per_size: list[str] = []
    for names in sets:
        pm = peak_to_mean(ring(names))
        per_size.append(f"{len(names)}:{pm:.3f}")
        if pm > worst:
            worst, worst_set = pm, f"{len(names)} pods from {names[0]}"
    row(
        f"peak/mean, worst of {len(sets)} pod-name sets (3..{max(map(len, sets))} pods)",
        f"{worst:.4f}",
        f"worst: {worst_set} (goal <= 1.02)",
    )
    print(f"      per set (pods:peak/mean): {' '.join(per_size)}")
    results["balance_worst"] = worst
    small = [peak_to_mean(ring(n)) for n in sets if len(n) <= 30]
    row("peak/mean, worst of the sets with <= 30 pods", f"{max(small):.4f}")
    floor, chance = independent_floor([len(n) for n in sets], 50 if quick else 400)
    row(
        "reference: slots owned independently (per-slot HRW)",
        f"{floor:.4f}",
        f"median worst of the same sizes over 2**{hashring_module.SLOT_BITS} slots;"
        f" P(<= 1.02) = {chance:.2f}",
    )
    results["balance_independent_floor"] = floor
    row("uhashring peak/mean, 10 pods (sampled keys)", f"{_sampled_pm(uh.get_node, keys):.4f}")

    spec = {p: (2.0 if i % 3 == 0 else 1.0) for i, p in enumerate(PODS)}
    share = ring(spec).share()
    total = sum(spec.values())
    err = max(abs(share[p] / (w / total) - 1) for p, w in spec.items())
    row("weights 2:1 honoured, worst relative error", f"{err * 100:.2f}%", "goal <= 2%")
    results["weight_error"] = err
    others = []
    for k in range(1 if quick else 7):
        spec_k = {f"p{k}-{i}": w for i, w in enumerate(spec.values())}
        share_k = ring(spec_k).share()
        others.append(max(abs(share_k[p] / (w / total) - 1) for p, w in spec_k.items()))
    row(
        f"  same weights, {len(others)} other ten-pod name sets",
        f"{statistics.median(others) * 100:.2f}%",
        f"median of their worst; max {max(others) * 100:.2f}%",
    )
    for shards in (256, 1024):
        t = RoutingTable(pods, shard_count=shards, algorithm=algo)
        owners = [t.shard_owner(s) for s in range(shards)]
        pm = max(owners.count(p) for p in PODS) / (shards / 10)
        row(
            f"shard-keyed {shards} shards: peak/mean of shards", f"{pm:.3f}", "the planner evens it"
        )

    # -- movement -----------------------------------------------------------------------
    print("## movement (exact, over the slot table)")
    worst_add = worst_remove = 0.0
    between = 0
    for names in sets:
        base = ring(names)
        grown = base.with_node("joiner-x")
        moved = base.moved_fraction(grown)
        worst_add = max(worst_add, moved * len(grown))
        between += sum(a != b and b != "joiner-x" for a, b in zip(base._table, grown._table))
        gone = names[len(names) // 2]
        shrunk = base.without_node(gone)
        worst_remove = max(worst_remove, base.moved_fraction(shrunk) * len(names))
        between += sum(a != b and a != gone for a, b in zip(base._table, shrunk._table))
    row(
        "add one pod: moved / ideal 1/(n+1), worst of the sets",
        f"{worst_add:.3f}x",
        f"{between} slots moved between surviving pods in all adds and removes (goal 0)",
    )
    row(
        "remove one pod: moved / ideal 1/n, worst of the sets",
        f"{worst_remove:.3f}x",
        "goal <= 1.05x (what moves is exactly the pod's share)",
    )
    results["add_moved_ratio"], results["remove_moved_ratio"] = worst_add, worst_remove
    results["moved_between_survivors"] = between
    if algo == "quota":
        history(rnd, 30 if quick else 200, row, results)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def history(
    rnd: random.Random, steps: int, row: Callable[..., None], results: dict[str, object]
) -> None:
    """A quota ring's placement is derived change by change: after many random adds,
    removes and re-weightings, is it still exact, and did each step move only what the
    counts required?"""
    nodes = {f"gateway-{i}": 1.0 for i in range(10)}
    current = HashRing(nodes, algorithm="quota")
    worst_pm, excess, serial = 1.0, 0, 10
    for _ in range(steps):
        action = rnd.random()
        if action < 0.4 or len(nodes) < 4:
            nodes[f"gateway-{serial}"] = rnd.choice((1.0, 1.0, 2.0, 0.5))
            serial += 1
        elif action < 0.75:
            del nodes[rnd.choice(sorted(nodes))]
        else:
            nodes[rnd.choice(sorted(nodes))] = rnd.choice((0.5, 1.0, 2.0, 3.0))
        after = HashRing(nodes, algorithm="quota", previous=current)
        before_units, after_units = units(current), units(after)  # 1/16 of the slots
        old, new = Counter(before_units), Counter(after_units)
        needed = sum(max(0, new[n] - old.get(n, 0)) for n in new)  # the fewest moves
        moved = sum(map(ne, before_units, after_units))
        excess += moved - needed
        worst_pm = max(worst_pm, peak_to_mean(after))
        current = after
    row(
        f"after {steps} random adds/removes/re-weightings: peak/mean",
        f"{worst_pm:.4f}",
        f"worst step; {excess} units moved beyond the fewest each step needed (goal 0)",
    )
    results["history_worst_peak_to_mean"], results["history_excess_moves"] = worst_pm, excess


def units(ring: HashRing) -> list[str]:
    """A quota ring's owner of each of its 65,536 units (slot s belongs to unit
    s % 65,536, so this is the slot table without its 16 repeats)."""
    return ring._table[: 1 << 16]


def independent_floor(sizes: Sequence[int], reps: int) -> tuple[float, float]:
    """The worst peak/mean over pod sets of these sizes if every slot's owner were an
    independent uniform draw among the pods (HRW per slot: what a fixed per-slot ranking
    gives without correlation between slots), by simulation (normal approximation of
    the multinomial, seeded): the median over ``reps`` and the chance of <= 1.02. No
    ring here: the yardstick for the measured worst above."""
    slots = 1 << hashring_module.SLOT_BITS
    rnd = random.Random(17)
    worst = []
    for _ in range(reps):
        w = 0.0
        for n in sizes:
            left, most = slots, 0
            for k in range(n - 1):
                p = 1 / (n - k)
                c = round(rnd.gauss(left * p, (left * p * (1 - p)) ** 0.5))
                most, left = max(most, c), left - c
            w = max(w, max(most, left) / (slots / n))
        worst.append(w)
    return statistics.median(worst), sum(x <= 1.02 for x in worst) / reps


def _sampled_pm(fn: Callable[[int], str], keys: Sequence[int]) -> float:
    counts: dict[str, int] = {}
    for key in keys:
        owner = fn(key)
        counts[owner] = counts.get(owner, 0) + 1
    return max(counts.values()) / (len(keys) / len(counts))


if __name__ == "__main__":
    main()
