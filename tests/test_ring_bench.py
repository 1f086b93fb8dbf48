"""CI smoke for the ring benchmark: ``--quick`` runs and prints its whole table.

The speed goals are judged on the full run (benchmarks/RESULTS.md), not here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ring_bench_quick_prints_its_table(tmp_path):
    out = tmp_path / "ring.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ring_bench.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert text.startswith("# ring_bench --quick:")
    for heading in ("## build", "## lookups", "## balance", "## movement"):
        assert heading in text
    for label in (
        "HashRing build, 3 pods, weight 1 ",
        "HashRing build, 10 pods, weight 100 ",
        "uhashring 2.5 get_node (baseline)",
        "RoutingTable.owner, shard-keyed (1,024), 1,000 pins",
        "RoutingTable.owner, guild-keyed, 1,000 pins",
        "HashRing build, 10 pods, weights 2:1 mixed ",
        "peak/mean, worst of",
        "reference: slots owned independently",
        "weights 2:1 honoured",
        "add one pod",
        "remove one pod",
    ):
        assert label in text, label
    assert text.count("rounds:") == 5  # every rate shows its interleaved rounds
    assert "0 slots moved between surviving pods" in text
    results = out.read_text()
    assert '"ratio_guild"' in results and '"balance_independent_floor"' in results


def test_ring_bench_rejects_bad_arguments():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ring_bench.py"), "--rounds", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 2 and "invalid int value" in run.stderr
