"""Start-up time of the command-line entry points (lazy imports keep them fast).

    .venv/bin/python bench/bench_startup.py [--repeat 7]

Median wall time of each command against a bare `python -c pass` in the same session.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "python -m sleepy --help": [sys.executable, "-m", "sleepy", "--help"],
    "sleepy-koans list": [sys.executable, "-m", "sleepy.koans", "list"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):
        for name, argv in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass (baseline)"])
    for name, t in times.items():
        m = statistics.median(t)
        print(f"{name:28} median {m:.3f} s  ({m / base:.1f}x the bare interpreter)")


if __name__ == "__main__":
    main()
