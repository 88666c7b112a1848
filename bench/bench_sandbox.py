"""Sandbox benchmarks: judging overhead against bare rustc, parallel verify, concurrent processes,
cached compile results.

    .venv/bin/python bench/bench_sandbox.py [--repeat 3] [--only overhead,verify,concurrent,cached]

Everything is measured in this run, on the builtin koans (broken code and solution each), as ratios
against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from sleepy.koans import load_pack
from sleepy.koans.verify import verify_koans
from sleepy.sandbox import Program, Sandbox
from sleepy.sandbox.judge import default_jobs
from sleepy.sandbox.toolchain import toolchain


def bare_rustc(program: Program, edition: str = "2024") -> float:
    """Seconds for what a user would do without sleepy: the code with its tests appended, rustc --test, then
    run the tests."""
    rustc = toolchain()[0]
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        with open(os.path.join(d, "koan.rs"), "w") as f:
            f.write(f"{program.code.rstrip()}\n\n{program.tests}")
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
    ap.add_argument("--only", default="overhead,verify,concurrent,cached", help="the sections to run, comma-separated")
    args = ap.parse_args()
    only = set(args.only.split(","))
    koans = load_pack().koans
    programs = [Program(c, k.tests) for k in koans for c in (k.code, k.solution)]
    with tempfile.TemporaryDirectory() as cache:
        sb = Sandbox(use_cache=False, jobs=1, cache_dir=cache)
        if "overhead" in only:
            overhead(sb, programs, args.repeat)
        if "verify" in only:
            verify_jobs(koans, cache, args.repeat)
        if "concurrent" in only:
            concurrent(args.repeat)
        if "cached" in only:
            cached_compile(sb, cache, programs[1])


def overhead(sb: Sandbox, programs: list[Program], repeat: int) -> None:
    """Judging every program in the sandbox against bare rustc and its test binary, interleaved."""
    bare = sandbox_total = 0.0
    bare_programs(programs[:4])  # warm the toolchain's files into the page cache
    sandboxed(sb, programs[0])  # and build the sandbox's launcher, once per toolchain
    for _ in range(repeat):
        for p in programs:  # interleaved, so drift in machine load hits both alike
            bare += bare_rustc(p)
            sandbox_total += sandboxed(sb, p)
    print(f"overhead: {len(programs)} programs x {repeat}: bare rustc {bare:.2f} s, "
          f"sandbox ({sb.isolation}) {sandbox_total:.2f} s, ratio {sandbox_total / bare:.3f}x")


def verify_jobs(koans: list, cache: str, repeat: int) -> None:
    """`verify` of every koan with 1 job, one per core, and the default."""
    cores = os.cpu_count() or 1
    sandboxes = {f"jobs={j}": Sandbox(use_cache=False, jobs=j, cache_dir=cache) for j in (1, cores, default_jobs())}
    times: dict[str, list[float]] = {name: [] for name in sandboxes}
    for _ in range(repeat):
        for name, s in sandboxes.items():
            start = time.perf_counter()
            report = verify_koans(koans, s)
            times[name].append(time.perf_counter() - start)
            assert not report["failed"], report["failed"]
    medians = {name: statistics.median(v) for name, v in times.items()}
    one = medians["jobs=1"]
    print(f"verify {len(koans)} koans, median of {repeat}: " + ", ".join(
        f"{name} {t:.2f} s ({one / t:.2f}x)" for name, t in medians.items())
        + f"; default is jobs={default_jobs()} (cores + 2)")


def cached_compile(sb: Sandbox, cache: str, program: Program) -> None:
    """A solution judged with its compile result cached, against compiled afresh (50 each)."""
    cached = Sandbox(cache_dir=cache)
    cached.judge_program(program)
    samples, fresh = [], []
    for _ in range(50):
        fresh.append(sandboxed(sb, program) * 1000)
        start = time.perf_counter()
        v = cached.judge_program(program)
        samples.append((time.perf_counter() - start) * 1000)
        assert v.cached and v.passed
    print(f"solution judged with its compile result cached (the tests still run): median "
          f"{statistics.median(samples):.1f} ms, against {statistics.median(fresh):.1f} ms compiled afresh "
          f"({statistics.median(fresh) / statistics.median(samples):.1f}x; 50 each)")


def concurrent(repeat: int) -> None:
    """Koans judged per second, all processes together: three `verify`s at once against one alone."""
    def verify_processes(n: int) -> float:
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "sleepy.koans", "verify", "--no-cache", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(n)]
        for p in procs:
            out, _ = p.communicate()
            report = json.loads(out)
            assert p.returncode == 0 and not report["failed"], report["failed"]
        return time.perf_counter() - start

    alone, together = [], []
    for _ in range(repeat):  # interleaved
        alone.append(verify_processes(1))
        together.append(verify_processes(3))
    one, three = statistics.median(alone), statistics.median(together)
    print(f"concurrent verify, median of {repeat}: 1 process {one:.2f} s, 3 processes {three:.2f} s for 3x the koans: "
          f"throughput {3 * one / three:.3f}x one process's")


def bare_programs(programs: list[Program]) -> None:
    for p in programs:
        bare_rustc(p)


if __name__ == "__main__":
    main()
