"""sleepy-report: compare the runs of an MLflow experiment, one row per configuration over seeds.

A configuration is the set of params that differ between the experiment's runs (the seed, run ids
and paths aside). Each metric is shown as its mean over the configuration's runs with a 95%
t-interval, so a difference smaller than run-to-run noise reads as one. A second table has a row per
configuration and eval pack or subset (`sleepy/subsets.py`): its n, pass rate, the koans that changed
against cycle 0 and the minimum detectable effect at that discordance, so a difference smaller than
what the koans can show reads as one too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

IGNORED = ("seed", "run_id", "episodes.uri", "tracking.uri", "tracking.artifact_root", "model.api_base",
           "model.api_key", "model.cache_dir", "sandbox.jobs")
DEFAULT_METRICS = ("eval/pass_rate", "eval/median_steps", "eval/mean_steps_all", "eval/repeat_error_rate",
                   "eval/persistent_failure_rate", "day/pass_rate", "cl/bwt", "cl/forgetting", "night/trainable_params",
                   "night/trainable_params_lora_equivalent")
# two-sided 95% Student t quantiles for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval; the interval is nan for a single run."""
    vals = [v for v in values if v == v]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, math.nan
    m = sum(vals) / n
    if n == 1:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1))
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / math.sqrt(n)
    return m, m - half, m + half


def load_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise SystemExit(f"sleepy-report: error: no MLflow experiment '{experiment}' at {uri} (there are: {names})")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    return client, [r for r in runs if r.data.tags.get("sleepy.report") != "true"]


def configurations(runs) -> tuple[list[str], dict[tuple, list]]:
    """The params that vary between runs, and the runs grouped by their values of those params."""
    keys = sorted({k for r in runs for k in r.data.params} - set(IGNORED))
    varying = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1 and not k.startswith("hydra")]
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault(tuple(r.data.params.get(k) for k in varying), []).append(r)
    return varying, dict(sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])))


def summarize(runs, metrics: tuple[str, ...] = DEFAULT_METRICS) -> tuple[list[str], list[dict]]:
    varying, groups = configurations(runs)
    present = [m for m in metrics if any(m in r.data.metrics for r in runs)]
    rows = []
    for values, members in groups.items():
        row = {"config": dict(zip(varying, values, strict=True)), "n_runs": len(members), "metrics": {}}
        for m in present:
            mean, lo, hi = mean_ci([r.data.metrics[m] for r in members if m in r.data.metrics])
            row["metrics"][m] = {"mean": mean, "lo": lo, "hi": hi}
        rows.append(row)
    return varying, rows


_SUBSET_N = re.compile(r"^eval/subset/(.+)/n$")


def subset_rows(runs) -> list[dict]:
    """Per configuration and eval pack or subset (the runs' last eval): n, pass rate over runs, the mean number of
    koans that changed against cycle 0, the MDE at that discordance and the best-case MDE of n koans."""
    from sleepy.power import best_mde, mde

    varying, groups = configurations(runs)
    out = []
    for values, members in groups.items():
        names = {m.group(1) for r in members for k in r.data.metrics if (m := _SUBSET_N.match(k))}
        for name in sorted(names, key=lambda x: (x != "all", x)):
            key = f"eval/subset/{name}"
            got = [r.data.metrics for r in members if f"{key}/n" in r.data.metrics]
            n = int(max(m[f"{key}/n"] for m in got))
            rate, lo, hi = mean_ci([m.get(f"{key}/pass_rate", math.nan) for m in got])
            changed = mean_ci([m.get(f"{key}/discordant", math.nan) for m in got])[0]
            out.append({"config": dict(zip(varying, values, strict=True)), "subset": name, "n": n, "n_runs": len(got),
                        "check_mode": any(m.get(f"{key}/check_mode") == 1.0 for m in got),
                        "pass_rate": {"mean": rate, "lo": lo, "hi": hi}, "changed": changed,
                        "mde": mde(n, changed / n) if changed == changed and changed > 0 else math.nan,
                        "best_mde": best_mde(n)})
    return out


def print_subsets(varying: list[str], rows: list[dict], experiment: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from sleepy.subsets import label, points

    t = Table(title=f"experiment {experiment}: eval koans by pack and subset, last cycle against cycle 0",
              caption="MDE: the smallest change in pass rate McNemar's exact test detects (alpha 0.05, power 0.8) at "
                      "the mean number of changed koans; best: if every change went one way")
    for k in varying:
        t.add_column(k)
    for col in ("pack / subset", "n", "runs", "pass rate [95% CI]", "changed vs cycle 0", "MDE", "best MDE"):
        t.add_column(col, justify="left" if col == "pack / subset" else "right")
    for r in rows:
        p = r["pass_rate"]
        rate = "-" if p["mean"] != p["mean"] else f"{p['mean']:.3g}" + ("" if p["lo"] != p["lo"] else
                                                                          f" [{p['lo']:.3g}, {p['hi']:.3g}]")
        t.add_row(*(str(r["config"][k]) for k in varying), label(r["subset"], r["check_mode"]), str(r["n"]),
                  str(r["n_runs"]), rate, "-" if r["changed"] != r["changed"] else f"{r['changed']:.1f}",
                  points(r["mde"]), points(r["best_mde"]))
    Console(width=max(120, 24 * (len(varying) + 7))).print(t)


def print_table(varying: list[str], rows: list[dict], experiment: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(s):
        if s["mean"] != s["mean"]:
            return "-"
        ci = "" if s["lo"] != s["lo"] else f" [{s['lo']:.3g}, {s['hi']:.3g}]"
        return f"{s['mean']:.3g}{ci}"

    t = Table(title=f"experiment {experiment}: mean [95% CI] over runs")
    for k in varying:
        t.add_column(k)
    t.add_column("runs", justify="right")
    metrics = list(rows[0]["metrics"]) if rows else []
    for m in metrics:
        t.add_column(m, justify="right")
    for r in rows:
        t.add_row(*(str(r["config"][k]) for k in varying), str(r["n_runs"]), *(fmt(r["metrics"][m]) for m in metrics))
    Console(width=max(120, 24 * (len(varying) + len(metrics)))).print(t)


def plot(client, varying: list[str], runs, out: Path) -> list[Path]:
    """Pass rate by cycle per configuration, and a per-family heat map of the final eval pass rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    _, groups = configurations(runs)
    fig, ax = plt.subplots(figsize=(7, 4))
    for values, members in groups.items():
        by_cycle: dict[int, list[float]] = {}
        for r in members:
            for m in client.get_metric_history(r.info.run_id, "eval/pass_rate"):
                by_cycle.setdefault(m.step, []).append(m.value)
        if by_cycle:
            cycles = sorted(by_cycle)
            stats = [mean_ci(by_cycle[c]) for c in cycles]
            label = ", ".join(f"{k}={v}" for k, v in zip(varying, values, strict=True)) or "all runs"
            ax.errorbar(cycles, [s[0] for s in stats], yerr=[[0 if s[1] != s[1] else s[0] - s[1] for s in stats],
                                                              [0 if s[2] != s[2] else s[2] - s[0] for s in stats]],
                        marker="o", capsize=3, label=label)
    ax.set_xlabel("cycle")
    ax.set_ylabel("eval pass rate")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    by_cycle_png = out / "pass_rate_by_cycle.png"
    fig.tight_layout()
    fig.savefig(by_cycle_png, dpi=120)
    plt.close(fig)

    families = sorted({k.split("/")[-1] for r in runs for k in r.data.metrics if k.startswith("eval/pass_rate/")})
    labels, grid = [], []
    for values, members in groups.items():
        labels.append(", ".join(f"{k}={v}" for k, v in zip(varying, values, strict=True)) or "all runs")
        grid.append([mean_ci([r.data.metrics.get(f"eval/pass_rate/{f}", math.nan) for r in members])[0]
                     for f in families])
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * max(1, len(families)), 1.2 + 0.5 * len(labels)))
    im = ax.imshow(grid or [[math.nan]], vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(families)), families, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    fig.colorbar(im, ax=ax, label="eval pass rate")
    heat_png = out / "pass_rate_by_family.png"
    fig.tight_layout()
    fig.savefig(heat_png, dpi=120)
    plt.close(fig)
    return [by_cycle_png, heat_png]


def main(argv: list[str] | None = None) -> int:
    from sleepy.tracking import tracking_uri

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    ap = argparse.ArgumentParser(prog="sleepy-report", description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="sleepy", help="MLflow experiment name (default: sleepy)")
    ap.add_argument("--tracking-uri", default=None, help="default: sqlite:///mlruns/mlflow.db (under the working directory)")
    ap.add_argument("--metric", action="append", help="a metric to compare (repeatable); default: the seed's")
    ap.add_argument("--plot", type=Path, metavar="DIR", help="write PNG plots here and log them to MLflow")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    uri = tracking_uri(args.tracking_uri)
    client, runs = load_runs(uri, args.experiment)
    if not runs:
        print(f"sleepy-report: error: experiment '{args.experiment}' has no finished runs", file=sys.stderr)
        return 2
    varying, rows = summarize(runs, tuple(args.metric) if args.metric else DEFAULT_METRICS)
    subsets = subset_rows(runs)
    if args.json:
        print(json.dumps({"experiment": args.experiment, "varying": varying, "rows": rows, "subsets": subsets},
                         indent=1))
    else:
        print_table(varying, rows, args.experiment)
        if subsets:
            print_subsets(varying, subsets, args.experiment)
    if args.plot:
        paths = plot(client, varying, runs, args.plot)
        run = client.create_run(runs[0].info.experiment_id, run_name="sleepy-report", tags={"sleepy.report": "true"})
        for p in paths:
            client.log_artifact(run.info.run_id, str(p), "report")
        client.set_terminated(run.info.run_id)
        if not args.json:
            print("plots: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
