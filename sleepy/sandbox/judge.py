"""Sandbox.judge(program) -> Verdict: compile with rustc directly, run the koan's tests, in isolation.

The crate that is compiled is written by `harness.py` (the fix included, the koan's tests wrapped so
that a pass must be earned). A test-mode program is built once with `rustc --test` and its test
binary run `sandbox.runs` times: a pass needs every run to show every test's token; runs that
disagree mark the verdict `flaky`. A run-mode program must return from `main`. A check-mode program
is only type-checked.

Compile results are deterministic, so they are cached on disk (diagnostics, or the binary and what a
run of it must print), keyed by the program, the rustc version, edition, flags and limits. Run
outcomes are never cached: a flaky test is judged again every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sleepy.sandbox import harness, isolation, seccomp, uids
from sleepy.sandbox.process import Completed, Limits, kill_user_processes, run_limited
from sleepy.sandbox.toolchain import sysroot, toolchain
from sleepy.sandbox.verdict import Diagnostic, Verdict, parse_diagnostics

MODES = ("check", "test", "run")
CACHE_VERSION = "2"
BINARY = "koan"
KEPT_OUTPUT = 16 * 1024
SHOWN_ROOT = "tests.rs"  # how diagnostics and panics name the crate root (its real name is random)


@dataclass(frozen=True)
class Program:
    """A program to judge: the code, the koan's tests judged with it, how to judge it."""

    code: str
    tests: str = ""  # the koan's `#[cfg(test)] mod` (whole-file koans: the solution's); empty in run mode
    mode: str = "test"
    clippy: bool = False
    required: tuple[str, ...] = ()  # whole-file koans: tests of the code's own test module that must pass
    api: harness.Api | None = None  # what the koan's solution gives its tests (None: no koan)
    reference: str = ""  # run mode: the solution, whose output the program must print


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


def default_jobs() -> int:
    """Cores + 2: each judgement spends part of its time starting processes and waiting on pipes,
    so two extra slots keep every core busy (measured in bench/bench_sandbox.py)."""
    return (os.cpu_count() or 1) + 2


def default_cache_dir() -> Path:
    from sleepy.cache import cache_root

    return cache_root() / "compiled"


@dataclass
class _Compiled:
    """A compile result as the cache keeps it."""

    reason: str
    diagnostics: list
    output: str
    compile_ms: float
    meta: dict  # what a run must print (harness.Build.meta)
    binary: Path | None = None  # the built program (test and run modes)
    cached: bool = False


class Sandbox:
    """Judges Rust programs in isolation, in parallel, with a cache of compile results."""

    def __init__(self, edition: str = "2024", isolation_level: str = "auto", jobs: int | None = None,
                 cache_dir: str | Path | None = None, use_cache: bool = True,
                 limits: SandboxLimits | None = None, runs: int = 1):
        self.edition = str(edition)
        self.limits = limits or SandboxLimits()
        self.jobs = max(1, jobs or default_jobs())
        self.runs = max(1, int(runs))
        self.isolation = isolation.detect(isolation_level)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.use_cache = use_cache
        self._expected: dict[str, str | None] = {}  # run mode: the solutions' output, by program
        self._lock = threading.Lock()
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.jobs):
            self._slots.put(slot)

    @classmethod
    def from_config(cls, s, use_cache: bool | None = None) -> Sandbox:
        """The sandbox the `sandbox` config group describes (use_cache: override sandbox.cache)."""
        return cls(edition=s.edition, isolation_level=s.isolation, jobs=s.jobs,
                   use_cache=s.cache if use_cache is None else use_cache, limits=SandboxLimits(**s.limits), runs=s.runs)

    # -- public ---------------------------------------------------------------------------------
    def judge(self, code: str, tests: str = "", mode: str = "test", clippy: bool = False) -> Verdict:
        """Judge one program: compile it with the koan's tests, then run them."""
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
        slot = self._slots.get()
        try:
            with uids.lease() if isolation.is_root() else contextlib.nullcontext() as uid, \
                    tempfile.TemporaryDirectory(prefix="sleepy-judge-") as workdir:
                verdict = self._judge_in(program, workdir, uid)
        finally:
            self._slots.put(slot)
        verdict.wall_ms = (time.perf_counter() - start) * 1000
        return verdict

    def cache_key(self, program: Program) -> str:
        _, version, _ = toolchain()
        lim = self.limits
        blob = json.dumps([CACHE_VERSION, version, self.edition, program.mode, program.clippy, program.code,
                           program.tests, list(program.required), program.api.key() if program.api else None,
                           lim.compile_s, lim.compile_memory_mb, lim.file_size_mb, lim.output_kb], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    # -- steps ----------------------------------------------------------------------------------
    def _judge_in(self, program: Program, workdir: str, uid: int | None) -> Verdict:
        if uid is not None:
            os.chown(workdir, uid, uid)
        compiled = self._compiled(program, workdir, uid)
        base = dict(isolation=self.isolation, diagnostics=compiled.diagnostics, compile_ms=compiled.compile_ms,
                    cached=compiled.cached)
        if compiled.reason != "ok":
            return Verdict(compiled=False, tests_passed=False, reason=compiled.reason, output=compiled.output, **base)
        if program.mode == "check":
            return Verdict(compiled=True, tests_passed=True, reason="ok", **base)
        expected = self._expected_output(program) if program.reference else None
        runs = [self._run(program, compiled, workdir, uid, expected) for _ in range(self.runs)]
        failed = next((r for r in runs if r[0] != "ok"), None)
        reason, output, run_ms, _ = failed or runs[-1]
        return Verdict(compiled=True, tests_passed=reason == "ok", reason=reason, output=output, run_ms=run_ms,
                       flaky=len({r[0] == "ok" for r in runs}) > 1, **base)

    def _compiled(self, program: Program, workdir: str, uid: int | None) -> _Compiled:
        key = self.cache_key(program)
        if self.use_cache and (hit := self._cache_get(key)) is not None:
            return hit
        result = self._compile(program, workdir, uid)
        if self.use_cache and result.reason != "timeout":
            self._cache_put(key, result)
        return result

    def _compile(self, program: Program, workdir: str, uid: int | None) -> _Compiled:
        from sleepy.rust_source import RustSourceError

        try:
            build = harness.build(program.code, program.tests, program.mode, program.required, program.api,
                                  program.clippy)
        except RustSourceError as e:  # only a whole-file fix's own test module can be unreadable
            build = harness.Build({}, "", refused=f"cannot read the program's test module: {e}")
        if build.refused:
            refused = Diagnostic("error", f"refused: {build.refused}", "sleepy::refused",
                                 f"error: refused: {build.refused}")
            return _Compiled("compile_error", [refused], "", 0.0, {})
        for name, text in build.files.items():
            Path(workdir, name).write_text(text, encoding="utf-8")
        rustc, _, clippy = toolchain()
        compiler = rustc
        if program.clippy:
            if clippy is None:
                raise RuntimeError("clippy-driver is not installed (rustup component add clippy)")
            compiler = clippy
        work, root = isolation.sandbox_paths(self.isolation, workdir, sysroot())
        compiler = str(Path(root) / "bin" / Path(compiler).name)
        args = [compiler, "--sysroot", root, "--edition", self.edition, "--error-format=json", "-C", "debuginfo=0",
                "-C", "strip=symbols"]
        if program.mode == "check":
            args += ["--test"] if build.root != harness.SOURCE else ["--crate-type", "lib"]
            args += ["--emit=metadata", "-o", BINARY + ".rmeta"]
        elif program.mode == "test":
            args += ["--test", "-o", BINARY]
        else:
            args += ["--crate-type", "bin", "-o", BINARY]
        if program.clippy:
            args += ["-D", "warnings"]
        args.append(build.root)
        lim = self.limits
        env = {"PATH": f"{root}/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C"}
        limits = Limits(lim.compile_s, lim.compile_memory_mb, lim.file_size_mb * 16, lim.output_kb * 8)
        bwrap = self.isolation == "bwrap"
        with _filter(bwrap, processes=True) as filter_fd:
            argv = isolation.wrap(self.isolation, args, step="compile", workdir=workdir, sysroot=sysroot(),
                                  uid=uid if bwrap else None, limits=limits, tmp_mb=lim.tmp_mb,
                                  seccomp_fd=filter_fd)
            done = run_limited(argv, limits, cwd=workdir, env=env, pass_fds=_fds(filter_fd))
        reason = _compile_reason(done)
        diagnostics = [_shown(d, build.root) for d in parse_diagnostics(done.stderr)]
        output = _shown(_non_json(done.stderr), build.root)[-KEPT_OUTPUT:] if reason != "ok" else ""
        binary = Path(workdir, BINARY) if reason == "ok" and program.mode != "check" else None
        return _Compiled(reason, diagnostics, output, done.wall_ms, build.meta(), binary)

    def _expected_output(self, program: Program) -> str | None:
        """What the koan's solution prints (run mode), judged once per sandbox; None when it fails or prints
        something else each time (then only its return is checked)."""
        reference = Program(program.reference, mode="run", clippy=program.clippy)
        key = self.cache_key(reference)
        with self._lock:
            if key in self._expected:
                return self._expected[key]
        outputs = [self._stdout_of(reference) for _ in range(3)]
        agree = None not in outputs and all(same_output(o, outputs[0]) for o in outputs)
        expected = outputs[0] if agree else None
        with self._lock:
            self._expected[key] = expected
        return expected

    def _stdout_of(self, program: Program) -> str | None:
        with uids.lease() if isolation.is_root() else contextlib.nullcontext() as uid, \
                tempfile.TemporaryDirectory(prefix="sleepy-judge-") as workdir:
            if uid is not None:
                os.chown(workdir, uid, uid)
            compiled = self._compiled(program, workdir, uid)
            if compiled.reason != "ok":
                return None
            reason, _, _, stdout = self._run(program, compiled, workdir, uid, None)
            return stdout if reason == "ok" else None

    def _run(self, program: Program, compiled: _Compiled, workdir: str, uid: int | None,
             expected: str | None) -> tuple[str, str, float, str]:
        """One run of the built program: (reason, output, run ms, its stdout without tokens)."""
        lim = self.limits
        binary = os.path.join(workdir, BINARY)
        if Path(binary) != compiled.binary:
            shutil.copyfile(compiled.binary, binary)
        os.chmod(binary, 0o111)  # executable, not readable: the program cannot read the tokens out of itself
        argv = [binary]
        if program.mode == "test":
            argv += ["--test-threads=1", *compiled.meta["filters"]]
        cwd = workdir
        if self.isolation == "bwrap":
            argv[0] = "/tmp/" + BINARY
        else:
            cwd = os.path.join(workdir, f"run{time.monotonic_ns()}")
            os.mkdir(cwd)
            os.chmod(cwd, 0o777)
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C", "RUST_BACKTRACE": "0", "MALLOC_ARENA_MAX": "2"}
        limits = Limits(lim.run_s, lim.run_memory_mb, lim.file_size_mb, lim.output_kb, lim.processes)
        bwrap = self.isolation == "bwrap"
        with _filter(bwrap, processes=False) as filter_fd:
            wrapped = isolation.wrap(self.isolation, argv, step="run", workdir=workdir, binary=binary,
                                     uid=uid if bwrap else None, limits=limits, tmp_mb=lim.tmp_mb,
                                     seccomp_fd=filter_fd)
            try:
                done = run_limited(wrapped, limits, cwd=cwd, env=env, user=None if bwrap else uid,
                                   pass_fds=_fds(filter_fd))
            finally:
                if uid is not None and self.isolation == "none":  # no pid namespace: the leased uid is this judgement's
                    kill_user_processes(uid)
        seen = harness.read_run(compiled.meta, done.stdout)
        reason = _run_reason(done, program.mode, seen)
        output = seen.output + done.stderr
        if reason == "ok" and expected is not None and not same_output(seen.output, expected):
            reason = "test_failure"
            output = f"expected output:\n{expected.rstrip()}\n\nactual output:\n{seen.output.rstrip()}\n{done.stderr}"
        if reason == "forged":
            output += "\nsleepy: the output holds @sleepy tokens that no test wrote in its own report line\n"
        return reason, _shown(output, compiled.meta.get("root", ""))[-KEPT_OUTPUT:], done.wall_ms, seen.output

    # -- cache ----------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> _Compiled | None:
        from sleepy.sandbox.verdict import Diagnostic

        path = self._cache_path(key)
        try:
            d = json.loads(path.read_text())
            binary = None
            if d["binary"]:
                binary = path.parent / d["binary"]
                if not binary.exists():
                    return None
            return _Compiled(d["reason"], [Diagnostic(**x) for x in d["diagnostics"]], d["output"], d["compile_ms"],
                             d["meta"], binary, cached=True)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _cache_put(self, key: str, c: _Compiled) -> None:
        from dataclasses import asdict

        path = self._cache_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = f".{os.getpid()}.{time.monotonic_ns()}.tmp"
            binary = None
            if c.binary is not None:  # named for its build, so a concurrent build's record never points at it
                binary = f"{path.stem}.{Path(c.meta['root']).stem}.bin"
                shutil.copyfile(c.binary, path.with_suffix(tmp))
                os.replace(path.with_suffix(tmp), path.parent / binary)
            record = {"reason": c.reason, "diagnostics": [asdict(x) for x in c.diagnostics], "output": c.output,
                      "compile_ms": c.compile_ms, "meta": c.meta, "binary": binary}
            path.with_suffix(tmp).write_text(json.dumps(record))
            os.replace(path.with_suffix(tmp), path)
        except OSError:
            pass


def _compile_reason(c: Completed) -> str:
    if c.timed_out:
        return "timeout"
    if c.output_exceeded:
        return "output_limit"
    if c.signal in (signal.SIGXCPU, signal.SIGKILL):
        return "timeout"
    if c.returncode == 0:
        return "ok"
    if "memory allocation of" in c.stderr or "out of memory" in c.stderr.lower():
        return "memory"
    return "compile_error"


def _run_reason(r: Completed, mode: str, seen: harness.Outcome) -> str:
    if r.timed_out:
        return "timeout"
    if r.output_exceeded or r.signal == signal.SIGXFSZ:
        return "output_limit"
    if r.signal in (signal.SIGXCPU, signal.SIGKILL):  # a kill from outside the judgement counts as a timeout
        return "timeout"
    if "memory allocation of" in r.stderr or "memory allocation of" in r.stdout:
        return "memory"
    if seen.forged:
        return "forged"
    complete = seen.marker_seen if mode == "run" else not seen.missing
    if r.returncode == 0:
        return "ok" if complete else "incomplete"
    if mode == "test" and r.returncode == 101 and "test result: FAILED" in r.stdout:
        return "test_failure"
    return "runtime_error"


@contextlib.contextmanager
def _filter(bwrap: bool, processes: bool):
    """A pipe holding the step's seccomp filter (None where there is no bubblewrap or no filter for this machine)."""
    if not (bwrap and seccomp.available()):
        yield None
        return
    fd = seccomp.pipe_with(seccomp.program(processes))
    try:
        yield fd
    finally:
        os.close(fd)


def _fds(fd: int | None) -> tuple[int, ...]:
    return () if fd is None else (fd,)


def same_output(a: str, b: str) -> bool:
    """Two programs printed the same lines (threads may print them in another order)."""
    return sorted(a.rstrip().splitlines()) == sorted(b.rstrip().splitlines())


def _non_json(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("{"))


def _shown(x, root: str):
    """A diagnostic or text with the crate root's random file name replaced by a fixed one."""
    from dataclasses import replace

    if not root or root == harness.SOURCE:
        return x
    if isinstance(x, str):
        return x.replace(root, SHOWN_ROOT)
    return replace(x, message=x.message.replace(root, SHOWN_ROOT), rendered=x.rendered.replace(root, SHOWN_ROOT))
