"""Scale-out paths: a submitit sweep (the SLURM path, run locally) and jobs sharing an MLflow tracking server."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT

from sleepy.koans import load_pack
from sleepy.testing.scripted_llm import Script, ScriptedLLMServer, Step

KOANS = load_pack().select("type_mismatch", "eval", count=1)


def script():
    return Script({k.title: [Step(reply=f"```rust\n{k.solution}\n```")] for k in KOANS})


def sleepy(tmp_path, server, *args, tracking):
    r = subprocess.run([sys.executable, "-m", "sleepy", *args, "stage=eval", "model=openai", "model.name=scripted",
                        f"model.api_base={server.url}/v1", "koans=type_mismatch", "koans.count=1", *tracking,
                        f"episodes.uri={tmp_path}/episodes", "experiment_name=scale", "seed=0,1",
                        f"hydra.sweep.dir={tmp_path}/multirun"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "cache")))
    assert r.returncode == 0, r.stderr[-3000:]


def finished_runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("scale")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sleepy.sweep") == "parent"]  # the sweep's own run
    jobs = [r for r in runs if r is not parent]
    assert {r.data.tags.get("mlflow.parentRunId") for r in jobs} == {parent.info.run_id}
    return client, jobs


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    with ScriptedLLMServer(script()) as server:
        sleepy(tmp_path, server, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
               tracking=[f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    _, runs = finished_runs(f"sqlite:///{tmp_path}/mlflow.db")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.metrics["eval/pass_rate"] for r in runs} == {1.0}


@pytest.mark.slow
def test_jobs_share_an_mlflow_tracking_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", MLFLOW_DISABLE_TELEMETRY="true")
    mlflow = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "artifacts"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow server did not come up in 180 s")
        with ScriptedLLMServer(script()) as server:
            sleepy(tmp_path, server, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   tracking=["tracking=server", f"tracking.uri={uri}"])
        client, runs = finished_runs(uri)
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {"episodes", "hydra"}
    finally:
        os.killpg(mlflow.pid, 15)
        mlflow.wait(timeout=30)
