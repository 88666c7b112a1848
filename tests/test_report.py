"""sleepy-report: one row per configuration, means and 95% intervals over seeds, plots logged to MLflow."""

import json
import math

import pytest
from conftest import run_cli

from sleepy.report import mean_ci


def test_mean_ci_is_a_t_interval():
    m, lo, hi = mean_ci([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6)
    assert (lo, hi) == pytest.approx((0.6 - 4.303 * 0.1 / math.sqrt(3), 0.6 + 4.303 * 0.1 / math.sqrt(3)))
    assert math.isnan(mean_ci([0.4])[1]) and mean_ci([0.4])[0] == 0.4


@pytest.fixture()
def store(tmp_path):
    """An MLflow store with a 3-seed sweep over two LoRA ranks."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    values = {"4": [0.5, 0.6, 0.7], "8": [0.8, 0.8, 0.8]}
    for rank, rates in values.items():
        for seed, rate in enumerate(rates):
            run = client.create_run(exp)
            rid = run.info.run_id
            for k, v in {"lora.r": rank, "seed": str(seed), "model.name": "tiny", "run_id": rid}.items():
                client.log_param(rid, k, v)
            for cycle in (0, 1):
                client.log_metric(rid, "eval/pass_rate", rate * cycle, step=cycle)
                client.log_metric(rid, "eval/pass_rate/lifetimes", rate / 2 * cycle, step=cycle)
            client.set_terminated(rid)
    return uri, client, exp


def test_one_row_per_configuration_with_means_and_intervals(store):
    uri, _, _ = store
    rc, out, err = run_cli("-m", "sleepy.report", "--experiment", "sweep", "--tracking-uri", uri, "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["varying"] == ["lora.r"]
    rows = {r["config"]["lora.r"]: r for r in report["rows"]}
    assert rows["4"]["n_runs"] == rows["8"]["n_runs"] == 3
    r4 = rows["4"]["metrics"]["eval/pass_rate"]
    assert r4["mean"] == pytest.approx(0.6) and r4["hi"] - r4["mean"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    r8 = rows["8"]["metrics"]["eval/pass_rate"]
    assert r8["lo"] == pytest.approx(0.8) and r8["hi"] == pytest.approx(0.8)


def test_table_and_plots_are_logged_to_mlflow(store, tmp_path):
    uri, client, exp = store
    rc, out, err = run_cli("-m", "sleepy.report", "--experiment", "sweep", "--tracking-uri", uri,
                           "--plot", str(tmp_path / "plots"))
    assert rc == 0, err
    assert "lora.r" in out and "0.6 [" in out
    assert (tmp_path / "plots" / "pass_rate_by_cycle.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "pass_rate_by_family.png").stat().st_size > 1000
    reports = [r for r in client.search_runs([exp]) if r.data.tags.get("sleepy.report") == "true"]
    assert len(reports) == 1
    assert {a.path for a in client.list_artifacts(reports[0].info.run_id, "report")} == {
        "report/pass_rate_by_cycle.png", "report/pass_rate_by_family.png"}
    rc, out, _ = run_cli("-m", "sleepy.report", "--experiment", "sweep", "--tracking-uri", uri, "--json")
    assert sum(r["n_runs"] for r in json.loads(out)["rows"]) == 6  # the report run is not a configuration


def test_unknown_experiment_is_a_clear_error(store):
    uri, _, _ = store
    rc, _, err = run_cli("-m", "sleepy.report", "--experiment", "nope", "--tracking-uri", uri)
    assert rc != 0 and "no MLflow experiment 'nope'" in err and "sweep" in err


def test_rows_per_pack_and_subset_show_n_and_the_minimum_detectable_effect(tmp_path):
    from mlflow.tracking import MlflowClient

    from sleepy.power import mde

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("packs", artifact_location=(tmp_path / "artifacts").as_uri())
    for seed, changed in enumerate((30, 50)):
        rid = client.create_run(exp).info.run_id
        client.log_param(rid, "seed", str(seed))
        for name, n, check in (("all", 500, 0.0), ("rustc_errors", 250, 1.0)):
            for key, value in (("n", n), ("pass_rate", 0.5), ("discordant", changed), ("check_mode", check)):
                client.log_metric(rid, f"eval/subset/{name}/{key}", value, step=1)
        client.set_terminated(rid)
    rc, out, err = run_cli("-m", "sleepy.report", "--experiment", "packs", "--tracking-uri", uri, "--json")
    assert rc == 0, err
    rows = {r["subset"]: r for r in json.loads(out)["subsets"]}
    assert rows["all"]["n"] == 500 and rows["all"]["n_runs"] == 2 and rows["all"]["changed"] == 40
    assert rows["all"]["mde"] == pytest.approx(mde(500, 40 / 500))
    assert rows["rustc_errors"]["check_mode"] and rows["rustc_errors"]["mde"] == pytest.approx(mde(250, 40 / 250))
    rc, out, _ = run_cli("-m", "sleepy.report", "--experiment", "packs", "--tracking-uri", uri)
    assert "rustc_errors (check mode: compiles, no tests)" in out and "MDE" in out and " pts" in out
