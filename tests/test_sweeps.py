"""Every experiment runs end to end: one sweep over conf/experiment/*.yaml in the fast debug mode (as
lightning-hydra-template's tests/test_sweeps.py does), so no experiment file rots."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT
from test_config import EXPERIMENTS


@pytest.mark.slow
def test_every_experiment_runs_in_the_fast_debug_mode(tmp_path):
    env = dict(os.environ, SLEEPY_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "sleepy", "-m", "+experiment=glob(*)", "+debug=fast",
                        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"episodes.uri={tmp_path}/episodes",
                        f"adapters_dir={tmp_path}/adapters", f"hydra.sweep.dir={tmp_path}/multirun"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    jobs = {}
    for name in EXPERIMENTS:  # uwsh runs last: its basis comes from the adapters the runs before it saved
        parent, run = sorted(client.search_runs([client.get_experiment_by_name(name).experiment_id]),
                             key=lambda r: "mlflow.parentRunId" in r.data.tags)  # the sweep's parent run, its job
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id, name
        assert run.info.status == parent.info.status == "FINISHED", name
        assert "eval/pass_rate" in run.data.metrics, name
        jobs[name] = run
    import json

    uwsh = jobs["uwsh"]  # its basis came from the adapters of the runs before it: named, with their runs
    sources = json.loads(open(client.download_artifacts(uwsh.info.run_id, "adapters/cycle1/uwsh_sources.json",
                                                        str(tmp_path))).read())
    trained = {jobs[name].info.run_id for name in EXPERIMENTS if name != "uwsh"}
    assert sources and {s["run_id"] for s in sources} <= trained and all(s["cycle"] >= 1 for s in sources)
    lora = jobs["lora"]
    assert {m.step for m in client.get_metric_history(lora.info.run_id, "cl/bwt")} == {2}
    assert {a.path for a in client.list_artifacts(lora.info.run_id, "accuracy_matrix")} == \
        {"accuracy_matrix/cycle1.json", "accuracy_matrix/cycle2.json"}
