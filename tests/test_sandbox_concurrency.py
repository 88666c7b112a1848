"""Judgements on one machine never share an identity: concurrent processes, sweeps and a busy user are
all judged as if alone."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli

from sleepy.koans import load_pack
from sleepy.koans.model import wrap_tests
from sleepy.sandbox import Sandbox, SandboxLimits, uids

BWRAP = pytest.mark.skipif(__import__("sleepy.sandbox.isolation", fromlist=["detect"]).detect() != "bwrap",
                           reason="bubblewrap isolation is not available here (apt-get install bubblewrap)")
HOLD = ("import sys, time; sys.path.insert(0, sys.argv[1]); from sleepy.sandbox import uids\n"
        "with uids.lease() as uid:\n    print(uid, flush=True); time.sleep(float(sys.argv[2]))\n")


def holders(n: int, seconds: float, env=None):
    return [subprocess.Popen([sys.executable, "-c", HOLD, str(ROOT), str(seconds)], stdout=subprocess.PIPE, text=True,
                             env=env) for _ in range(n)]


def test_concurrent_processes_lease_different_uids(tmp_path):
    env = dict(os.environ, SLEEPY_UID_LOCKS=str(tmp_path))
    procs = holders(6, 2.0, env)
    leased = [int(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait(timeout=30)
    assert len(set(leased)) == 6 and all(uids.in_pool(u) for u in leased)


def test_a_lease_ends_with_the_process_that_held_it(tmp_path):
    import fcntl

    env = dict(os.environ, SLEEPY_UID_LOCKS=str(tmp_path))
    (holder,) = holders(1, 60.0, env)
    uid = int(holder.stdout.readline())
    fd = os.open(tmp_path / f"{uid}.lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again: no stale lease after a crash
    finally:
        os.close(fd)


THREADS = wrap_tests("#[test]\nfn threads_run() {\n"
                     "    let hs: Vec<_> = (0..4).map(|i| std::thread::spawn(move || i * 2)).collect();\n"
                     "    assert_eq!(hs.into_iter().map(|h| h.join().unwrap()).sum::<i32>(), 12);\n}\n")


@BWRAP
@pytest.mark.skipif(os.geteuid() == 0, reason="the path of a user who is not root (CI runs it as an unprivileged user)")
def test_a_user_with_many_processes_of_their_own_is_still_judged(tmp_path):
    """The process limit counts only the judged program's processes, not the user's desktop or sleepy's threads."""
    limits = SandboxLimits(processes=16)
    busy = [subprocess.Popen(["sleep", "60"]) for _ in range(limits.processes * 3)]
    try:
        v = Sandbox(cache_dir=tmp_path, use_cache=False, limits=limits).judge("pub fn f() {}", THREADS)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert v.reason == "ok", v.output


@BWRAP
def test_the_process_limit_still_holds_inside_a_judgement(tmp_path):
    bomb = wrap_tests("#[test]\nfn many_threads() {\n    let hs: Vec<_> = (0..200).map(|_| std::thread::spawn(|| "
                      "std::thread::sleep(std::time::Duration::from_millis(300)))).collect();\n"
                      "    for h in hs { h.join().unwrap(); }\n}\n")
    v = Sandbox(cache_dir=tmp_path, use_cache=False, limits=SandboxLimits(processes=16)).judge("pub fn f() {}", bomb)
    assert v.reason in ("test_failure", "runtime_error") and "Resource temporarily unavailable" in v.output


@BWRAP
@pytest.mark.slow
def test_three_concurrent_verify_processes_each_verify_every_koan(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "sleepy.koans", "verify", "--no-cache", "--json"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / f"cache{i}"))) for i in range(3)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-2000:] + out[-2000:]
        reports.append(json.loads(out))
    n = len(load_pack().koans)
    assert [(r["verified"], r["failed"]) for r in reports] == [(n, [])] * 3


@BWRAP
@pytest.mark.slow
def test_security_tests_hold_while_another_judge_runs(tmp_path):
    """Another process verifies every koan, again and again, while the security suite runs: both hold."""
    env = dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "other"))
    stop = tmp_path / "stop"
    loop = (f'i=0; while [ ! -e {stop} ]; do "{sys.executable}" -m sleepy.koans verify --no-cache --json '
            f'> {tmp_path}/verify_$i.json || exit 1; i=$((i+1)); done')
    other = subprocess.Popen(["bash", "-c", loop], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    own_tmp = tmp_path / "tmp"  # the security tests look for work dirs left in $TMPDIR: the other judge has its own
    own_tmp.mkdir(mode=0o755)
    try:
        time.sleep(1.0)
        rc, out, err = run_cli("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_security.py",
                               "tests/test_judge_integrity.py",
                               env_extra={"SLEEPY_CACHE_DIR": str(tmp_path / "mine"), "TMPDIR": str(own_tmp)})
        was_running = other.poll() is None
    finally:
        stop.touch()
        other.wait(timeout=900)
    assert rc == 0, out[-3000:] + err[-2000:]
    assert was_running and other.returncode == 0
    n = len(load_pack().koans)
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("verify_*.json"))]
    assert len(reports) >= 1 and all((r["verified"], r["failed"]) == (n, []) for r in reports)


@BWRAP
@pytest.mark.slow
def test_a_four_job_sweep_judges_every_correct_fix_passed(tmp_path):
    """Four jobs at once against a server that answers each eval koan's solution: every verdict is a pass."""
    from sleepy.testing.scripted_llm import Script, ScriptedLLMServer, Step

    koans = load_pack().select(split="eval")
    script = Script({k.title: [Step(reply=f"```rust\n{k.solution}\n```")] for k in koans})
    with ScriptedLLMServer(script) as server:
        r = subprocess.run([sys.executable, "-m", "sleepy", "-m", "stage=eval", "model=openai", "model.name=scripted",
                            f"model.api_base={server.url}/v1", "seed=0,1,2,3", "hydra/launcher=joblib",
                            "hydra.launcher.n_jobs=4", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                            f"episodes.uri={tmp_path}/episodes", "experiment_name=sweep4", "sandbox.cache=false",
                            f"hydra.sweep.dir={tmp_path}/multirun"], cwd=ROOT, capture_output=True, text=True,
                           timeout=1800, env=dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "cache")))
    assert r.returncode == 0, r.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sweep4").experiment_id])
    runs = [r for r in runs if r.data.tags.get("sleepy.sweep") != "parent"]  # the jobs, not the sweep's own run
    assert len(runs) == 4
    assert [r.data.metrics["eval/pass_rate"] for r in runs] == [1.0] * 4
    assert [r.data.metrics["eval/koans"] for r in runs] == [float(len(koans))] * 4
