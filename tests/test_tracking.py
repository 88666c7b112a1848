"""What a run leaves in MLflow, as a researcher reads it: no secret anywhere, names that say what differs, a sweep
grouped under a parent run, the koans each stage used as dataset inputs, the night's loss per training step, a
summary of the episodes the UI can show, and an experiment the UI opens as a training experiment."""

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from sleepy.koans import load_pack
from sleepy.testing.scripted_llm import Script, ScriptedLLMServer, Step

PACK = load_pack()
K1, K2 = PACK.select("type_mismatch", "eval", count=2)
KEY, TEACHER_KEY = "sk-PLANTED-9f8e7d6c5b4a", "tk-PLANTED-teacher-0042"


def served(tmp_path, *overrides, calls: bool = True):
    """`python -m sleepy` on the two koans against the scripted server, with an api key planted; the process.
    calls=False: a resume with nothing left to attempt, so the server hears nothing."""
    script = Script({k.title: [Step(reply=f"```rust\n{k.solution}\n```")] for k in (K1, K2)})
    with ScriptedLLMServer(script) as server:
        r = subprocess.run(
            [sys.executable, "-m", "sleepy", *overrides, "stage=eval", "model=openai", "model.name=scripted",
             f"model.api_base={server.url}/v1", f"model.api_key={KEY}", f"night.teacher.api_key={TEACHER_KEY}",
             f"tracking.uri=sqlite:///{tmp_path}/store/mlflow.db", f"episodes.uri={tmp_path}/episodes",
             "koans=type_mismatch", "koans.count=2", "agent.max_attempts=1"],
            cwd=ROOT, env=dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "cache")), capture_output=True, text=True,
            timeout=900)
        sent = {e["authorization"] for e in server.log}
    assert r.returncode == 0, r.stderr[-3000:]
    assert sent == ({f"Bearer {KEY}"} if calls else set())  # the key reached the model server: used, hidden elsewhere
    return r


def client_of(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path}/store/mlflow.db")


def runs_of(tmp_path, experiment="sleepy"):
    client = client_of(tmp_path)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              order_by=["attributes.start_time ASC"])


def files_holding(root: Path, *needles: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and any(n.encode() in p.read_bytes() for n in needles)]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """One eval job: (tmp dir, the process, its run)."""
    tmp = tmp_path_factory.mktemp("single")
    r = served(tmp, "seed=3", f"hydra.run.dir={tmp}/run", "tracking.system_metrics_s=0.2")  # samples a short run
    (run,) = runs_of(tmp)
    return tmp, r, run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A two-job sweep (seed=0,1) on joblib's parallel workers: (tmp dir, the process, its runs)."""
    tmp = tmp_path_factory.mktemp("sweep")
    r = served(tmp, "-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               f"hydra.sweep.dir={tmp}/multirun", "tracking.system_metrics_s=0")
    return tmp, r, runs_of(tmp)


def test_a_planted_api_key_reaches_no_store_artifact_hydra_file_or_log(single):
    tmp, r, run = single
    assert files_holding(tmp, KEY, TEACHER_KEY, "PLANTED") == []  # the sqlite store, artifacts, .hydra/, the job log
    assert "PLANTED" not in r.stdout + r.stderr
    assert run.data.params["model.api_key"] == run.data.params["night.teacher.api_key"] == "***"
    assert "model.api_key=***" in run.data.tags["hydra.overrides"]
    assert "model.api_key=***" in (tmp / "run" / ".hydra" / "overrides.yaml").read_text()
    assert (tmp / "store" / "mlflow.db").stat().st_size > 0 and (tmp / "run" / "__main__.log").exists()


def test_a_planted_api_key_reaches_no_file_of_a_sweep_nor_its_console(sweep):
    tmp, r, runs = sweep
    assert files_holding(tmp, KEY, TEACHER_KEY, "PLANTED") == []  # multirun.yaml and every job's .hydra/ included
    assert "PLANTED" not in r.stdout + r.stderr
    assert "model.api_key=***" in r.stdout  # Hydra's launcher lists each job's overrides, masked
    assert "model.api_key=***" in (tmp / "multirun" / "multirun.yaml").read_text()


def test_the_run_is_named_by_its_overrides_then_its_stage_and_tagged_with_the_rest(single):
    tmp, _, run = single
    # no store, path, URL or secret in the name; stage and cycle once, at the end
    assert run.info.run_name == "seed=3 model=openai model.name=scripted koans=type_mismatch koans.count=2 " \
                                "agent.max_attempts=1 · eval0"
    tags = run.data.tags
    assert (tags["sleepy.stage"], tags["sleepy.cycle"]) == ("eval", "0")
    overrides = tags["hydra.overrides"]  # in full
    assert overrides.startswith("seed=3 tracking.system_metrics_s=0.2 stage=eval model=openai")
    assert f"sqlite:///{tmp}/store" in overrides


def test_the_source_is_recorded_in_mlflows_standard_tags(single):
    _, _, run = single
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == head
    assert run.data.tags["mlflow.source.name"] == "python -m sleepy" and "git.commit" not in run.data.tags


def test_a_new_experiment_opens_as_a_training_experiment_with_a_description(single):
    tmp, _, _ = single
    tags = client_of(tmp).get_experiment_by_name("sleepy").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI's "evaluation runs"
    assert "Rust compile errors" in tags["mlflow.note.content"]


def test_the_eval_koans_are_an_input_whose_digest_is_their_eval_lock_hash(single):
    _, _, run = single
    (entry,) = run.inputs.dataset_inputs
    locked = [line for line in (ROOT / "koans" / "eval.lock").read_text().splitlines()
              if line.split()[-1:] in ([K1.id], [K2.id]) and not line.startswith("#")]
    assert len(locked) == 2
    assert entry.dataset.name == "builtin/eval"
    assert entry.dataset.digest == hashlib.sha256("\n".join(sorted(locked)).encode()).hexdigest()[:16]
    assert '"num_rows": 2' in entry.dataset.profile
    assert {(t.key, t.value) for t in entry.tags} == {("mlflow.data.context", "eval")}


def test_each_stage_logs_an_episode_summary_the_ui_can_show(single):
    import polars as pl

    tmp, _, run = single
    client = client_of(tmp)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "episodes")} == \
        {"episodes/episodes_eval_0.parquet", "episodes/summary_eval_0.csv"}
    summary = pl.read_csv(client.download_artifacts(run.info.run_id, "episodes/summary_eval_0.csv", str(tmp)))
    assert summary.columns == ["koan_id", "family", "passed", "steps", "last_signature", "last_codes"]
    assert summary.sort("koan_id").select("koan_id", "passed", "steps").rows() == \
        sorted([(K1.id, True, 1), (K2.id, True, 1)])


def test_a_run_logs_system_metrics_while_it_runs_and_none_when_they_are_off(single, sweep):
    """With psutil (peft depends on it) MLflow's monitor samples the machine every tracking.system_metrics_s seconds
    until the run ends; 0 turns it off (the sweep's jobs)."""
    _, _, run = single
    cpu = client_of(single[0]).get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert cpu and all(0 <= m.value <= 100 for m in cpu)
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    assert "tracking.system_metrics_s=0.2" in run.data.tags["hydra.overrides"] and "system_metrics" not in \
        run.info.run_name  # how a run is watched does not name it
    assert all(not key.startswith("system/") for r in sweep[2] for key in r.data.metrics)


def test_a_sweep_is_one_parent_run_with_its_jobs_as_children(sweep):
    tmp, _, runs = sweep
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (parent,) = parents  # both jobs, started at once, found the same parent
    assert parent.info.run_name == "seed=0,1 · sweep" and parent.info.status == "FINISHED"
    assert parent.data.tags["sleepy.sweep_dir"] == str((tmp / "multirun").resolve())
    assert len(children) == 2 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    # a job is named for what it sweeps; the overrides every job shares are in its hydra.overrides tag
    assert sorted(c.info.run_name for c in children) == ["seed=0 · eval0", "seed=1 · eval0"]
    assert all("koans.count=2" in c.data.tags["hydra.overrides"] for c in children)
    assert {c.info.status for c in children} == {"FINISHED"}
    assert [a.path for a in client_of(tmp).list_artifacts(parent.info.run_id, "hydra")] == ["hydra/multirun.yaml"]


def test_the_night_logs_its_loss_at_every_training_step_of_the_run(tmp_path):
    """Two nights of three steps: night/loss at steps 1..6 (step = the run's training step), the first and last of each
    night equal to its loss_first and loss_last."""
    r = subprocess.run([sys.executable, "-m", "sleepy", "+experiment=smoke", "+debug=fast", "night.steps=3",
                        f"tracking.uri=sqlite:///{tmp_path}/store/mlflow.db", f"episodes.uri={tmp_path}/episodes",
                        f"adapters_dir={tmp_path}/adapters", f"hydra.run.dir={tmp_path}/run"],
                       cwd=ROOT, env=dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "cache")), capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    client = client_of(tmp_path)
    (run,) = runs_of(tmp_path, "smoke")
    assert run.info.run_name == "experiment=smoke debug=fast night.steps=3 · cycles2"
    loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "night/loss")}
    first = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "night/loss_first")}
    last = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "night/loss_last")}
    assert sorted(loss) == [1, 2, 3, 4, 5, 6]
    assert (loss[1], loss[3], loss[4], loss[6]) == (first[1], last[1], first[2], last[2])
    # and says how it goes while it trains: its first and last step, with the loss MLflow got
    for night, step in ((1, 1), (1, 3), (2, 1), (2, 3)):
        assert f"night {night}: step {step}/3, loss {loss[3 * (night - 1) + step]:.4f}, " in r.stdout, r.stdout[-3000:]
    assert "min left" in r.stdout and "s a step" in r.stdout
    # and so does each stage, its output being no terminal (one koan each here: its first line is its last)
    for stage in ("eval 0", "day 1", "eval 1", "recall 1", "day 2", "eval 2", "recall 2"):
        assert re.search(rf"^{stage}: 1/1 koans, passed [01], 1 attempts, \d+ s a koan$", r.stdout, re.M), r.stdout[-3000:]


def test_a_stage_not_on_a_terminal_says_its_first_koan_then_once_a_minute_and_its_last(capsys):
    """A resumed stage of 4 koans, 1 kept: a line at its first new koan with the time left, none for the next within
    the minute, one at the last."""
    from sleepy.console import Progress

    with Progress("eval 1", total=4, already=1) as progress:
        for passed in (True, False, True):
            progress.koan(passed, 2)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval 1: ")]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"eval 1: 2/4 koans, passed 1, 2 attempts, \d+ s a koan, about \d+ min left", lines[0])
    assert re.fullmatch(r"eval 1: 4/4 koans, passed 2, 6 attempts, \d+ s a koan", lines[1])


def test_uwsh_sources_name_the_adapters_and_the_runs_that_trained_them(tmp_path):
    from sleepy.night.adapters import origin

    run_id = "0123456789abcdef0123456789abcdef"
    assert origin(tmp_path / run_id / "cycle2") == {"path": str(tmp_path / run_id / "cycle2"), "run_id": run_id,
                                                    "cycle": 2}
    assert origin(tmp_path / run_id / "cycle1" / "routes" / "lifetimes")["run_id"] == run_id
    assert origin(tmp_path / "elsewhere")["run_id"] is None


@pytest.mark.parametrize("key,secret", [("model.api_key", True), ("night.teacher.api_key", True), ("hf_token", True),
                                        ("db.PASSWORD", True), ("client_secret", True), ("agent.max_tokens", False),
                                        ("night/tokens_per_s", False), ("model.name", False)])
def test_secret_keys_are_told_by_a_word_of_their_name(key, secret):
    from sleepy.redact import is_secret

    assert is_secret(key) is secret


def test_short_overrides_drop_where_things_are_and_keep_what_differs():
    from sleepy.tracking import short_overrides

    assert short_overrides(["+experiment=lora", "lora=r16", "seed=1", "tracking.uri=sqlite:////x/mlflow.db",
                            "episodes.uri=/x/episodes", "adapters_dir=/x/a", "run_id=abc", "model.api_key=sk-1",
                            "model.api_base=http://h:1/v1", "koans.packs=[builtin,/src/rustlings]", "stage=eval",
                            "cycle=1"]) == ["experiment=lora", "lora=r16", "seed=1", "koans.packs=[builtin,rustlings]"]


def test_hydra_files_are_rewritten_with_secrets_masked_and_interpolations_kept(tmp_path):
    from sleepy.redact import redact_file

    path = tmp_path / "config.yaml"
    path.write_text("model:\n  api_key: sk-abcdefgh\n  name: x\nnight:\n  teacher:\n    api_key: ${oc.env:KEY}\n"
                    "task:\n- model.api_key=sk-abcdefgh\n- seed=1\nnote: was sk-abcdefgh\n")
    redact_file(path, {"sk-abcdefgh"})
    text = path.read_text()
    assert "sk-abcdefgh" not in text and "${oc.env:KEY}" in text and "- seed=1" in text
    assert text.count("***") == 3


def test_a_sweep_name_is_made_of_its_swept_overrides(tmp_path):
    from sleepy.tracking import sweep_name

    (tmp_path / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - +experiment=lora\n"
                                            "    - lora=r4,r8\n    - seed=range(2)\n    - model.api_key=a,b\n")
    assert sweep_name(tmp_path) == "lora=r4,r8 seed=range(2) · sweep"
    assert sweep_name(tmp_path / "nowhere") == "sweep nowhere"


def test_the_night_loss_stream_logs_every_step_after_the_offset(tmp_path):
    from sleepy.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "stream")
    tracker.start(None, "stream")
    with tracker.stream("night/loss", offset=10, every_s=0.0) as log:
        for step in (1, 2, 3):
            log(step, 1.0 / step)
            time.sleep(0.01)
    tracker.end()
    assert tracker.history("night/loss") == {11: 1.0, 12: 0.5, 13: pytest.approx(1 / 3)}


def test_a_resume_with_other_settings_says_so_in_tags_and_a_warning(tmp_path):
    """MLflow keeps a param's first value: a resume with a changed setting is tagged resumed.<key>, new and old, and
    warned about; the run id itself and the stage are a resume's to change."""
    served(tmp_path, f"hydra.run.dir={tmp_path}/run1", "tracking.system_metrics_s=0")
    (run,) = runs_of(tmp_path)
    again = served(tmp_path, f"hydra.run.dir={tmp_path}/run2", "tracking.system_metrics_s=0", "agent.temperature=0.7",
                   f"run_id={run.info.run_id}", calls=False)
    (run,) = runs_of(tmp_path)
    assert run.data.params["agent.temperature"] == "0.2"  # the first value stays
    resumed = {k: v for k, v in run.data.tags.items() if k.startswith("resumed.")}
    assert resumed["resumed.agent.temperature"] == "0.7 (was 0.2)"
    assert set(resumed) == {"resumed.agent.temperature", "resumed.model.api_base"}  # the scripted server's new port
    assert "agent.temperature=0.7 (was 0.2)" in again.stderr and run.info.run_id in again.stderr
