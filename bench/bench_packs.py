"""Koan-pack benchmarks: making the packs (forge throughput, the error-code pack), then `verify` of the whole
forged + rustc_errors set, in koans per second, against `--jobs 1` and bare rustc.

    .venv/bin/python bench/bench_packs.py [--sample 150]

Every step starts from an empty compile cache of its own, so nothing measured here was judged before. The
whole set is verified with the default jobs, cold and then warm (compile results cached). `--jobs 1` and
bare rustc (what a user would run by hand: rustc on the broken code and on the solution, with the tests
appended and run for a test-mode koan; `--emit=metadata` for a check-mode one) take a while, so they and a
default-jobs run for the ratio are measured on the same seeded sample of koans.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sleepy.koans import error_codes, forge
from sleepy.koans.pack import load_pack
from sleepy.koans.verify import verify
from sleepy.sandbox import Sandbox
from sleepy.sandbox.judge import default_jobs
from sleepy.sandbox.toolchain import toolchain


def bare_rustc(koan, workdir: str, edition: str = "2024") -> float:
    """Seconds to judge a koan by hand: the broken code and the solution, each compiled (and run with the tests
    appended, for a test-mode koan) by rustc itself."""
    rustc = toolchain()[0]
    start = time.perf_counter()
    for code in (koan.code, koan.solution):
        path = os.path.join(workdir, "koan.rs")
        with open(path, "w") as f:
            f.write(code if koan.mode == "check" else f"{code.rstrip()}\n\n{koan.tests}")
        if koan.mode == "check":
            subprocess.run([rustc, "--edition", edition, "--error-format=json", "--crate-type", "lib",
                            "--emit=metadata", "-o", "koan.rmeta", path], cwd=workdir, capture_output=True)
            continue
        built = subprocess.run([rustc, "--edition", edition, "--error-format=json", "-C", "debuginfo=0", "--test",
                                "-o", "koan", path], cwd=workdir, capture_output=True)
        if built.returncode == 0:
            subprocess.run([os.path.join(workdir, "koan"), "--test-threads=1"], cwd=workdir, capture_output=True)
    return time.perf_counter() - start


def timed_verify(koans, jobs: int | None, cache: Path) -> tuple[float, dict]:
    sandbox = Sandbox(jobs=jobs, cache_dir=cache)
    start = time.perf_counter()
    report = verify(koans, sandbox)
    return time.perf_counter() - start, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=150, help="koans in the --jobs 1 / bare rustc comparison")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start, default jobs {default_jobs()}")
    with tempfile.TemporaryDirectory(prefix="sleepy-bench-packs-") as tmp:
        root = Path(tmp)
        builtin = load_pack()
        sandbox = Sandbox(cache_dir=root / "forge-cache")
        stats = forge.make(root / "forged", builtin.koans, sandbox, seed=0, source_name=builtin.name)
        print(f"forge: {stats['koans']} koans ({stats['by_family_split']}) from {stats['sources_passing']} builtin "
              f"koans, {stats['distinct_mutants']} distinct mutants judged, in {stats['seconds']:.0f} s: "
              f"{stats['koans_per_minute']:.0f} verified koans per minute")
        start = time.perf_counter()
        made = error_codes.make(root / "rustc_errors", Sandbox(cache_dir=root / "errors-cache"))
        print(f"rustc_errors: {made['koans']} koans from {made['pages']} pages ({made['active_codes']} active codes) "
              f"in {time.perf_counter() - start:.0f} s")

        koans = load_pack(root / "forged").koans + load_pack(root / "rustc_errors").koans
        cold, report = timed_verify(koans, None, root / "verify-cache")
        assert not report["failed"], report["failed"][:3]
        warm, _ = timed_verify(koans, None, root / "verify-cache")
        print(f"verify {len(koans)} koans (forged + rustc_errors), jobs={default_jobs()}: cold cache {cold:.0f} s "
              f"({len(koans) / cold:.1f} koans/s), warm cache {warm:.1f} s ({len(koans) / warm:.1f} koans/s)")

        sample = random.Random(0).sample(koans, min(args.sample, len(koans)))
        one, _ = timed_verify(sample, 1, root / "sample-1")
        many, _ = timed_verify(sample, None, root / "sample-n")
        with tempfile.TemporaryDirectory() as work:
            bare = sum(bare_rustc(k, work) for k in sample)
        n = len(sample)
        print(f"sample of {n} koans: bare rustc {bare:.0f} s ({n / bare:.2f} koans/s); sleepy --jobs 1 {one:.0f} s "
              f"({n / one:.2f} koans/s, {bare / one:.2f}x bare); jobs={default_jobs()} {many:.0f} s "
              f"({n / many:.2f} koans/s, {bare / many:.2f}x bare, {one / many:.2f}x --jobs 1)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    sys.exit(main())
