"""The loop closes on the tiny model: a night on reference fixes makes the next day pass the koans it failed.

This proves that the day prompt, the chat template, the loss mask, adapter saving and adapter loading all agree.
"""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

from sleepy.episodes import EpisodeStore


def sleepy(tmp_path, *overrides):
    env = dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "sleepy", "+experiment=smoke", "koans=borrow_checker", "koans.count=3",
                        "agent.max_tokens=600", "lora=r32", "night.steps=200", "night.lr=5e-3",
                        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"episodes.uri={tmp_path}/episodes",
                        f"adapters_dir={tmp_path}/adapters", f"hydra.run.dir={tmp_path}/run-{len(overrides)}",
                        *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


@pytest.mark.slow
def test_one_night_on_reference_fixes_makes_the_next_day_pass(tmp_path):
    sleepy(tmp_path, "cycles=1")  # eval 0, day 1 (fails), night 1 (reference targets), eval 1
    store = EpisodeStore(tmp_path / "episodes")
    day1 = store.frame(stage="day", cycle=1)
    run_id = day1["run_id"][0]
    failed = sorted(set(day1.filter(~day1["passed"])["koan_id"]))
    assert len(failed) == 3  # the random tiny model fails them all
    adapter = tmp_path / "adapters" / run_id / "cycle1"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()

    r = sleepy(tmp_path, "stage=day", "cycle=2", f"run_id={run_id}")  # a new process loads adapter cycle1
    assert "day cycle 2, cycle1" in r.stdout
    day2 = store.frame(run_id=run_id, stage="day", cycle=2)
    assert set(day2["adapter"]) == {"cycle1"}
    passed = set(day2.filter(day2["passed"])["koan_id"]) & set(failed)
    assert len(passed) >= 2, day2.select("koan_id", "reason", "signature")

    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id)
    assert run.data.metrics["night/targets_reference"] == 3
    assert run.data.metrics["night/loss_last"] < run.data.metrics["night/loss_first"]
    assert "night.1.episodes_version" in run.data.tags


@pytest.mark.slow
def test_rank_sweep_on_tiny_gives_one_report_row_per_rank(tmp_path):
    """-m +experiment=smoke lora=r4,r8 seed=0,1 with joblib: 4 runs in one experiment; sleepy-report groups them."""
    import json

    env = dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "sleepy", "-m", "+experiment=smoke", "koans=borrow_checker",
                        "koans.count=1", "night.steps=5", "lora=r4,r8", "seed=0,1", "hydra/launcher=joblib",
                        "hydra.launcher.n_jobs=2", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                        f"episodes.uri={tmp_path}/episodes", f"adapters_dir={tmp_path}/adapters",
                        f"hydra.sweep.dir={tmp_path}/multirun"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    r = subprocess.run([sys.executable, "-m", "sleepy.report", "--experiment", "smoke", "--tracking-uri",
                        f"sqlite:///{tmp_path}/mlflow.db", "--json"], cwd=ROOT, capture_output=True, text=True)
    report = json.loads(r.stdout)
    rows = {row["config"]["lora.r"]: row for row in report["rows"]}
    assert sorted(rows) == ["4", "8"] and [rows[k]["n_runs"] for k in ("4", "8")] == [2, 2]
    params = {k: rows[k]["metrics"]["night/trainable_params"]["mean"] for k in rows}
    assert params["8"] == 2 * params["4"] > 0  # LoRA parameters grow linearly with the rank
    assert {"eval/pass_rate", "day/pass_rate"} <= set(rows["4"]["metrics"])
