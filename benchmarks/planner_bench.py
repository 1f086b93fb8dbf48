"""Planner benchmark: 1,000,000 guilds, Zipf load, 1,000 shards, 50 pods + 5 new ones.

    python benchmarks/planner_bench.py                  # Zipf exponent 0.8 (the reported run)
    python benchmarks/planner_bench.py --zipf 1.0       # heavier head: some guilds outgrow a pod

The current assignment is the ring's placement over the 50 original pods, held in place
by shard pins, as it is right after 5 pods register; the planner then fills the new pods.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modbot_ring import PlanLimits, Pod, RoutingTable, plan_rebalance


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--guilds", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--new-pods", type=int, default=5)
    parser.add_argument("--zipf", type=float, default=0.8)
    parser.add_argument("--epsilon", type=float, default=0.05)
    args = parser.parse_args()

    rnd = random.Random(1)
    gids = [rnd.getrandbits(62) | (1 << 42) for _ in range(args.guilds)]
    loads = {g: 1.0 / (rank + 1) ** args.zipf for rank, g in enumerate(gids)}
    old = [Pod(f"gateway-{i}") for i in range(args.pods)]
    base = RoutingTable(old, shard_count=args.shards)
    held = {s: base.shard_owner(s) for s in range(args.shards)}
    new = [Pod(f"gateway-{i}") for i in range(args.pods, args.pods + args.new_pods)]
    table = RoutingTable([*old, *new], shard_count=args.shards, shard_pins=held, version=1)

    started = time.perf_counter()
    plan = plan_rebalance(table, loads, limits=PlanLimits(epsilon=args.epsilon))
    seconds = time.perf_counter() - started
    ratio = plan.moved_load / plan.lower_bound if plan.lower_bound else 1.0
    total = sum(loads.values())
    print(
        f"# planner_bench: {args.guilds:,} guilds (Zipf s={args.zipf}), {args.shards} shards, {args.pods} + {args.new_pods} pods, epsilon {args.epsilon}, Python {platform.python_version()}"
    )
    print(f"  plan time                    {seconds:8.2f} s      goal < 5 s")
    print(f"  peak/mean before             {plan.peak_to_mean_before:8.3f}")
    print(f"  peak/mean after              {plan.peak_to_mean:8.4f}       goal <= 1.05")
    trough = min(plan.after[p] / f for p, f in plan.fair.items() if f > 0)
    print(f"  least loaded pod after       {trough:8.4f}       (x fair share; goal >= 0.95)")
    print(f"  moves                        {len(plan.moves):8d}        (shards)")
    print(f"  load moved / total           {plan.moved_load / total:8.3%}")
    print(f"  load moved / lower bound     {ratio:8.3f}x       goal <= 1.2x")
    print(
        f"  heaviest guild / fair share  {max(loads.values()) / (total / (args.pods + args.new_pods)):8.3f}"
    )
    for line in plan.unfixable[:5]:
        print(f"  unfixable: {line}")


if __name__ == "__main__":
    main()
