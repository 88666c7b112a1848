"""Sandbox benchmarks: judging overhead against bare rustc, parallel verify, cached verdicts.

    .venv/bin/python bench/bench_sandbox.py [--repeat 3]

Everything is measured in this one process, on the builtin koans (broken code and solution each),
as ratios against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

from sleepy.koans import load_pack
from sleepy.koans.verify import verify_koans
from sleepy.sandbox import Program, Sandbox
from sleepy.sandbox.judge import default_jobs, toolchain


def bare_rustc(program: Program, edition: str = "2024") -> float:
    """Seconds for what the sandbox does, without the sandbox: rustc --test, then run the tests."""
    rustc = toolchain()[0]
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        with open(os.path.join(d, "koan.rs"), "w") as f:
            f.write(program.source)
        built = subprocess.run([rustc, "--edition", edition, "--error-format=json", "-C", "debuginfo=0",
                                "--test", "-o", "koan", "koan.rs"], cwd=d, capture_output=True)
        if built.returncode == 0:
            subprocess.run([os.path.join(d, "koan"), "--test-threads=1"], cwd=d, capture_output=True)
        return time.perf_counter() - start


def sandboxed(sb: Sandbox, program: Program) -> float:
    start = time.perf_counter()
    sb.judge_program(program)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    koans = load_pack().koans
    programs = [Program(c, k.tests) for k in koans for c in (k.code, k.solution)]
    with tempfile.TemporaryDirectory() as cache:
        sb = Sandbox(use_cache=False, jobs=1, cache_dir=cache)
        bare = sandbox_total = 0.0
        bare_programs(programs[:4])  # warm the toolchain's files into the page cache
        for _ in range(args.repeat):
            for p in programs:  # interleaved, so drift in machine load hits both alike
                bare += bare_rustc(p)
                sandbox_total += sandboxed(sb, p)
        print(f"overhead: {len(programs)} programs x {args.repeat}: bare rustc {bare:.2f} s, "
              f"sandbox ({sb.isolation}) {sandbox_total:.2f} s, ratio {sandbox_total / bare:.3f}x")

        cores = os.cpu_count() or 1
        sandboxes = {f"jobs={j}": Sandbox(use_cache=False, jobs=j, cache_dir=cache)
                     for j in (1, cores, default_jobs())}
        times: dict[str, list[float]] = {name: [] for name in sandboxes}
        for _ in range(args.repeat):
            for name, s in sandboxes.items():
                start = time.perf_counter()
                report = verify_koans(koans, s)
                times[name].append(time.perf_counter() - start)
                assert not report["failed"], report["failed"]
        medians = {name: statistics.median(v) for name, v in times.items()}
        one = medians["jobs=1"]
        print(f"verify {len(koans)} koans, median of {args.repeat}: " + ", ".join(
            f"{name} {t:.2f} s ({one / t:.2f}x)" for name, t in medians.items())
            + f"; default is jobs={default_jobs()} (cores + 2)")

        cached = Sandbox(cache_dir=cache)
        cached.judge_program(programs[1])
        samples = []
        for _ in range(500):
            start = time.perf_counter()
            v = cached.judge_program(programs[1])
            samples.append((time.perf_counter() - start) * 1000)
            assert v.cached
        print(f"cached verdict: median {statistics.median(samples):.3f} ms, "
              f"p99 {sorted(samples)[int(len(samples) * 0.99)]:.3f} ms (500 lookups)")


def bare_programs(programs: list[Program]) -> None:
    for p in programs:
        bare_rustc(p)


if __name__ == "__main__":
    main()
