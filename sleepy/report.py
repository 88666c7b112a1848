"""sleepy-report: compare the runs of an MLflow experiment, one row per configuration over seeds.

A configuration is the set of params that differ between the experiment's runs (the seed, run ids
and paths aside). Each metric is shown as its estimate over the configuration's runs with a 95%
interval (sleepy/intervals.py): a pass rate or a repeat error rate from the runs' own episodes, koans
and seeds resampled (inside [0, 1]); a measurement (steps, parameters) a t-interval over seeds, none
when it is the same in every run. A second table has a row per configuration and eval pack or subset
(`sleepy/subsets.py`): its n, pass rate, the koans that changed against cycle 0 and the minimum
detectable effect at that discordance, so a difference smaller than what the koans can show reads as one.
`--plot` writes the pass rate by cycle and by family as PNGs and logs them to a run of the experiment
`<experiment>-reports`, apart from the jobs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from sleepy.pipes import quiet_on_closed_pipe

IGNORED = ("seed", "run_id", "episodes.uri", "tracking.uri", "tracking.artifact_root", "model.api_base",
           "model.api_key", "model.cache_dir", "sandbox.jobs")
DEFAULT_METRICS = ("eval/pass_rate", "eval/median_steps", "eval/mean_steps_all", "eval/repeat_error_rate",
                   "eval/persistent_failure_rate", "day/pass_rate", "cl/bwt", "cl/forgetting", "night/trainable_params",
                   "night/trainable_params_lora_equivalent")
REPORTS = "{experiment}-reports"  # where --plot logs its run
# metrics computed from koan outcomes: (stage, what, family)
_FROM_KOANS = re.compile(r"^(day|eval|recall)/(pass_rate|repeat_error_rate|persistent_failure_rate)(?:/([^/]+))?$")
_EPISODES = re.compile(r"^episodes_(\w+?)_(\d+)\.parquet$")


def bounds(metric: str) -> tuple[float, float]:
    """The range a metric lives in: a rate in [0, 1], a transfer in [-1, 1], a count or a step count >= 0."""
    parts = metric.split("/")
    if any(p.endswith("_rate") or p.startswith("pass_at_") for p in parts) or metric.startswith("cl/R/"):
        return 0.0, 1.0
    if metric in ("cl/bwt", "cl/fwt", "cl/forgetting"):
        return -1.0, 1.0
    if any(w in parts[-1] for w in ("steps", "params", "koans", "examples", "attempts", "tokens", "regressions")):
        return 0.0, math.inf
    return -math.inf, math.inf


def is_rate(metric: str) -> bool:
    return bounds(metric) == (0.0, 1.0)


class Outcomes:
    """Per run, stage and cycle, the koan outcomes (sleepy.metrics.koan_outcomes) of the Parquet episodes the run
    logged as artifacts; each file is read once."""

    def __init__(self, client):
        self.client = client
        self._paths: dict[str, dict[tuple[str, int], str]] = {}
        self._frames: dict[tuple[str, str], object] = {}

    def cycles(self, run_id: str, stage: str) -> list[int]:
        return sorted(c for s, c in self._listing(run_id) if s == stage)

    def at(self, run_id: str, stage: str, cycle: int):
        """One koan per row (koan_id, family, passed, last_signature, ...), or None when the run logged no such
        episodes."""
        import tempfile

        from sleepy.metrics import koan_outcomes

        path = self._listing(run_id).get((stage, cycle))
        if path is None:
            return None
        if (run_id, path) not in self._frames:
            import polars as pl

            with tempfile.TemporaryDirectory() as d:
                local = self.client.download_artifacts(run_id, path, d)
                frame = pl.read_parquet(local)
            self._frames[(run_id, path)] = koan_outcomes(frame) if frame.height else None
        return self._frames[(run_id, path)]

    def _listing(self, run_id: str) -> dict[tuple[str, int], str]:
        if run_id not in self._paths:
            try:
                files = self.client.list_artifacts(run_id, "episodes")
            except Exception:  # noqa: BLE001 - an unreadable artifact store: no episodes, intervals from the metrics
                files = []
            found = {}
            for f in files:
                if m := _EPISODES.match(Path(f.path).name):
                    found[(m.group(1), int(m.group(2)))] = f.path
            self._paths[run_id] = found
        return self._paths[run_id]


def koan_grid(metric: str, run_ids: list[str], outcomes: Outcomes, cycle: int | None = None):
    """For a metric computed from koan outcomes, the seeds x koans grids (numerator, denominator) of the runs' last
    cycle (or `cycle`); None when a run lacks the episodes (or the cycle before, for a repeat error rate)."""
    import numpy as np
    import polars as pl

    m = _FROM_KOANS.match(metric)
    if not m:
        return None
    stage, what, family = m.groups()
    rows = []
    for rid in run_ids:
        cycles = outcomes.cycles(rid, stage)
        c = cycle if cycle is not None else (cycles[-1] if cycles else None)
        now = outcomes.at(rid, stage, c) if c is not None else None
        if now is None:
            return None
        if family:
            now = now.filter(pl.col("family") == family)
        if what == "pass_rate":
            rows.append({k: (float(p), 1.0) for k, p in zip(now["koan_id"], now["passed"], strict=True)})
            continue
        before = outcomes.at(rid, stage, c - 1)
        if before is None:
            return None
        j = before.join(now, on="koan_id", suffix="_now")
        failed = ~j["passed"]
        again = failed & ~j["passed_now"]
        if what == "repeat_error_rate":
            again = again & (j["last_signature"] == j["last_signature_now"]).fill_null(False)
        rows.append({k: (float(a), float(f)) for k, a, f in zip(j["koan_id"], again, failed, strict=True)})
    koans = sorted({k for r in rows for k in r})
    num = np.array([[r.get(k, (math.nan, math.nan))[0] for k in koans] for r in rows])
    den = np.array([[r.get(k, (math.nan, math.nan))[1] for k in koans] for r in rows])
    return num.reshape(len(rows), len(koans)), den.reshape(len(rows), len(koans))


def estimate(metric: str, members, outcomes: Outcomes | None, cycle: int | None = None,
             values: list[float] | None = None, counts: list[float] | None = None) -> dict:
    """A metric over a configuration's runs: the estimate, its 95% interval (lo, hi; nan when there is none), how
    the interval was made, and the runs' own values (min, max). values, counts: the runs' values and numbers of
    koans at `cycle` (default: their last)."""
    from sleepy.intervals import bootstrap_ratio, pooled_wilson, t_interval

    if values is None:
        values = [r.data.metrics[metric] for r in members if metric in r.data.metrics]
    seeds = [min(values), max(values)] if values else [math.nan, math.nan]
    grid = koan_grid(metric, [r.info.run_id for r in members], outcomes, cycle) if outcomes else None
    if grid is not None and grid[1].size:
        est, lo, hi = bootstrap_ratio(*grid)
        return {"mean": est, "lo": lo, "hi": hi, "method": "bootstrap over koans and seeds", "seeds": seeds}
    stage = metric.split("/")[0]
    if counts is None:
        counts = [r.data.metrics.get(f"{stage}/koans") for r in members if metric in r.data.metrics]
    if re.fullmatch(r"(day|eval|recall)/pass_rate", metric) and values and len(counts) == len(values) and all(counts):
        passed = [round(v * n) for v, n in zip(values, counts, strict=True)]
        est, lo, hi = pooled_wilson(passed, counts)
        return {"mean": est, "lo": lo, "hi": hi, "method": "Wilson over all koan attempts", "seeds": seeds}
    mean, lo, hi = t_interval(values, bounds(metric))
    return {"mean": mean, "lo": lo, "hi": hi, "method": None if lo != lo else "t over seeds", "seeds": seeds}


def load_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise SystemExit(f"sleepy-report: error: no MLflow experiment '{experiment}' at {uri} (there are: {names})")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    # a sweep's parent run holds no results of its own: its children are the configurations
    return client, [r for r in runs if r.data.tags.get("sleepy.report") != "true"
                    and r.data.tags.get("sleepy.sweep") != "parent"]


def configurations(runs) -> tuple[list[str], dict[tuple, list]]:
    """The params that vary between runs, and the runs grouped by their values of those params."""
    keys = sorted({k for r in runs for k in r.data.params} - set(IGNORED))
    varying = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1 and not k.startswith("hydra")]
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault(tuple(r.data.params.get(k) for k in varying), []).append(r)
    return varying, dict(sorted(groups.items(), key=lambda kv: tuple(_order(x) for x in kv[0])))


def _order(value) -> tuple:
    """Numbers in numeric order (r4 before r16), before the other values in text order."""
    try:
        return 0, float(value), ""
    except (TypeError, ValueError):
        return 1, 0.0, str(value)


def summarize(runs, metrics: tuple[str, ...] = DEFAULT_METRICS,
              outcomes: Outcomes | None = None) -> tuple[list[str], list[dict]]:
    """One row per configuration: each metric's estimate and interval over its runs (see `estimate`)."""
    varying, groups = configurations(runs)
    present = [m for m in metrics if any(m in r.data.metrics for r in runs)]
    rows = []
    for values, members in groups.items():
        row = {"config": dict(zip(varying, values, strict=True)), "n_runs": len(members), "metrics": {}}
        for m in present:
            have = [r for r in members if m in r.data.metrics]
            row["metrics"][m] = estimate(m, have, outcomes) if have else {
                "mean": math.nan, "lo": math.nan, "hi": math.nan, "method": None, "seeds": [math.nan, math.nan]}
        rows.append(row)
    return varying, rows


_SUBSET_N = re.compile(r"^eval/subset/(.+)/n$")


def subset_rows(runs) -> list[dict]:
    """Per configuration and eval pack or subset (the runs' last eval): n, the pass rate over runs (Wilson over every
    koan attempt, the runs' own rates beside it), the mean number of koans that changed against cycle 0, the MDE at
    that discordance and the best-case MDE of n koans."""
    from statistics import fmean

    from sleepy.intervals import pooled_wilson
    from sleepy.power import best_mde, mde

    varying, groups = configurations(runs)
    out = []
    for values, members in groups.items():
        names = {m.group(1) for r in members for k in r.data.metrics if (m := _SUBSET_N.match(k))}
        for name in sorted(names, key=lambda x: (x != "all", x)):
            key = f"eval/subset/{name}"
            got = [r.data.metrics for r in members if f"{key}/n" in r.data.metrics]
            n = int(max(m[f"{key}/n"] for m in got))
            rated = [(m[f"{key}/pass_rate"], int(m[f"{key}/n"])) for m in got if f"{key}/pass_rate" in m]
            rate, lo, hi = pooled_wilson([round(r * k) for r, k in rated], [k for _, k in rated]) if rated else (
                math.nan, math.nan, math.nan)
            seeds = [min(r for r, _ in rated), max(r for r, _ in rated)] if rated else [math.nan, math.nan]
            changed_runs = [m[f"{key}/discordant"] for m in got if f"{key}/discordant" in m]
            changed = fmean(changed_runs) if changed_runs else math.nan
            out.append({"config": dict(zip(varying, values, strict=True)), "subset": name, "n": n, "n_runs": len(got),
                        "check_mode": any(m.get(f"{key}/check_mode") == 1.0 for m in got),
                        "pass_rate": {"mean": rate, "lo": lo, "hi": hi, "method": "Wilson over all koan attempts",
                                      "seeds": seeds},
                        "changed": changed,
                        "mde": mde(n, changed / n) if changed == changed and changed > 0 else math.nan,
                        "best_mde": best_mde(n)})
    return out


def fmt(s: dict, runs: int = 1) -> str:
    """estimate [lo, hi], and on a second line the runs' own range when there are several and they differ."""
    if s["mean"] != s["mean"]:
        return "-"
    text = f"{s['mean']:.3g}" + ("" if s["lo"] != s["lo"] else f" [{s['lo']:.3g}, {s['hi']:.3g}]")
    low, high = s.get("seeds", (math.nan, math.nan))
    if runs > 1 and low == low and low != high:
        text += f"\nruns {low:.3g}..{high:.3g}"
    return text


def print_subsets(varying: list[str], rows: list[dict], experiment: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from sleepy.subsets import label, points

    t = Table(title=f"experiment {experiment}: eval koans by pack and subset, last cycle against cycle 0",
              caption="pass rate: Wilson 95% interval over every koan attempt of every run, the runs' own range below. "
                      "MDE: the smallest change in pass rate McNemar's exact test detects (alpha 0.05, power 0.8) at "
                      "the mean number of changed koans; best: if every change went one way")
    for k in varying:
        t.add_column(k)
    for col in ("pack / subset", "n", "runs", "pass rate [95% CI]", "changed vs cycle 0", "MDE", "best MDE"):
        t.add_column(col, justify="left" if col == "pack / subset" else "right")
    for r in rows:
        t.add_row(*(Text(str(r["config"][k])) for k in varying), label(r["subset"], r["check_mode"]), str(r["n"]),
                  str(r["n_runs"]), fmt(r["pass_rate"], r["n_runs"]),
                  "-" if r["changed"] != r["changed"] else f"{r['changed']:.1f}", points(r["mde"]), points(r["best_mde"]))
    Console(width=max(120, 24 * (len(varying) + 7))).print(t)


def print_table(varying: list[str], rows: list[dict], experiment: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    methods = sorted({s["method"] for r in rows for s in r["metrics"].values() if s["method"]})
    t = Table(title=f"experiment {experiment}: estimate [95% CI] over runs",
              caption="intervals: " + ("; ".join(methods) or "none (one run, or the same value in every run)") +
                      ". A metric with no interval had the same value in every run.")
    for k in varying:
        t.add_column(k)
    t.add_column("runs", justify="right")
    metrics = list(rows[0]["metrics"]) if rows else []
    for m in metrics:
        t.add_column(m, justify="right")
    for r in rows:
        t.add_row(*(Text(str(r["config"][k])) for k in varying), str(r["n_runs"]),
                  *(fmt(r["metrics"][m], r["n_runs"]) for m in metrics))
    Console(width=max(120, 24 * (len(varying) + len(metrics)))).print(t)


def _label(varying: list[str], values: tuple, width: int = 28) -> str:
    import textwrap

    text = ", ".join(f"{k}={v}" for k, v in zip(varying, values, strict=True)) or "all runs"
    return "\n".join(textwrap.wrap(text, width)) or text


def cycle_figure(client, varying: list[str], runs, outcomes: Outcomes | None = None):
    """The eval pass rate by cycle, one line per configuration with its 95% interval; the lines of several
    configurations are set apart a little along the (integer) cycle axis, the legend beside the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    _, groups = configurations(runs)
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    shift = 0.06 if len(groups) > 1 else 0.0
    all_cycles: set[int] = set()
    for i, (values, members) in enumerate(groups.items()):
        history = [({m.step: m.value for m in client.get_metric_history(r.info.run_id, "eval/pass_rate")},
                    {m.step: m.value for m in client.get_metric_history(r.info.run_id, "eval/koans")}) for r in members]
        cycles = sorted({c for rates, _ in history for c in rates})
        if not cycles:
            continue
        all_cycles |= set(cycles)
        stats = [estimate("eval/pass_rate", [r for r, (rates, _) in zip(members, history, strict=True) if c in rates],
                          outcomes, cycle=c, values=[rates[c] for rates, _ in history if c in rates],
                          counts=[koans.get(c) for rates, koans in history if c in rates]) for c in cycles]
        x = [c + (i - (len(groups) - 1) / 2) * shift for c in cycles]
        err = [[0 if s["lo"] != s["lo"] else s["mean"] - s["lo"] for s in stats],
               [0 if s["hi"] != s["hi"] else s["hi"] - s["mean"] for s in stats]]
        ax.errorbar(x, [s["mean"] for s in stats], yerr=err, marker="o", capsize=3, label=_label(varying, values))
    ax.set_xlabel("cycle")
    ax.set_ylabel("eval pass rate")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if all_cycles:
        ax.set_xlim(min(all_cycles) - 0.5, max(all_cycles) + 0.5)
    ax.set_title("eval pass rate by cycle, with its 95% interval", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def family_figure(varying: list[str], runs):
    """A heat map of the last eval's pass rate per configuration and koan family, each cell labelled."""
    from statistics import fmean

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, groups = configurations(runs)
    families = sorted({k.split("/")[-1] for r in runs for k in r.data.metrics if k.startswith("eval/pass_rate/")})
    labels, grid = [], []
    for values, members in groups.items():
        labels.append(_label(varying, values))
        row = []
        for f in families:
            got = [r.data.metrics[f"eval/pass_rate/{f}"] for r in members if f"eval/pass_rate/{f}" in r.data.metrics]
            row.append(fmean(got) if got else math.nan)
        grid.append(row)
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    fig, ax = plt.subplots(figsize=(3 + 1.1 * max(1, len(families)), 1.6 + 0.45 * lines * max(1, len(labels))),
                           layout="constrained")
    im = ax.imshow(grid or [[math.nan]], vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(families)), [f.replace("_", " ") for f in families], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for y, row in enumerate(grid):
        for x, v in enumerate(row):
            if v == v:
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="eval pass rate (last cycle)")
    return fig


def plot(client, varying: list[str], runs, out: Path, outcomes: Outcomes | None = None) -> list[Path]:
    """Pass rate by cycle per configuration, and a per-family heat map of the final eval pass rates, as PNGs."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in (("pass_rate_by_cycle.png", cycle_figure(client, varying, runs, outcomes)),
                      ("pass_rate_by_family.png", family_figure(varying, runs))):
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(out / name)
    return paths


def log_report(client, uri: str, experiment: str, paths: list[Path]) -> str:
    """A run of its own in `<experiment>-reports` with the plots as artifacts, so the sweep's experiment holds only
    its jobs; the run names the experiment it reports on."""
    from sleepy.tracking import artifact_location

    name = REPORTS.format(experiment=experiment)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        exp_id = client.create_experiment(name, artifact_location=artifact_location(uri, None))
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, run_name=f"report {experiment}",
                            tags={"sleepy.report": "true", "sleepy.report.experiment": experiment})
    for p in paths:
        client.log_artifact(run.info.run_id, str(p), "report")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@quiet_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    from sleepy.tracking import tracking_uri

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the runs' episodes are read quietly
    ap = argparse.ArgumentParser(prog="sleepy-report", description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="sleepy", help="MLflow experiment name (default: sleepy)")
    ap.add_argument("--tracking-uri", default=None, help="default: sqlite:///mlruns/mlflow.db (under the working directory)")
    ap.add_argument("--metric", action="append", help="a metric to compare (repeatable); default: the seed's")
    ap.add_argument("--plot", type=Path, metavar="DIR",
                    help="write PNG plots here and log them to a run of the experiment <experiment>-reports")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    uri = tracking_uri(args.tracking_uri)
    client, runs = load_runs(uri, args.experiment)
    if not runs:
        print(f"sleepy-report: error: experiment '{args.experiment}' has no finished runs", file=sys.stderr)
        return 2
    outcomes = Outcomes(client)
    varying, rows = summarize(runs, tuple(args.metric) if args.metric else DEFAULT_METRICS, outcomes)
    subsets = subset_rows(runs)
    if args.json:
        print(json.dumps({"experiment": args.experiment, "varying": varying, "rows": rows, "subsets": subsets},
                         indent=1))
    else:
        print_table(varying, rows, args.experiment)
        if subsets:
            print_subsets(varying, subsets, args.experiment)
    if args.plot:
        paths = plot(client, varying, runs, args.plot, outcomes)
        run_id = log_report(client, uri, args.experiment, paths)
        if not args.json:
            print("plots: " + ", ".join(str(p) for p in paths) +
                  f" (logged to run {run_id} of experiment {REPORTS.format(experiment=args.experiment)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
