"""Day and eval stages end to end: the scripted LLM server, the runner, LanceDB episodes, MLflow metrics."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from sleepy.episodes import EpisodeStore
from sleepy.koans import load_pack
from sleepy.metrics import wilson
from sleepy.testing.scripted_llm import Script, ScriptedLLMServer, Step

PACK = load_pack()
K1, K2, K3 = PACK.select("type_mismatch", "eval", count=3)


def fix(code):
    return Step(reply=f"Here is the fix:\n```rust\n{code}\n```\n")


def sleepy(tmp_path, server, *overrides, protocol="openai", check=True, popen=False):
    api = f"{server.url}/v1" if protocol == "openai" else server.url
    flags = [o for o in overrides if o.startswith("-")]
    overrides = [o for o in overrides if not o.startswith("-")]
    args = [sys.executable, "-m", "sleepy", *flags, "stage=eval", f"model={protocol}", "model.name=scripted",
            f"model.api_base={api}", "model.retries=1", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"episodes.uri={tmp_path}/episodes", "experiment_name=scripted", "koans=type_mismatch", "koans.count=3",
            "agent.max_attempts=2", f"hydra.run.dir={tmp_path}/runs/{time.time_ns()}", *overrides]
    env = dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "cache"))
    if popen:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def runs(tmp_path, experiment="scripted"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def metric_at(client, run_id, key, step):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}[step]


def test_two_scripted_cycles_give_the_metrics_computed_by_hand(tmp_path):
    # cycle 0: K1 passes at 1; K2 fails twice with its own error; K3 passes at 2.
    cycle0 = Script({K1.title: [fix(K1.solution)], K2.title: [fix(K2.code)], K3.title: [fix(K3.code), fix(K3.solution)]})
    with ScriptedLLMServer(cycle0) as server:
        sleepy(tmp_path, server, "cycle=0")
    # cycle 1: K1 now fails (a regression); K2 fails again with the same signature (a repeat); K3 passes at 1.
    cycle1 = Script({K1.title: [fix(K1.code)], K2.title: [fix(K2.code)], K3.title: [fix(K3.solution)]})
    _, (run0,) = runs(tmp_path)
    with ScriptedLLMServer(cycle1) as server:  # cycle 0 is the first run's, named as this run's baseline
        sleepy(tmp_path, server, "cycle=1", f"baseline_run_id={run0.info.run_id}", protocol="ollama")
    client, (run0, run1) = runs(tmp_path)
    for run in (run0, run1):
        assert run.info.status == "FINISHED"
    r0, r1 = run0.info.run_id, run1.info.run_id
    _, lo0, hi0 = wilson(2, 3)
    assert metric_at(client, r0, "eval/pass_rate", 0) == pytest.approx(2 / 3)
    assert (metric_at(client, r0, "eval/pass_rate_lo", 0), metric_at(client, r0, "eval/pass_rate_hi", 0)) == \
        pytest.approx((0.2077, 0.9385), abs=1e-4) == (lo0, hi0)
    assert metric_at(client, r0, "eval/median_steps", 0) == 1.5
    assert metric_at(client, r1, "eval/pass_rate", 1) == pytest.approx(1 / 3)
    assert (metric_at(client, r1, "eval/pass_rate_lo", 1), metric_at(client, r1, "eval/pass_rate_hi", 1)) == \
        pytest.approx((0.0615, 0.7923), abs=1e-4)
    assert metric_at(client, r1, "eval/median_steps", 1) == 1.0
    assert metric_at(client, r1, "eval/repeat_error_rate", 1) == 1.0  # K2, the one failure at cycle 0, repeats
    assert metric_at(client, r1, "eval/regressions", 1) == 1.0  # K1
    assert metric_at(client, r1, "eval/pass_rate/type_mismatch", 1) == pytest.approx(1 / 3)
    assert metric_at(client, r1, "eval/mcnemar_p", 1) == 1.0  # one discordant koan is no effect
    params = run1.data.params
    assert params["model.provider"] == "ollama" and params["cycle"] == "1" and params["agent.max_attempts"] == "2"
    assert run1.data.tags["hydra.choice.model"] == "ollama" and "mlflow.source.git.commit" in run1.data.tags
    artifacts = {a.path for a in client.list_artifacts(r1)}
    assert {"episodes", "hydra"} <= artifacts
    episodes = EpisodeStore(tmp_path / "episodes").frame(run_id=r1)
    assert episodes.height == 2 + 2 + 1 and set(episodes["split"]) == {"eval"}


def test_model_errors_become_failed_attempts_not_crashes(tmp_path):
    script = Script({K1.title: [Step(status=503)], K2.title: [Step(malformed=True)], K3.title: [fix(K3.solution)]})
    with ScriptedLLMServer(script) as server:
        sleepy(tmp_path, server, "agent.max_model_error_rate=1")  # never stop: every error is recorded
    client, (run,) = runs(tmp_path)
    episodes = EpisodeStore(tmp_path / "episodes").frame(run_id=run.info.run_id)
    errors = episodes.filter(episodes["reason"] == "model_error")
    assert sorted(set(errors["koan_id"])) == sorted([K1.id, K2.id]) and errors.height == 4
    assert "ServiceUnavailable" in errors.filter(errors["koan_id"] == K1.id)["signature"][0] or \
        "503" in errors.filter(errors["koan_id"] == K1.id)["diagnostics"][0]
    assert metric_at(client, run.info.run_id, "eval/pass_rate", 0) == pytest.approx(1 / 3)
    assert metric_at(client, run.info.run_id, "eval/model_errors", 0) == 4


def test_unreachable_server_is_a_clear_error(tmp_path):
    with ScriptedLLMServer(Script()) as server:
        url = server.url
    r = subprocess.run([sys.executable, "-m", "sleepy", "stage=eval", "model=openai", "model.name=x",
                        f"model.api_base={url}/v1", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                        f"episodes.uri={tmp_path}/episodes", f"hydra.run.dir={tmp_path}/run"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "cannot reach the openai server" in r.stderr and url in r.stderr and "Traceback" not in r.stderr


def test_sigkill_mid_stage_then_resume_loses_and_duplicates_nothing(tmp_path):
    koans = PACK.select(["type_mismatch", "lifetimes"], "eval", count=4)
    script = Script({k.title: [fix(k.code), fix(k.solution)] if i % 2 else [fix(k.solution)]
                     for i, k in enumerate(koans)})
    overrides = ("koans=all", "koans.families=[type_mismatch,lifetimes]", "koans.count=4", "model.concurrency=2")
    with ScriptedLLMServer(script, latency_s=0.4) as server:
        proc = sleepy(tmp_path, server, *overrides, popen=True)
        store_dir = tmp_path / "episodes"
        deadline = time.time() + 120
        while time.time() < deadline:
            if store_dir.exists() and EpisodeStore(store_dir).frame().height:
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        first = EpisodeStore(store_dir).frame()
        run_id = first["run_id"][0]
        kept = set(first["koan_id"])
        assert 0 < len(kept) < len(koans)
        r = sleepy(tmp_path, server, *overrides, f"run_id={run_id}")
        assert f"resumed: {len(kept)} koans kept" in " ".join(r.stdout.split())
    episodes = EpisodeStore(store_dir).frame(run_id=run_id)
    assert sorted(set(episodes["koan_id"])) == sorted(k.id for k in koans)
    assert episodes.group_by(["koan_id", "attempt"]).len()["len"].max() == 1
    for koan_id, attempts, passed in episodes.group_by("koan_id").agg("attempt", "passed").iter_rows():
        assert attempts == list(range(1, len(attempts) + 1)) and passed[-1], koan_id
    client, all_runs = runs(tmp_path)
    assert [run.info.status for run in all_runs] == ["FINISHED"]
    assert metric_at(client, run_id, "eval/pass_rate", 0) == 1.0


def test_a_killed_run_is_marked_killed_by_the_next_job(tmp_path):
    script = Script({k.title: [fix(k.solution)] for k in (K1, K2, K3)})
    with ScriptedLLMServer(script, latency_s=2.0) as server:
        proc = sleepy(tmp_path, server, popen=True)
        deadline = time.time() + 120
        while time.time() < deadline and not server.log:  # the run has started and a model call is in flight
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        server.latency_s = 0
        sleepy(tmp_path, server)
    _, (killed, finished) = runs(tmp_path)
    assert (killed.info.status, finished.info.status) == ("KILLED", "FINISHED")


@pytest.mark.slow
def test_joblib_multirun_lands_four_runs_and_every_episode(tmp_path):
    script = Script({k.title: [fix(k.solution)] for k in (K1, K2, K3)})  # order-free: jobs share the server
    with ScriptedLLMServer(script, latency_s=0.05) as server:
        r = sleepy(tmp_path, server, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "seed=0,1,2,3",
                   f"hydra.sweep.dir={tmp_path}/multirun")
    client, every_run = runs(tmp_path)
    (parent,) = [run for run in every_run if "mlflow.parentRunId" not in run.data.tags]  # the sweep's
    all_runs = [run for run in every_run if run is not parent]
    assert len(all_runs) == 4 and {run.info.status for run in every_run} == {"FINISHED"}
    assert {run.data.tags["mlflow.parentRunId"] for run in all_runs} == {parent.info.run_id}
    assert sorted(run.data.params["seed"] for run in all_runs) == ["0", "1", "2", "3"]
    episodes = EpisodeStore(tmp_path / "episodes").frame()
    assert episodes.height == 4 * 3
    assert episodes.group_by("run_id").len()["len"].to_list() == [3, 3, 3, 3]
    assert set(episodes["run_id"]) == {run.info.run_id for run in all_runs}
    assert r.returncode == 0
    rc = subprocess.run([sys.executable, "-m", "sleepy.report", "--experiment", "scripted", "--tracking-uri",
                         f"sqlite:///{tmp_path}/mlflow.db", "--json"], capture_output=True, text=True, cwd=ROOT)
    report = __import__("json").loads(rc.stdout)
    assert report["varying"] == [] and [r["n_runs"] for r in report["rows"]] == [4]
    assert report["rows"][0]["metrics"]["eval/pass_rate"]["mean"] == 1.0


def test_day_stage_on_the_tiny_model_runs_offline(tmp_path):
    env = dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "sleepy", "stage=day", "model=tiny", "koans=borrow_checker",
                        "koans.count=2", "agent.max_tokens=24", "agent.max_attempts=2",
                        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"episodes.uri={tmp_path}/episodes",
                        f"hydra.run.dir={tmp_path}/run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    client, (run,) = runs(tmp_path, "sleepy")
    assert run.info.status == "FINISHED" and run.data.params["model.backend"] == "tiny"
    assert metric_at(client, run.info.run_id, "day/koans", 0) == 2
    episodes = EpisodeStore(tmp_path / "episodes").frame()
    assert set(episodes["split"]) == {"train"} and set(episodes["model"]) == {"tiny"}
    assert (episodes["tokens_out"] > 0).all() and (episodes["tokens_out"] <= 24).all()


@pytest.mark.parametrize("override,key", [("model.backend=gpt", "model.backend"), ("agent.prompt=clever", "agent.prompt"),
                                          ("stage=night", "stage")])
def test_bad_choices_name_the_key_and_the_options(tmp_path, override, key):
    r = subprocess.run([sys.executable, "-m", "sleepy", override, f"hydra.run.dir={tmp_path}/run"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and key in r.stderr and "valid:" in r.stderr and "Traceback" not in r.stderr


def test_a_mistyped_agent_key_is_named(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sleepy", "agent.max_attempt=3"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "'max_attempt' is not a key of agent" in r.stderr and "max_attempts" in r.stderr
    r = subprocess.run([sys.executable, "-m", "sleepy", "agent.max_attempts=many"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "agent.max_attempts" in r.stderr and "Integer" in r.stderr  # a wrong type names the key


def test_samples_give_pass_at_k(tmp_path):
    script = Script({K1.title: [fix(K1.code), fix(K1.solution), fix(K1.code)]})
    with ScriptedLLMServer(script) as server:
        sleepy(tmp_path, server, "koans.count=1", "agent.samples=3", "agent.max_attempts=1")
    client, (run,) = runs(tmp_path)
    assert metric_at(client, run.info.run_id, "eval/pass_at_1", 0) == pytest.approx(1 / 3)
    assert metric_at(client, run.info.run_id, "eval/pass_at_2", 0) == pytest.approx(2 / 3)
    episodes = EpisodeStore(tmp_path / "episodes").frame()
    assert sorted(episodes["sample"].to_list()) == [0, 1, 2]


def test_memory_strategy_retrieves_this_runs_fixes_from_its_earlier_days(tmp_path):
    a, b = PACK.select("borrow_checker", "train", count=2)
    day0 = Script({a.title: [fix(a.code), fix(a.solution)], b.title: [fix(b.solution)]})
    common = ("stage=day", "koans=borrow_checker", "koans.count=2", "agent.prompt=memory")
    with ScriptedLLMServer(day0) as server:
        sleepy(tmp_path, server, *common, "cycle=0")
    run_id = EpisodeStore(tmp_path / "episodes").frame()["run_id"][0]
    day1 = Script({a.title: [fix(a.solution)], b.title: [fix(b.solution)]})
    with ScriptedLLMServer(day1) as server:
        sleepy(tmp_path, server, *common, "cycle=1", f"run_id={run_id}")
        prompts = [e["body"]["messages"][-1]["content"] for e in server.log]
    assert any("Similar errors fixed before" in p and a.solution.strip().splitlines()[0] in p for p in prompts)


def test_sigterm_during_a_served_model_call_stops_the_run_at_once_as_killed(tmp_path):
    """Before: the stage took 4-5 s to stop and ended in a traceback with exit status -2."""
    script = Script({K1.title: [Step(reply="late", delay_s=60)]})
    with ScriptedLLMServer(script) as server:
        proc = sleepy(tmp_path, server, "koans.count=1", popen=True)
        deadline = time.time() + 120
        while time.time() < deadline and not server.log:  # a model call is in flight
            time.sleep(0.05)
        time.sleep(0.3)
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.time() - start
    assert took < 3 and proc.returncode == 128 + signal.SIGTERM, (took, err[-2000:])
    assert "Traceback" not in err and "marked KILLED" in err and "resume it with run_id=" in err
    _, (run,) = runs(tmp_path)
    assert run.info.status == "KILLED"


def test_the_real_model_without_local_weights_is_one_clear_error(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-m", "sleepy", "stage=eval", "model=qwen2.5-coder-1.5b",
                        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"episodes.uri={tmp_path}/episodes",
                        f"hydra.run.dir={tmp_path}/run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "Qwen/Qwen2.5-Coder-1.5B-Instruct" in r.stderr and "model=tiny" in r.stderr
    client, (run,) = runs(tmp_path, "sleepy")
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_readme_flow_served_script_eval_and_a_three_seed_sweep_compared(tmp_path):
    """The scripted server as a process, a 3-seed x 2-strategy sweep on the basic launcher, sleepy-report."""
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "sleepy.testing.scripted_llm", "--port", str(port), "--answer", "second"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert "scripted LLM server on" in server.stdout.readline()
        r = subprocess.run([sys.executable, "-m", "sleepy", "-m", "stage=eval", "model=openai", "model.name=scripted",
                            f"model.api_base=http://127.0.0.1:{port}/v1", "koans.count=1", "agent.prompt=plain,explain",
                            "seed=0,1,2", "experiment_name=readme", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                            f"episodes.uri={tmp_path}/episodes", f"hydra.sweep.dir={tmp_path}/multirun"],
                           cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        server.terminate()
        server.wait()
    r = subprocess.run([sys.executable, "-m", "sleepy.report", "--experiment", "readme", "--tracking-uri",
                        f"sqlite:///{tmp_path}/mlflow.db", "--json"], cwd=ROOT, capture_output=True, text=True)
    report = json.loads(r.stdout)
    assert report["varying"] == ["agent.prompt"]
    assert [(row["config"]["agent.prompt"], row["n_runs"]) for row in report["rows"]] == [("explain", 3), ("plain", 3)]
    for row in report["rows"]:
        assert row["metrics"]["eval/pass_rate"]["mean"] == 1.0  # the server's second answer is always the fix
        assert 1.0 <= row["metrics"]["eval/median_steps"]["mean"] <= 2.0


def test_eval_over_two_packs_reports_n_and_the_mde_per_pack(tmp_path):
    rustlings = ROOT / "tests" / "fixtures" / "rustlings"
    vecs1 = load_pack(rustlings).get("vecs1")
    packs = [f"koans.packs=[builtin,{rustlings}]", "koans.families=[type_mismatch,05_vecs]", "koans=all"]
    with ScriptedLLMServer(Script({K1.title: [fix(K1.solution)], vecs1.title: [fix(vecs1.code)]})) as server:
        r = sleepy(tmp_path, server, "cycle=0", *packs)
    assert "eval cycle 0 by pack and subset" in r.stdout and "best MDE" in r.stdout
    _, (first,) = runs(tmp_path)
    with ScriptedLLMServer(Script({K2.title: [fix(K2.solution)], vecs1.title: [fix(vecs1.solution)]})) as server:
        sleepy(tmp_path, server, "cycle=1", f"baseline_run_id={first.info.run_id}", *packs)
    client, (run0, run1) = runs(tmp_path)
    m0, m1 = run0.data.metrics, run1.data.metrics
    assert (m0["eval/subset/all/n"], m0["eval/subset/builtin/n"], m0["eval/subset/rustlings/n"]) == (4, 3, 1)
    assert m0["eval/subset/builtin/pass_rate"] == pytest.approx(1 / 3) and m0["eval/subset/rustlings/pass_rate"] == 0
    # cycle 1 against cycle 0: K1 lost, K2 and vecs1 gained: 3 koans changed, too few for any effect to be detectable
    assert m1["eval/subset/all/discordant"] == 3 and m1["eval/discordant"] == 3 and m1["eval/mde"] != m1["eval/mde"]
    assert m1["eval/subset/rustlings/discordant"] == 1


def test_a_served_model_takes_the_koans_in_groups_of_twice_its_concurrency(tmp_path):
    """On a server that answers one request at a time, koans go two by two, every attempt of a pair before the next
    pair starts: a stop loses at most two koans' unfinished work. With 4 at a time, all 4 koans share the rounds."""
    koans = PACK.select("type_mismatch", "eval", count=4)
    for concurrency, first_four in ((1, 2), (4, 4)):
        script = Script({k.title: [fix(k.code), fix(k.solution)] for k in koans})  # each passes at attempt 2
        with ScriptedLLMServer(script) as server:
            sleepy(tmp_path, server, "koans.count=4", f"model.concurrency={concurrency}")
            order = [e["key"] for e in server.log]
        assert len(order) == 8 and sorted(order) == sorted(k.title for k in koans for _ in range(2))
        assert len(set(order[:4])) == first_four, order
        if concurrency == 1:
            assert set(order[:4]).isdisjoint(order[4:])  # the first pair finished before the second began
