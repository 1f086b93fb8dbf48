"""How long `modbot-ring --help` (and friends) take to start: the goal is under 300 ms.

Baselines in the same run: a bare interpreter (`python -c pass`, the floor) and the eager
parser (`--help` after importing what the parser used to import at build time: aiohttp
via the config client and devstack, every server's settings). Interleaved rounds,
medians; the ratio is against the eager parser.

    .venv/bin/python benchmarks/cli_startup_bench.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "modbot-ring")
EAGER = (
    "import modbot_client.config_api, modbot_cli.devstack, config_store.backup, "
    "router_proxy.settings, gateway_app.settings, discord_sim.settings\n"
    "from modbot_cli.main import main\n"
    "main(['--help'])"
)
CASES = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "eager parser --help (before)": [sys.executable, "-c", EAGER],
    "modbot-ring --help": [CLI, "--help"],
    "modbot-ring status --help": [CLI, "status", "--help"],
    "modbot-ring serve proxy --help": [CLI, "serve", "proxy", "--help"],
    "modbot-ring completion bash": [CLI, "completion", "bash"],
    # issue 16: the library alone imports in < 100 ms (minus the floor above)
    "python -c 'import modbot_ring'": [sys.executable, "-c", "import modbot_ring"],
}


def once(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    rounds = ap.parse_args().rounds
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for cmd in CASES.values():  # warm the page cache once
        once(cmd)
    for _ in range(rounds):  # interleaved: every case once per round
        for name, cmd in CASES.items():
            times[name].append(once(cmd))
    eager = statistics.median(times["eager parser --help (before)"])
    print(f"{'command':34} {'median ms':>10} {'p90 ms':>8} {'vs eager':>9}")
    for name, values in times.items():
        med = statistics.median(values)
        p90 = sorted(values)[int(0.9 * (len(values) - 1))]
        print(f"{name:34} {med * 1000:10.0f} {p90 * 1000:8.0f} {med / eager:8.2f}x")


if __name__ == "__main__":
    main()
