"""A broken model server, a second job on one run and a damaged store each stop a job with one line, keep what
finished, and a resume retries what an outage spoiled."""

import glob
import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest
from test_stages import K1, K2, K3, fix, metric_at, runs, sleepy

from sleepy.episodes import EpisodeStore
from sleepy.testing.scripted_llm import Script, ScriptedLLMServer, Step


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("sleepy: error:")]


def test_a_broken_server_stops_the_stage_and_fails_the_run_in_one_line(tmp_path):
    with ScriptedLLMServer(Script(default=[Step(status=500)])) as server:
        r = sleepy(tmp_path, server, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = errors(r.stderr)
    assert "failed 3 of 3 calls in eval cycle 0" in line and server.url in line and "max_model_error_rate=0.2" in line
    assert "InternalServerError" in line or "500" in line
    _, (run,) = runs(tmp_path)
    assert run.info.status == "FAILED" and f"run_id={run.info.run_id}" in line


def test_a_few_model_errors_warn_and_a_resume_attempts_those_koans_again(tmp_path):
    outage = Script({K1.title: [Step(status=503)], K2.title: [fix(K2.solution)], K3.title: [fix(K3.solution)]})
    with ScriptedLLMServer(outage) as server:
        r = sleepy(tmp_path, server, "agent.max_model_error_rate=0.5")
    assert "warning: eval cycle 0: 2 model calls failed" in r.stderr and "ServiceUnavailable" in r.stderr
    assert "4 attempts, 2 model errors" in r.stdout  # the stage's summary: K1 failed twice, K2 and K3 passed at once
    client, (run,) = runs(tmp_path)
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and "503" in run.data.tags["eval.0.first_model_error"]
    assert metric_at(client, rid, "eval/pass_rate", 0) == pytest.approx(2 / 3)

    healthy = Script({K1.title: [fix(K1.solution)]})
    with ScriptedLLMServer(healthy) as server:
        sleepy(tmp_path, server, f"run_id={rid}")
        assert server.script.served(K1.title) == 1 and len(server.log) == 1  # K2 and K3 stayed finished
    episodes = EpisodeStore(tmp_path / "episodes").frame(run_id=rid)
    assert episodes.height == 3 and episodes["passed"].all() and (episodes["reason"] != "model_error").all()
    assert metric_at(client, rid, "eval/pass_rate", 0) == 1.0


def test_a_single_stream_server_that_stalls_gets_one_request_per_attempt_and_sees_each_abandoned(tmp_path):
    # the case: a llama.cpp server with one slot that does not answer in time. The job asks it for its slots
    # and sends one request at a time; each times out (1 s + 64 tokens at 1000 tokens/s), is not retried, and its
    # connection is closed, so the server can stop; the stage stops at the first round of its first group (two
    # koans: twice the one slot), the run FAILED
    with ScriptedLLMServer(Script(default=[Step(hang_s=30)]), slots=1) as server:
        r = sleepy(tmp_path, server, "model.retries=3", "model.timeout_base_s=1", "model.min_tokens_per_s=1000",
                   "agent.max_tokens=64", check=False)
        time.sleep(0.2)
        log = list(server.log)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "1 request at a time (llama.cpp server: /props says total_slots)" in r.stdout
    assert "timeout 1 s per request of up to 64 tokens" in r.stdout
    (line,) = errors(r.stderr)
    assert "failed 2 of 2 calls in eval cycle 0" in line and "Timeout" in line
    assert len(log) == 2 and all(e["closed_after_s"] is not None and e["closed_after_s"] < 3 for e in log)
    log.sort(key=lambda e: e["time"])
    for before, after in zip(log, log[1:], strict=False):  # one at a time: each sent after the last was abandoned
        assert after["time"] >= before["time"] + before["closed_after_s"] - 0.05
    _, (run,) = runs(tmp_path)
    assert run.info.status == "FAILED"


def test_a_huge_reply_is_cut_before_it_is_judged_or_stored_and_says_so(tmp_path):
    huge = f"```rust\n{K1.solution}\n```\n" + "filler " * 100_000
    with ScriptedLLMServer(Script({K1.title: [Step(reply=huge)]})) as server:
        sleepy(tmp_path, server, "agent.max_reply_chars=20000", "agent.max_attempts=1")
    episodes = EpisodeStore(tmp_path / "episodes").frame()
    k1 = episodes.filter(episodes["koan_id"] == K1.id)
    assert k1["truncated"].to_list() == [True] and len(k1["response"][0]) == 20000 and k1["passed"][0]
    assert not episodes.filter(episodes["koan_id"] != K1.id)["truncated"].any()


@pytest.mark.slow
def test_two_jobs_on_one_run_id_the_second_stops_naming_the_first(tmp_path):
    with ScriptedLLMServer(Script({K1.title: [Step(status=503)]}, default=[fix(K2.solution)])) as server:
        sleepy(tmp_path, server, "agent.max_model_error_rate=1")  # K1 unfinished: a resume has work to do
    _, (run,) = runs(tmp_path)
    rid = run.info.run_id
    lock = tmp_path / "episodes" / ".locks" / f"{rid}.lock"
    with ScriptedLLMServer(Script({K1.title: [fix(K1.solution)]}), latency_s=4) as server:
        first = sleepy(tmp_path, server, f"run_id={rid}", popen=True)
        deadline = time.time() + 120
        while str(first.pid) not in (lock.read_text() if lock.exists() else "") and time.time() < deadline:
            time.sleep(0.1)
        second = sleepy(tmp_path, server, f"run_id={rid}", check=False)
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and "Traceback" not in second.stderr
    (line,) = errors(second.stderr)
    assert f"run {rid} is being run by another job (pid {first.pid} on" in line
    episodes = EpisodeStore(tmp_path / "episodes").frame(run_id=rid)
    keys = episodes.select("stage", "cycle", "koan_id", "sample", "attempt")
    k1 = episodes.filter(episodes["koan_id"] == K1.id)
    assert keys.height == keys.unique().height and k1.height == 1 and k1["passed"][0]
    assert runs(tmp_path)[1][0].info.status == "FINISHED"  # the refused job did not touch the run


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


def damage_sqlite(root: Path):
    (root / "mlflow.db").write_bytes(os.urandom(4096))
    return "the MLflow store at sqlite:///", "cannot be opened"


def remove_lance_data(root: Path):
    for f in glob.glob(str(root / "episodes" / "episodes.lance" / "data" / "*")):
        os.remove(f)
    return "the episode store at", "cannot be read: lance error: Not found"


def garble_manifest(root: Path):
    for f in glob.glob(str(root / "episodes" / "episodes.lance" / "_versions" / "*")):
        Path(f).write_bytes(b"garbage")
    return "the episode store at", "cannot be opened"


@pytest.mark.slow
@pytest.mark.parametrize("damage", [damage_sqlite, remove_lance_data, garble_manifest])
def test_a_damaged_store_is_one_line_before_any_model_call_and_is_left_as_it_was(tmp_path, damage):
    with ScriptedLLMServer(Script(default=[fix(K1.solution)])) as server:
        sleepy(tmp_path, server)
    store, what = damage(tmp_path)
    before = tree_digest(tmp_path / "episodes") + hashlib.sha256((tmp_path / "mlflow.db").read_bytes()).hexdigest()
    with ScriptedLLMServer(Script(default=[fix(K1.solution)])) as server:
        r = sleepy(tmp_path, server, check=False)
        assert server.log == []  # refused before any model call
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = errors(r.stderr)
    assert store in line and what in line and "nothing in it was changed" in line
    after = tree_digest(tmp_path / "episodes") + hashlib.sha256((tmp_path / "mlflow.db").read_bytes()).hexdigest()
    assert after == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any mode bits (CI runs it as an ordinary user)")
def test_a_read_only_store_directory_is_one_line(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    with ScriptedLLMServer(Script(default=[fix(K1.solution)])) as server:
        sleepy(store, server)
        shutil.copy(store / "mlflow.db", tmp_path / "before.db")
        store.chmod(0o555)
        try:
            r = sleepy(store, server, check=False)
        finally:
            store.chmod(0o755)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = errors(r.stderr)
    assert "cannot write to" in line or "cannot be opened" in line
