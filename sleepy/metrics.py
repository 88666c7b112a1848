"""The seed's metrics, with how much of each is noise: polars over episode rows.

An episode row is one attempt: koan_id, family, cycle, attempt (1-based), passed, signature, and
optionally sample (0-based, for pass@k when the agent draws several independent samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float, float]:
    """Proportion and its Wilson score interval (95% by default); (nan, nan, nan) when n == 0."""
    if n == 0:
        return math.nan, math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs b and c."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n samples; got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def koan_outcomes(episodes: pl.DataFrame, max_attempts: int | None = None) -> pl.DataFrame:
    """One row per (cycle, koan): passed within max_attempts, steps to green, last failure signature.

    With several samples per koan, a koan passes when its first sample (sample 0) passes.
    """
    ep = episodes
    if "sample" in ep.columns:
        ep = ep.filter(pl.col("sample") == 0)
    if max_attempts is not None:
        ep = ep.filter(pl.col("attempt") <= max_attempts)
    return (
        ep.sort("attempt")
        .group_by(["cycle", "koan_id"], maintain_order=True)
        .agg(
            pl.col("family").first(),
            pl.col("passed").any().alias("passed"),
            pl.col("attempt").filter(pl.col("passed")).min().alias("steps"),
            pl.col("signature").last().alias("last_signature"),
        )
        .sort(["cycle", "koan_id"])
    )


@dataclass
class CycleMetrics:
    cycle: int
    n: int
    passed: int
    pass_rate: float
    pass_rate_lo: float
    pass_rate_hi: float
    median_steps: float
    repeat_error_rate: float
    regressions: int
    per_family: dict[str, float]
    mcnemar_p: float

    def as_mlflow(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/{k}": float(getattr(self, k)) for k in (
            "pass_rate", "pass_rate_lo", "pass_rate_hi", "median_steps", "repeat_error_rate", "regressions",
            "mcnemar_p")}
        out.update({f"{prefix}/pass_rate/{f}": v for f, v in self.per_family.items()})
        return out


def cycle_metrics(outcomes: pl.DataFrame, cycle: int, baseline_cycle: int = 0) -> CycleMetrics:
    """Metrics of one cycle from koan_outcomes(); the previous cycle and the baseline come from the same frame."""
    now = outcomes.filter(pl.col("cycle") == cycle)
    n = now.height
    passed = int(now["passed"].sum())
    p, lo, hi = wilson(passed, n)
    steps = now.filter(pl.col("passed"))["steps"]
    median_steps = float(steps.median()) if steps.len() else math.nan
    per_family = {
        row["family"]: row["rate"]
        for row in now.group_by("family").agg(pl.col("passed").mean().alias("rate")).sort("family").iter_rows(named=True)
    }
    prev = outcomes.filter(pl.col("cycle") == cycle - 1)
    rer, regressions = math.nan, 0
    if prev.height:
        joined = prev.join(now, on="koan_id", suffix="_now")
        failed_before = joined.filter(~pl.col("passed"))
        if failed_before.height:
            repeats = failed_before.filter(~pl.col("passed_now") & (pl.col("last_signature") == pl.col("last_signature_now")))
            rer = repeats.height / failed_before.height
        regressions = joined.filter(pl.col("passed") & ~pl.col("passed_now")).height
    base = outcomes.filter(pl.col("cycle") == baseline_cycle).join(now, on="koan_id", suffix="_now")
    b = base.filter(~pl.col("passed") & pl.col("passed_now")).height
    c = base.filter(pl.col("passed") & ~pl.col("passed_now")).height
    return CycleMetrics(cycle, n, passed, p, lo, hi, median_steps, rer, regressions, per_family,
                        mcnemar_exact(b, c) if cycle != baseline_cycle else 1.0)


def pass_at_k_table(episodes: pl.DataFrame, ks: tuple[int, ...] = (1,)) -> dict[int, float]:
    """Mean unbiased pass@k over koans, for each k, from independent samples (column `sample`)."""
    per_sample = episodes.group_by(["koan_id", "sample"]).agg(pl.col("passed").any())
    per_koan = per_sample.group_by("koan_id").agg(pl.len().alias("n"), pl.col("passed").sum().alias("c"))
    out = {}
    for k in ks:
        vals = [pass_at_k(r["n"], r["c"], k) for r in per_koan.iter_rows(named=True)]
        out[k] = sum(vals) / len(vals) if vals else math.nan
    return out


def forgetting(outcomes: pl.DataFrame) -> dict[str, float]:
    """Over all cycles: forgetting = mean over koans of (best earlier pass - final pass) where it was passed
    before; backward transfer = final pass rate - baseline pass rate on the same koans."""
    wide = outcomes.pivot(on="cycle", index="koan_id", values="passed").sort("koan_id")
    cycles = sorted(int(c) for c in wide.columns if c != "koan_id")
    if len(cycles) < 2:
        return {"forgetting": math.nan, "backward_transfer": math.nan}
    first, last = str(cycles[0]), str(cycles[-1])
    earlier = [str(c) for c in cycles[:-1]]
    best_before = wide.select(pl.max_horizontal(earlier).alias("best"), pl.col(last).alias("final"))
    learned = best_before.filter(pl.col("best"))
    forget = float((~learned["final"]).mean()) if learned.height else 0.0
    bwt = float(wide[last].cast(pl.Float64).mean() - wide[first].cast(pl.Float64).mean())
    return {"forgetting": forget, "backward_transfer": bwt}
