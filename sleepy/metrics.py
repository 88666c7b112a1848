"""The metrics of a run, with how much of each is noise: polars over episode rows.

An episode row is one attempt: koan_id, family, cycle, attempt (1-based), passed, signature, error_codes, and
optionally sample (0-based, for pass@k when the agent draws several independent samples).

Every function takes the episodes it measures as arguments: the caller passes this run's own cycles (or, named
and logged, a baseline run's), so no number is ever borrowed from a run nobody asked for. A metric that compares
with an earlier cycle is absent when that cycle is not given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Proportion and its Wilson score interval (scipy); (nan, nan, nan) when n == 0."""
    from scipy.stats import binomtest

    if n == 0:
        return math.nan, math.nan, math.nan
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    return successes / n, float(ci.low), float(ci.high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs b and c: b ~ Binomial(b + c, 1/2) (scipy)."""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(int(b), int(b + c), 0.5).pvalue)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n samples; got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def koan_outcomes(episodes: pl.DataFrame, max_attempts: int | None = None) -> pl.DataFrame:
    """One row per koan: passed within max_attempts, steps to green, the last attempt's signature and error codes.

    With several samples per koan, a koan passes when its first sample (sample 0) passes.
    """
    ep = episodes
    if "sample" in ep.columns:
        ep = ep.filter(pl.col("sample") == 0)
    if max_attempts is not None:
        ep = ep.filter(pl.col("attempt") <= max_attempts)
    if "error_codes" not in ep.columns:
        ep = ep.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("error_codes"))
    return (
        ep.sort("attempt")
        .group_by("koan_id", maintain_order=True)
        .agg(
            pl.col("family").first(),
            pl.col("passed").any().alias("passed"),
            pl.col("attempt").filter(pl.col("passed")).min().alias("steps"),
            pl.col("signature").last().alias("last_signature"),
            pl.col("error_codes").last().alias("last_codes"),
        )
        .sort("koan_id")
    )


@dataclass
class CycleMetrics:
    """One stage at one cycle. The fields compared with the previous cycle or the baseline are None when that
    cycle was not given: absent, not zero."""

    n: int
    passed: int
    pass_rate: float
    pass_rate_lo: float
    pass_rate_hi: float
    median_steps: float  # over the koans that passed (the seed's)
    mean_steps_all: float  # over every koan, an unsolved one counted as max_attempts + 1
    expected_error_rate: float  # of the failed koans, the share whose last attempt still has an expected error
    per_family: dict[str, float]
    repeat_error_rate: float | None = None  # of the koans failed before, the share failing again, same signature
    persistent_failure_rate: float | None = None  # of the koans failed before, the share failing again, any way
    regressions: int | None = None  # passed before, failed now
    mcnemar_p: float | None = None  # paired exact test against the baseline

    def as_mlflow(self, prefix: str) -> dict[str, float]:
        keys = ("pass_rate", "pass_rate_lo", "pass_rate_hi", "median_steps", "mean_steps_all", "expected_error_rate",
                "repeat_error_rate", "persistent_failure_rate", "regressions", "mcnemar_p")
        out = {f"{prefix}/{k}": float(getattr(self, k)) for k in keys if getattr(self, k) is not None}
        out.update({f"{prefix}/pass_rate/{f}": v for f, v in self.per_family.items()})
        return out


def cycle_metrics(now: pl.DataFrame, previous: pl.DataFrame | None = None, baseline: pl.DataFrame | None = None, *,
                  max_attempts: int, expected: dict[str, tuple[str, ...]] | None = None) -> CycleMetrics:
    """Metrics of one cycle from koan_outcomes() frames: `now`, the `previous` cycle's and the `baseline`'s."""
    n = now.height
    passed = int(now["passed"].sum())
    p, lo, hi = wilson(passed, n)
    steps = now.filter(pl.col("passed"))["steps"]
    all_steps = now["steps"].fill_null(max_attempts + 1)
    per_family = {
        row["family"]: row["rate"]
        for row in now.group_by("family").agg(pl.col("passed").mean().alias("rate")).sort("family").iter_rows(named=True)
    }
    m = CycleMetrics(n, passed, p, lo, hi, float(steps.median()) if steps.len() else math.nan,
                     float(all_steps.mean()) if n else math.nan, _expected_error_rate(now, expected or {}), per_family)
    if previous is not None:
        joined = previous.join(now, on="koan_id", suffix="_now")
        failed_before = joined.filter(~pl.col("passed"))
        again = failed_before.filter(~pl.col("passed_now"))
        same = again.filter(pl.col("last_signature") == pl.col("last_signature_now"))
        m.repeat_error_rate = same.height / failed_before.height if failed_before.height else math.nan
        m.persistent_failure_rate = again.height / failed_before.height if failed_before.height else math.nan
        m.regressions = joined.filter(pl.col("passed") & ~pl.col("passed_now")).height
    if baseline is not None:
        paired = baseline.join(now, on="koan_id", suffix="_now")
        b = paired.filter(~pl.col("passed") & pl.col("passed_now")).height
        c = paired.filter(pl.col("passed") & ~pl.col("passed_now")).height
        m.mcnemar_p = mcnemar_exact(b, c)
    return m


def _expected_error_rate(now: pl.DataFrame, expected: dict[str, tuple[str, ...]]) -> float:
    failed = [(r["koan_id"], r["last_codes"] or []) for r in now.filter(~pl.col("passed")).iter_rows(named=True)
              if expected.get(r["koan_id"])]
    if not failed:
        return math.nan
    return sum(any(c in codes for c in expected[k]) for k, codes in failed) / len(failed)


def pass_at_k_table(episodes: pl.DataFrame, ks: tuple[int, ...] = (1,)) -> dict[int, float]:
    """Mean unbiased pass@k over koans, for each k, from independent samples (column `sample`)."""
    per_sample = episodes.group_by(["koan_id", "sample"]).agg(pl.col("passed").any())
    per_koan = per_sample.group_by("koan_id").agg(pl.len().alias("n"), pl.col("passed").sum().alias("c"))
    out = {}
    for k in ks:
        vals = [pass_at_k(r["n"], r["c"], k) for r in per_koan.iter_rows(named=True)]
        out[k] = sum(vals) / len(vals) if vals else math.nan
    return out


def stage_metrics(stage: str, now: pl.DataFrame, previous: pl.DataFrame | None = None,
                  baseline: pl.DataFrame | None = None, *, max_attempts: int, samples: int = 1,
                  expected: dict[str, tuple[str, ...]] | None = None) -> tuple[dict[str, float], list[dict]]:
    """MLflow metrics `<stage>/*` of one stage's episodes `now`, and its per-family table. `previous` (the cycle
    before) and `baseline` are episodes the caller chose, or None: then the metrics comparing with them are absent."""
    outcomes = [None if f is None or f.is_empty() else koan_outcomes(f, max_attempts) for f in (now, previous, baseline)]
    m = cycle_metrics(*outcomes, max_attempts=max_attempts, expected=expected)
    metrics = m.as_mlflow(stage)
    metrics[f"{stage}/koans"] = m.n
    metrics[f"{stage}/attempts"] = now.height
    metrics[f"{stage}/tokens_out"] = float(now["tokens_out"].sum())
    metrics[f"{stage}/model_errors"] = float((now["reason"] == "model_error").sum())
    if samples > 1:
        for k, v in pass_at_k_table(now, tuple(k for k in (1, 2, 5, 10) if k <= samples)).items():
            metrics[f"{stage}/pass_at_{k}"] = v
    return metrics, family_table(*outcomes, max_attempts=max_attempts, expected=expected)


def family_table(now: pl.DataFrame, previous: pl.DataFrame | None, baseline: pl.DataFrame | None, *,
                 max_attempts: int, expected=None) -> list[dict]:
    """Per family and overall: the cycle's metrics (a row per family, then "all")."""
    def part(frame, family):
        return frame if frame is None or family is None else frame.filter(pl.col("family") == family)

    rows = []
    for family in [*sorted(set(now["family"])), None]:
        m = cycle_metrics(part(now, family), part(previous, family), part(baseline, family), max_attempts=max_attempts,
                          expected=expected)
        rows.append({"family": family or "all", **{k: v for k, v in vars(m).items() if k != "per_family"}})
    return rows


# -- continual learning: the accuracy matrix, backward and forward transfer, forgetting ----------------------------

def accuracy_matrix(after: list[pl.DataFrame], tasks: dict[int, set[str]]) -> list[dict[int, float]]:
    """R[i][j]: the pass rate on task j's koans after night i (i = 0: the base model), from `after[i]`, the koan
    outcomes measured with night i's adapter; task j is the set of koans night j learned. A cell whose koans were
    not measured is left out."""
    rows = []
    for outcomes in after:
        passed = dict(zip(outcomes["koan_id"], outcomes["passed"], strict=True)) if outcomes.height else {}
        row = {}
        for j, koans in tasks.items():
            seen = [passed[k] for k in koans if k in passed]
            if koans and len(seen) == len(koans):
                row[j] = sum(seen) / len(seen)
        rows.append(row)
    return rows


def continual_metrics(R: list[dict[int, float]]) -> dict[str, float]:
    """After the last row's night c: GEM's backward and forward transfer (Lopez-Paz & Ranzato, 2017) and Chaudhry's
    average forgetting (Chaudhry et al., 2018) over the tasks learned so far; a metric with no task to average over
    is absent.

        bwt = mean_{j<c} R[c][j] - R[j][j]          (what learning later tasks did to earlier ones)
        fwt = mean_{2<=j<=c} R[j-1][j] - R[0][j]    (what earlier tasks did for a task before it was learned)
        forgetting = mean_{j<c} max_{j<=i<c} R[i][j] - R[c][j]
    """
    c = len(R) - 1
    bwt = [R[c][j] - R[j][j] for j in range(1, c) if j in R[c] and j in R[j]]
    fwt = [R[j - 1][j] - R[0][j] for j in range(2, c + 1) if j in R[j - 1] and j in R[0]]
    forgetting = [max(R[i][j] for i in range(j, c) if j in R[i]) - R[c][j]
                  for j in range(1, c) if j in R[c] and any(j in R[i] for i in range(j, c))]
    out = {}
    for name, values in (("bwt", bwt), ("fwt", fwt), ("forgetting", forgetting)):
        if values:
            out[name] = sum(values) / len(values)
    return out
