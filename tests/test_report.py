"""sleepy-report: one row per configuration, estimates and 95% intervals over koans and seeds, plots logged to a
run of their own."""

import json
import math

import pytest
from conftest import run_cli


@pytest.fixture()
def store(tmp_path):
    """An MLflow store with a 3-seed sweep over two LoRA ranks (35 eval koans, no episodes logged)."""
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
            client.log_metric(rid, "night/trainable_params", 16384, step=1)
            for cycle in (0, 1):
                client.log_metric(rid, "eval/koans", 35, step=cycle)
                client.log_metric(rid, "eval/pass_rate", rate * cycle, step=cycle)
                client.log_metric(rid, "eval/median_steps", 1 + rate * cycle, step=cycle)
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
    assert r4["mean"] == pytest.approx(0.6) and r4["seeds"] == pytest.approx([0.5, 0.7])
    assert r4["method"] == "Wilson over all koan attempts"  # 63 of 105 attempts (no episodes were logged)
    from sleepy.metrics import wilson

    assert (r4["lo"], r4["hi"]) == pytest.approx(wilson(63, 105)[1:])
    r8 = rows["8"]["metrics"]["eval/pass_rate"]
    assert 0.6 < r8["lo"] < 0.8 < r8["hi"] < 1  # the same rate in every seed is still a sample of 35 koans
    steps = rows["4"]["metrics"]["eval/median_steps"]  # a measurement: Student's t over the seeds
    assert steps["method"] == "t over seeds"
    assert steps["hi"] - steps["mean"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)


def test_intervals_of_rates_stay_between_0_and_1(tmp_path):
    """Two seeds at 0.4 and 1.0: a t-interval over them was [-3.4, 4.8]; a rate's interval stays in [0, 1]."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("two", artifact_location=(tmp_path / "artifacts").as_uri())
    for seed, rate in enumerate((0.4, 1.0)):
        rid = client.create_run(exp).info.run_id
        client.log_param(rid, "seed", str(seed))
        for key, value in (("eval/pass_rate", rate), ("eval/koans", 5), ("eval/repeat_error_rate", rate / 2),
                           ("day/pass_rate", 1 - rate), ("cl/forgetting", rate - 0.5)):
            client.log_metric(rid, key, value, step=1)
        client.set_terminated(rid)
    rc, out, err = run_cli("-m", "sleepy.report", "--experiment", "two", "--tracking-uri", uri, "--json")
    assert rc == 0, err
    (row,) = json.loads(out)["rows"]
    for metric in ("eval/pass_rate", "eval/repeat_error_rate", "day/pass_rate"):
        s = row["metrics"][metric]
        assert 0 <= s["lo"] < s["mean"] < s["hi"] <= 1, (metric, s)
    forgetting = row["metrics"]["cl/forgetting"]
    assert -1 <= forgetting["lo"] and forgetting["hi"] <= 1


def test_a_metric_that_is_the_same_in_every_run_prints_no_interval(store):
    uri, _, _ = store
    rc, out, err = run_cli("-m", "sleepy.report", "--experiment", "sweep", "--tracking-uri", uri, "--json",
                           "--metric", "night/trainable_params")
    assert rc == 0, err
    for row in json.loads(out)["rows"]:
        s = row["metrics"]["night/trainable_params"]
        assert s["mean"] == 16384 and math.isnan(s["lo"]) and math.isnan(s["hi"]) and s["method"] is None
    rc, out, err = run_cli("-m", "sleepy.report", "--experiment", "sweep", "--tracking-uri", uri,
                           "--metric", "night/trainable_params", env_extra={"COLUMNS": "200"})
    assert rc == 0, err
    assert "1.64e+04" in out and "1.64e+04 [" not in out


def test_table_and_plots_are_logged_to_mlflow(store, tmp_path):
    uri, client, exp = store
    rc, out, err = run_cli("-m", "sleepy.report", "--experiment", "sweep", "--tracking-uri", uri,
                           "--plot", str(tmp_path / "plots"))
    assert rc == 0, err
    assert "lora.r" in out and "0.6 [" in out
    assert (tmp_path / "plots" / "pass_rate_by_cycle.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "pass_rate_by_family.png").stat().st_size > 1000
    assert len(client.search_runs([exp])) == 6  # the sweep's experiment holds its jobs only
    reports = client.search_runs([client.get_experiment_by_name("sweep-reports").experiment_id])
    assert len(reports) == 1 and reports[0].data.tags["sleepy.report.experiment"] == "sweep"
    assert {a.path for a in client.list_artifacts(reports[0].info.run_id, "report")} == {
        "report/pass_rate_by_cycle.png", "report/pass_rate_by_family.png"}
    assert "sweep-reports" in out
    rc, out, _ = run_cli("-m", "sleepy.report", "--experiment", "sweep", "--tracking-uri", uri, "--json")
    assert sum(r["n_runs"] for r in json.loads(out)["rows"]) == 6


def test_the_cycle_axis_has_integer_ticks_and_the_labels_fit(store):
    from sleepy.report import configurations, cycle_figure, family_figure

    _, client, exp = store
    runs = client.search_runs([exp])
    for r in runs:  # a third cycle, and a second varying param with long values
        client.log_metric(r.info.run_id, "eval/pass_rate", 0.5, step=2)
        targets = "[self, teacher, reference]" if r.data.params["lora.r"] == "4" else "[reference]"
        client.log_param(r.info.run_id, "night.teacher.targets_in_order", targets)
    runs = client.search_runs([exp])
    varying, _ = configurations(runs)
    assert len(varying) == 2
    fig = cycle_figure(client, varying, runs)
    ax = fig.axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [0, 1, 2]
    lines = [bars.lines[0] for bars in ax.containers]  # the data line of each configuration's error bars
    assert len(lines) == 2 and list(lines[0].get_xdata()) != list(lines[1].get_xdata())  # set apart, not on top

    for figure in (fig, family_figure(varying, runs)):  # every label and the legend inside the figure
        figure.canvas.draw()
        box, renderer = figure.bbox, figure.canvas.get_renderer()
        for a in figure.axes:  # an axes' tight box holds what it draws: tick labels, axis labels, title, legend
            e = a.get_tightbbox(renderer)
            assert e.x0 >= box.x0 - 1 and e.y0 >= box.y0 - 1 and e.x1 <= box.x1 + 1 and e.y1 <= box.y1 + 1, (e, box)


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


def test_pass_rates_come_with_a_bootstrap_over_the_runs_koans_and_seeds(tmp_path):
    """Runs that logged their episodes: the interval resamples koans and seeds; where every koan failed in every
    seed, Wilson's interval over the koans says how sure that zero is."""
    import polars as pl
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("episodic", artifact_location=(tmp_path / "artifacts").as_uri())
    koans = [f"k{i}" for i in range(20)]
    for config, passing in (("a", (12, 14)), ("b", (0, 0))):
        for seed, n_pass in enumerate(passing):
            rid = client.create_run(exp).info.run_id
            for key, value in (("seed", str(seed)), ("agent.prompt", config)):
                client.log_param(rid, key, value)
            frame = pl.DataFrame({"koan_id": koans, "family": ["lifetimes"] * 10 + ["type_mismatch"] * 10,
                                  "attempt": [1] * 20, "passed": [i < n_pass for i in range(20)],
                                  "signature": ["E0308: mismatched types"] * 20})
            frame.write_parquet(tmp_path / "episodes_eval_1.parquet")
            client.log_artifact(rid, str(tmp_path / "episodes_eval_1.parquet"), "episodes")
            client.log_metric(rid, "eval/pass_rate", n_pass / 20, step=1)
            client.log_metric(rid, "eval/pass_rate/lifetimes", min(n_pass, 10) / 10, step=1)
            client.set_terminated(rid)
    rc, out, err = run_cli("-m", "sleepy.report", "--experiment", "episodic", "--tracking-uri", uri, "--json",
                           "--metric", "eval/pass_rate", "--metric", "eval/pass_rate/lifetimes")
    assert rc == 0, err
    rows = {r["config"]["agent.prompt"]: r["metrics"] for r in json.loads(out)["rows"]}
    a = rows["a"]["eval/pass_rate"]
    assert a["method"] == "bootstrap over koans and seeds" and a["mean"] == pytest.approx(26 / 40)
    assert 0.35 < a["lo"] < 0.55 and 0.75 < a["hi"] < 0.9  # about Wilson's for 20 koans, not for 40 attempts
    assert rows["a"]["eval/pass_rate/lifetimes"]["mean"] == 1.0
    b = rows["b"]["eval/pass_rate"]
    from sleepy.metrics import wilson

    assert b["mean"] == 0 and (b["lo"], b["hi"]) == pytest.approx(wilson(0, 20)[1:])
