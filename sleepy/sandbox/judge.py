"""Sandbox.judge(program) -> Verdict: compile with rustc directly, run the tests, in isolation.

A test-mode program is built once with `rustc --test` (a failing build stops at analysis, so a
separate `--emit=metadata` check would only add a compiler start to every passing program) and
its test binary is run. A run-mode program is built as a binary and its `main` must exit 0. A
check-mode program is only type-checked. Verdicts are cached on disk by content hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sleepy.sandbox import isolation
from sleepy.sandbox.process import Completed, Limits, kill_user_processes, run_limited
from sleepy.sandbox.verdict import Verdict, parse_diagnostics

MODES = ("check", "test", "run")
CACHE_VERSION = "1"
SOURCE = "koan.rs"
BINARY = "koan"
KEPT_OUTPUT = 16 * 1024


@dataclass(frozen=True)
class Program:
    """A program to judge: code, the tests appended to it, how to judge it."""

    code: str
    tests: str = ""
    mode: str = "test"
    clippy: bool = False

    @property
    def source(self) -> str:
        return f"{self.code.rstrip()}\n\n{self.tests.strip()}\n" if self.tests.strip() else self.code


@dataclass
class SandboxLimits:
    """Limits of the compile step and of the run step (also the `sandbox.limits` config schema)."""

    compile_s: float = 60.0
    compile_memory_mb: int = 4096
    run_s: float = 10.0
    run_memory_mb: int = 1024
    processes: int = 64
    file_size_mb: int = 16
    output_kb: int = 256
    tmp_mb: int = 64


@functools.cache
def toolchain() -> tuple[str, str, str | None]:
    """(rustc path, `rustc -vV` text, clippy-driver path or None), resolved past rustup proxies."""
    rustc = shutil.which("rustc")
    if rustc is None:
        raise RuntimeError("rustc not found on PATH: install a Rust toolchain (>= 1.85), e.g. with rustup")
    sysroot = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True, check=True).stdout
    real = Path(sysroot.strip()) / "bin" / "rustc"
    rustc = str(real) if real.exists() else rustc
    version = subprocess.run([rustc, "-vV"], capture_output=True, text=True, check=True).stdout
    clippy = Path(sysroot.strip()) / "bin" / "clippy-driver"
    return rustc, version, str(clippy) if clippy.exists() else None


def default_jobs() -> int:
    """Cores + 2: each judgement spends part of its time starting processes and waiting on pipes,
    so two extra slots keep every core busy (measured in bench/bench_sandbox.py)."""
    return (os.cpu_count() or 1) + 2


def default_cache_dir() -> Path:
    from sleepy.cache import cache_root

    return cache_root() / "verdicts"


class Sandbox:
    """Judges Rust programs in isolation, in parallel, with a content-hash verdict cache."""

    def __init__(self, edition: str = "2024", isolation_level: str = "auto", jobs: int | None = None,
                 cache_dir: str | Path | None = None, use_cache: bool = True,
                 limits: SandboxLimits | None = None):
        self.edition = str(edition)
        self.limits = limits or SandboxLimits()
        self.jobs = max(1, jobs or default_jobs())
        self.isolation = isolation.detect(isolation_level)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.use_cache = use_cache
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.jobs):
            self._slots.put(slot)

    # -- public ---------------------------------------------------------------------------------
    def judge(self, code: str, tests: str = "", mode: str = "test", clippy: bool = False) -> Verdict:
        """Judge one program: compile it with its tests appended, then run them."""
        return self.judge_program(Program(code, tests, mode, clippy))

    def judge_many(self, programs: list[Program]) -> list[Verdict]:
        """Judge many programs concurrently (self.jobs at a time), verdicts in input order."""
        if self.jobs == 1 or len(programs) <= 1:
            return [self.judge_program(p) for p in programs]
        with ThreadPoolExecutor(self.jobs) as pool:
            return list(pool.map(self.judge_program, programs))

    def judge_program(self, program: Program) -> Verdict:
        if program.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {program.mode!r}")
        start = time.perf_counter()
        key = self.cache_key(program)
        if self.use_cache and (hit := self._cache_get(key)) is not None:
            hit.cached = True
            hit.wall_ms = (time.perf_counter() - start) * 1000
            return hit
        slot = self._slots.get()
        try:
            verdict = self._judge_uncached(program, slot)
        finally:
            self._slots.put(slot)
        verdict.wall_ms = (time.perf_counter() - start) * 1000
        if self.use_cache and verdict.reason != "timeout":
            self._cache_put(key, verdict)
        return verdict

    def cache_key(self, program: Program) -> str:
        _, version, _ = toolchain()
        blob = json.dumps([CACHE_VERSION, version, self.edition, program.mode, program.clippy,
                           program.code, program.tests, self.limits.__dict__], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    # -- steps ----------------------------------------------------------------------------------
    def _judge_uncached(self, program: Program, slot: int) -> Verdict:
        workdir = tempfile.mkdtemp(prefix="sleepy-judge-")
        try:
            os.chmod(workdir, 0o755)
            Path(workdir, SOURCE).write_text(program.source, encoding="utf-8")
            built = self._compile(program, workdir)
            diagnostics = parse_diagnostics(built.stderr)
            compile_reason = self._compile_reason(built)
            if compile_reason != "ok":
                return Verdict(compiled=False, tests_passed=False, reason=compile_reason,
                               isolation=self.isolation, diagnostics=diagnostics,
                               output=_non_json(built.stderr)[-KEPT_OUTPUT:], compile_ms=built.wall_ms)
            if program.mode == "check":
                return Verdict(compiled=True, tests_passed=True, reason="ok", isolation=self.isolation,
                               diagnostics=diagnostics, compile_ms=built.wall_ms)
            ran = self._run(program, workdir, slot)
            reason = _run_reason(ran, program.mode)
            output = (ran.stdout + ran.stderr)[-KEPT_OUTPUT:]
            return Verdict(compiled=True, tests_passed=reason == "ok", reason=reason, isolation=self.isolation,
                           diagnostics=diagnostics, output=output, compile_ms=built.wall_ms,
                           run_ms=ran.wall_ms)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _compile(self, program: Program, workdir: str) -> Completed:
        rustc, _, clippy = toolchain()
        compiler = rustc
        if program.clippy:
            if clippy is None:
                raise RuntimeError("clippy-driver is not installed (rustup component add clippy)")
            compiler = clippy
        args = [compiler, "--edition", self.edition, "--error-format=json", "-C", "debuginfo=0"]
        if program.mode == "check":
            args += ["--test"] if program.tests.strip() else ["--crate-type", "lib"]
            args += ["--emit=metadata", "-o", BINARY + ".rmeta"]
        elif program.mode == "test":
            args += ["--test", "-o", BINARY]
        else:
            args += ["--crate-type", "bin", "-o", BINARY]
        if program.clippy:
            args += ["-D", "warnings"]
        args.append(SOURCE)
        lim = self.limits
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, "TMPDIR": workdir, "LANG": "C"}
        return run_limited(
            isolation.wrap(self.isolation, args, workdir=workdir, writable=True, user=None, tmp_mb=lim.tmp_mb),
            Limits(lim.compile_s, lim.compile_memory_mb, lim.file_size_mb * 16, lim.output_kb * 8),
            cwd=workdir, env=env)

    def _run(self, program: Program, workdir: str, slot: int) -> Completed:
        lim = self.limits
        uid = isolation.sandbox_uid(slot)
        binary = os.path.join(workdir, BINARY)
        argv = [binary, "--test-threads=1"] if program.mode == "test" else [binary]
        cwd = workdir
        if self.isolation != "bwrap":
            cwd = os.path.join(workdir, "run")
            os.mkdir(cwd)
            os.chmod(cwd, 0o777)
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C", "RUST_BACKTRACE": "0",
               "MALLOC_ARENA_MAX": "2"}
        try:
            return run_limited(
                isolation.wrap(self.isolation, argv, workdir=workdir, writable=False, user=uid, tmp_mb=lim.tmp_mb),
                Limits(lim.run_s, lim.run_memory_mb, lim.file_size_mb, lim.output_kb, lim.processes),
                cwd=cwd, env=env, user=uid)
        finally:
            if uid is not None:
                kill_user_processes(uid)

    @staticmethod
    def _compile_reason(c: Completed) -> str:
        if c.timed_out or c.signal in (signal.SIGXCPU, signal.SIGKILL):
            return "timeout"
        if c.output_exceeded:
            return "output_limit"
        if c.returncode == 0:
            return "ok"
        if "memory allocation of" in c.stderr or "out of memory" in c.stderr.lower():
            return "memory"
        return "compile_error"

    # -- cache ----------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> Verdict | None:
        try:
            return Verdict.from_dict(json.loads(self._cache_path(key).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _cache_put(self, key: str, verdict: Verdict) -> None:
        path = self._cache_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{id(verdict)}.tmp")
            tmp.write_text(json.dumps(verdict.to_dict()))
            os.replace(tmp, path)
        except OSError:
            pass


def _run_reason(r: Completed, mode: str) -> str:
    if r.timed_out or r.signal in (signal.SIGXCPU,):
        return "timeout"
    if r.output_exceeded or r.signal == signal.SIGXFSZ:
        return "output_limit"
    if r.returncode == 0:
        return "ok"
    if "memory allocation of" in r.stderr or "memory allocation of" in r.stdout:
        return "memory"
    if mode == "test" and r.returncode == 101 and "test result: FAILED" in r.stdout:
        return "test_failure"
    return "runtime_error"


def _non_json(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("{"))
