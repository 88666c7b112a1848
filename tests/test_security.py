"""LLM-written programs are contained: each is judged within its limit plus 2 s, with the right
reason, and leaves no process and no file behind."""

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from sleepy.sandbox import Sandbox, SandboxLimits

ROOT = Path(__file__).resolve().parents[1]
LIMITS = SandboxLimits(compile_s=8, compile_memory_mb=2048, run_s=3, run_memory_mb=256, processes=32,
                       output_kb=64)
GRACE_S = 2.0

pytestmark = pytest.mark.skipif(
    __import__("sleepy.sandbox.isolation", fromlist=["detect"]).detect() != "bwrap",
    reason="bubblewrap isolation is not available here (apt-get install bubblewrap)")


@pytest.fixture()
def strict(tmp_path, monkeypatch):
    """A sandbox whose work dirs go to a directory of this test's own (other judges may run beside it)."""
    import tempfile

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    return Sandbox(cache_dir=tmp_path / "cache", use_cache=False, limits=LIMITS, jobs=1)


def leftover_processes(marker: str) -> list[str]:
    """Live processes whose command line holds marker (other judgements may run beside this test)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state in ("Z", "X"):  # exited; only its exit status waits to be collected by init
            continue
        if marker in cmd:
            found.append(f"{entry.name} {cmd[:80]}")
    return found


def judge_timed(sb, code, tests="", mode="test"):
    import tempfile

    tmp = tempfile.gettempdir()
    before = set(os.listdir(tmp))
    start = time.perf_counter()
    verdict = sb.judge(code, tests, mode)
    elapsed = time.perf_counter() - start
    time.sleep(0.2)
    new_tmp = {p for p in set(os.listdir(tmp)) - before if p.startswith("sleepy-judge-")}
    assert not new_tmp, f"work dirs left behind: {new_tmp}"
    return verdict, elapsed


def test_infinite_loop_in_a_test_times_out(strict):
    tests = "#[cfg(test)]\nmod t {\n    #[test]\n    fn spins() { loop { std::hint::black_box(1); } }\n}\n"
    v, elapsed = judge_timed(strict, "pub fn f() {}", tests)
    assert v.reason == "timeout" and v.compiled
    assert elapsed < LIMITS.compile_s + LIMITS.run_s + GRACE_S
    assert v.run_ms < (LIMITS.run_s + GRACE_S) * 1000


def test_memory_bomb_is_stopped_for_memory(strict):
    code = "fn main() {\n    let mut hoard: Vec<Vec<u8>> = Vec::new();\n" \
           "    loop { hoard.push(vec![7u8; 16 << 20]); std::hint::black_box(&hoard); }\n}\n"
    v, elapsed = judge_timed(strict, code, mode="run")
    assert v.reason == "memory"
    assert v.run_ms < (LIMITS.run_s + GRACE_S) * 1000


def test_fork_bomb_is_contained_and_reaped(strict):
    marker = f"forkbomb{uuid.uuid4().hex[:8]}"
    code = ("use std::process::Command;\nfn main() {\n"
            f"    let _ = Command::new(\"/bin/sh\").arg(\"-c\").arg(\"b() {{ b | b & }}; b; : {marker}\").status();\n"
            "    loop { let _ = Command::new(\"/bin/sleep\").arg(\"1000\").spawn(); }\n}\n")
    v, elapsed = judge_timed(strict, code, mode="run")
    assert v.reason in ("timeout", "runtime_error")
    assert v.run_ms < (LIMITS.run_s + GRACE_S) * 1000
    assert leftover_processes(marker) == []


def test_output_flood_from_main_hits_the_output_limit(strict):
    code = 'fn main() {\n    let line = "x".repeat(1 << 16);\n    loop { println!("{line}"); }\n}\n'
    v, elapsed = judge_timed(strict, code, mode="run")
    assert v.reason == "output_limit"
    assert len(v.output) <= 16 * 1024
    assert elapsed < LIMITS.compile_s + GRACE_S


def test_output_flood_past_the_test_harness_capture_hits_the_output_limit(strict):
    tests = ("#[cfg(test)]\nmod t {\n    use std::io::Write;\n    #[test]\n    fn floods() {\n"
             "        let block = vec![b'y'; 1 << 20];\n"
             "        for _ in 0..4096 { std::io::stdout().write_all(&block).unwrap(); }\n    }\n}\n")
    v, _ = judge_timed(strict, "pub fn f() {}", tests)
    assert v.reason == "output_limit"


def test_writes_outside_the_sandbox_leave_no_file(strict, tmp_path):
    name = f"sleepy-escape-{uuid.uuid4().hex[:8]}"
    targets = [Path.home() / name, Path("/tmp") / name, ROOT / name, tmp_path / name]
    writes = "\n".join(f'    let _ = std::fs::write("{t}", b"escaped");' for t in targets)
    code = f'fn main() {{\n{writes}\n    let _ = std::fs::write("local.txt", b"inside");\n}}\n'
    v, _ = judge_timed(strict, code, mode="run")
    assert v.reason == "ok"
    assert [t for t in targets if t.exists()] == []


def test_network_connection_to_a_local_listener_never_arrives(strict):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    code = ("use std::io::Write;\nuse std::net::TcpStream;\nfn main() {\n"
            f"    match TcpStream::connect(\"127.0.0.1:{port}\") {{\n"
            "        Ok(mut s) => { s.write_all(b\"exfiltrated\").unwrap(); }\n"
            "        Err(e) => { eprintln!(\"no network: {e}\"); std::process::exit(3); }\n    }\n}\n")
    try:
        v, _ = judge_timed(strict, code, mode="run")
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    assert v.reason == "runtime_error" and "no network" in v.output


ESCAPE = ("use std::process::{{Command, Stdio}};\nfn main() {{\n"
          "    let a = Command::new(\"/usr/bin/setsid\").arg(\"/bin/sleep\").arg(\"{marker}\")\n"
          "        .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();\n"
          "    let b = Command::new(\"/bin/sh\").arg(\"-c\").arg(\"nohup /bin/sleep {marker} >/dev/null 2>&1 &\")\n"
          "        .status();\n"
          "    println!(\"setsid: {{:?}} nohup: {{:?}}\", a.map(|_| ()), b.map(|_| ()));\n}}\n")


def test_a_judged_program_cannot_start_a_process(strict):
    marker = f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000}"
    v, _ = judge_timed(strict, ESCAPE.format(marker=marker), mode="run")
    assert v.reason == "ok"
    assert v.output.count("Operation not permitted") == 2
    assert leftover_processes(f"sleep {marker}") == []


def test_without_the_process_filter_a_child_that_tries_to_outlive_the_judgement_is_killed(strict, monkeypatch):
    """Where no seccomp filter can be built, the judgement's pid namespace still takes every child with it."""
    from sleepy.sandbox import seccomp

    monkeypatch.setattr(seccomp, "available", lambda: False)
    marker = f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 1000}"
    v, _ = judge_timed(strict, ESCAPE.format(marker=marker), mode="run")
    assert v.reason == "ok" and "Operation not permitted" not in v.output
    time.sleep(0.3)
    assert leftover_processes(f"sleep {marker}") == []


def test_macro_recursion_bomb_at_compile_time_is_stopped(strict):
    code = ('#![recursion_limit = "4096"]\n'
            "macro_rules! boom { ($($t:tt)*) => { boom!($($t)* $($t)*) }; }\nboom!(x);\nfn main() {}\n")
    v, elapsed = judge_timed(strict, code, mode="run")
    assert v.reason in ("memory", "timeout") and not v.compiled
    assert elapsed < LIMITS.compile_s + GRACE_S


def test_runaway_const_evaluation_is_stopped(strict):
    code = ("const fn spin() -> u64 {\n    let mut i = 0u64;\n    let mut s = 0u64;\n"
            "    while i < u64::MAX { s = s.wrapping_add(i); i += 1; }\n    s\n}\n"
            "const X: u64 = spin();\nfn main() { println!(\"{}\", X); }\n")
    v, elapsed = judge_timed(strict, code, mode="run")
    assert not v.compiled and v.reason in ("compile_error", "timeout", "memory")
    assert elapsed < LIMITS.compile_s + GRACE_S


def test_every_verdict_records_its_isolation_level(strict):
    assert strict.judge("fn main() {}", mode="run").isolation == "bwrap"


@pytest.fixture()
def planted(tmp_path):
    """A secret only its owner may read, in the home directory, and the repository's own README."""
    secret = f"sleepy-secret-{uuid.uuid4().hex}"
    home = Path.home() / f".sleepy-planted-{uuid.uuid4().hex[:8]}"
    home.write_text(secret)
    home.chmod(0o600)
    try:
        yield {"home": (home, secret), "repo": (ROOT / "README.md", "# sleepy"),
               "passwd": (Path("/etc/passwd"), "root:x:0:0")}
    finally:
        home.unlink()


COMPILE_READS = [
    'const S: &str = include_str!("{path}");\npub fn f() -> usize {{ S.len() }}\n',
    'const B: &[u8] = include_bytes!("{path}");\npub fn f() -> usize {{ B.len() }}\n',
    '#[path = "{path}"]\nmod x;\npub fn f() {{}}\n',
    'pub fn f() -> usize {{ include!("{path}") }}\n',
    'const _: () = panic!("{{}}", include_str!("{path}"));\npub fn f() {{}}\n',
]


@pytest.mark.parametrize("mode", ["check", "test", "run"])
def test_the_compiler_cannot_read_host_files(strict, planted, mode):
    import json

    tests = "#[cfg(test)]\nmod t {\n    #[test]\n    fn f_runs() { let _ = super::f(); }\n}\n" if mode == "test" else ""
    for where, (path, text) in planted.items():
        for template in COMPILE_READS:
            code = template.format(path=path) + ("fn main() { let _ = f(); }\n" if mode == "run" else "")
            v = strict.judge(code, tests, mode)
            assert not v.passed, (where, template)
            assert text not in json.dumps(v.to_dict()), (where, template)


def test_a_running_program_cannot_read_host_files(strict, planted):
    import json

    reads = "".join(f'    println!("{{:?}}", std::fs::read_to_string("{path}"));\n' for path, _ in planted.values())
    v = strict.judge(f"fn main() {{\n{reads}}}\n", mode="run")
    assert v.reason == "ok" and v.output.count("Err(") == len(planted)
    assert not any(text in json.dumps(v.to_dict()) for _, text in planted.values())


def test_memory_outside_the_process_is_capped_too(strict):
    """tmpfs pages do not count against RLIMIT_AS: /dev/shm is read-only and /tmp is size-capped."""
    code = ("use std::io::Write;\nfn main() {\n"
            '    println!("shm: {:?}", std::fs::write("/dev/shm/x", b"x").map_err(|e| e.kind()));\n'
            "    let block = vec![7u8; 4 << 20];\n    let mut total = 0usize;\n"
            "    for i in 0..64 {\n"
            '        let w = std::fs::File::create(format!("/tmp/f{i}")).and_then(|mut f| f.write_all(&block));\n'
            '        if let Err(e) = w { println!("stopped: {:?}", e.kind()); break; }\n'
            "        total += block.len();\n    }\n"
            '    println!("written: {}", total >> 20);\n}\n')
    v, _ = judge_timed(strict, code, mode="run")
    assert v.reason == "ok", v.output
    assert "shm: Err(ReadOnlyFilesystem)" in v.output
    assert "stopped: StorageFull" in v.output
    written = int(v.output.split("written: ")[1].split()[0])
    assert written <= LIMITS.tmp_mb


def step_status(uid, limits, command: str):
    """Run `sh -c command` as a compile step is run (bubblewrap with /proc, the launcher first); (rc, out, err)."""
    import subprocess
    import tempfile

    from sleepy.sandbox import isolation

    with tempfile.TemporaryDirectory() as d:
        if uid is not None:
            os.chown(d, uid, uid)
        argv = isolation.wrap("bwrap", ["/bin/sh", "-c", command], step="compile", workdir=d, sysroot=d, uid=uid,
                              limits=limits)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def test_a_step_runs_with_no_capabilities_no_new_privileges_and_its_own_limits():
    """What a step is, read from its own /proc/self/status and limits: the leased uid (as root) or the user, in no
    group, every capability set empty (the bounding set too, so no file capability can give one back),
    no_new_privs, and the step's resource limits (hard and soft)."""
    import contextlib

    from sleepy.sandbox import isolation, uids
    from sleepy.sandbox.process import Limits

    limits = Limits(wall_s=7, memory_mb=300, file_size_mb=3, processes=17)
    with uids.lease() if isolation.is_root() else contextlib.nullcontext() as uid:
        rc, out, err = step_status(uid, limits, "cat /proc/self/status /proc/self/limits")
    assert rc == 0, err
    status = dict(line.split(":", 1) for line in out.splitlines() if ":" in line and not line.startswith("Max"))
    me = uid if uid is not None else os.geteuid()
    assert status["Uid"].split() == [str(me)] * 4 and status["Gid"].split() == [str(uid if uid is not None else
                                                                                   os.getegid())] * 4
    if uid is not None:
        assert status["Groups"].strip() == ""
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, (caps, status[caps])
    assert status["NoNewPrivs"].strip() == "1"
    lines = {line[:26].strip(): line[26:].split() for line in out.splitlines() if line.startswith("Max ")}
    assert lines["Max address space"][:2] == [str(300 * 1024 * 1024)] * 2
    assert lines["Max cpu time"][:2] == ["8", "8"] and lines["Max processes"][:2] == ["17", "17"]
    assert lines["Max file size"][:2] == [str(3 * 1024 * 1024)] * 2 and lines["Max core file size"][:2] == ["0", "0"]


def test_a_launcher_that_cannot_do_its_job_stops_the_step_in_one_line():
    """An option the launcher does not know, or a program it cannot start: status 127 and one line naming what failed,
    never the step run with less than was asked."""
    import subprocess

    from sleepy.sandbox.launcher import launcher

    r = subprocess.run([launcher(), "--nice=3", "--", "/bin/true"], capture_output=True, text=True)
    assert r.returncode == 127 and r.stderr.count("\n") == 1 and "sleepy launch: an unknown option" in r.stderr
    r = subprocess.run([launcher(), "--", "/nonexistent/program"], capture_output=True, text=True)
    assert r.returncode == 127 and r.stderr.count("\n") == 1 and "sleepy launch: /nonexistent/program" in r.stderr
