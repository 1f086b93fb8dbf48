"""benchmarks/fastpath_bench.py runs and prints its table (a smoke test, not a timing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_in_process_fast_path_benchmark_runs_against_a_baseline() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "fastpath_bench.py"),
            "--baseline-src",
            str(ROOT),  # this tree against itself: the comparison machinery, not a figure
            "--rounds",
            "1",
            "--requests",
            "200",
            "--guilds",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "this tree / before:" in out and "µs/request" in out


def test_a_baseline_that_is_not_a_checkout_is_refused_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "fastpath_bench.py"),
            "--baseline-src",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
