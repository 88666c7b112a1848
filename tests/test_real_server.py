"""An eval stage against a real OpenAI-compatible server that is not ours: `transformers serve` (transformers' own
FastAPI server, the `serving` extra) on the tiny model, offline. The tiny model is random, so nothing is asserted
about passes: only that every attempt reached the server and got a reply, and that the run finished."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT
from test_stages import runs

from sleepy.episodes import EpisodeStore
from sleepy.models.llamacpp import free_port
from sleepy.models.tiny import build_tiny

pytestmark = pytest.mark.slow

READY_S = 180  # transformers serve imports torch and FastAPI: about 6 s on an idle machine


@pytest.fixture()
def transformers_serve(tmp_path):
    """`transformers serve` on a free loopback port, ready (GET /health answers), and always stopped after the test:
    (its address, the tiny model's directory, its log)."""
    model = build_tiny()
    port = free_port()
    log_path = tmp_path / "transformers-serve.log"
    exe = Path(sys.executable).with_name("transformers")  # the console script beside this Python
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # a local directory as the model: nothing from the hub
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                 "--log-level", "info"], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            assert proc.poll() is None, f"transformers serve exited {proc.returncode}: {log_path.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"transformers serve not ready in {READY_S} s: {log_path.read_text()}"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", model, log_path
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def test_an_eval_stage_against_transformers_serve_gets_a_reply_for_every_attempt(tmp_path, transformers_serve):
    api_base, model, server_log = transformers_serve
    args = [sys.executable, "-m", "sleepy", "stage=eval", "model=openai", f"model.name={model}",
            f"model.api_base={api_base}", "koans=type_mismatch", "koans.count=2", "agent.max_attempts=2",
            "agent.max_tokens=48", "experiment_name=real-server", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            f"episodes.uri={tmp_path}/episodes", f"hydra.run.dir={tmp_path}/run"]
    env = dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    # sized from the server: transformers serve lists its models with a `status`, and generates one at a time
    assert "1 request at a time (transformers serve generates one request at a time" in r.stdout

    episodes = EpisodeStore(tmp_path / "episodes").frame()
    assert episodes.height >= 2 and set(episodes["koan_id"]) and episodes["koan_id"].n_unique() == 2
    assert (episodes["reason"] != "model_error").all(), episodes.filter(episodes["reason"] == "model_error")["signature"]
    assert (episodes["tokens_out"] > 0).all() and (episodes["tokens_in"] > 0).all()
    assert (episodes["response"].str.len_chars() > 0).all()
    assert (episodes["model"] == str(model)).all()
    replies = server_log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert replies == episodes.height  # every attempt reached the server once and got its reply; no retries

    _, (run,) = runs(tmp_path, "real-server")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval/model_errors"] == 0 and run.data.metrics["eval/attempts"] == episodes.height
