"""How sure a sweep's number is: intervals over koans and seeds for a rate, over seeds for a measurement.

A configuration's pass rate comes from n koans attempted under s seeds, and both are samples: of the koans one could
have written and of the runs one could have made. An interval over seeds alone (a t-interval on 2 seeds) ignores the
koans and leaves [0, 1]; one over all n x s attempts as if independent ignores that seeds repeat the same koans.

- `bootstrap_ratio`: koans and seeds resampled independently (a two-way bootstrap), the statistic a ratio of sums
  (a pass rate: passed / attempted koans; a repeat error rate: failed again / failed before), percentile interval.
  Inside [0, 1] by construction. Where every koan had the same outcome the resamples cannot vary, so the interval is
  Wilson's over the koans instead.
- `pooled_wilson`: Wilson over every koan attempt of every seed, when only each run's rate and n are known.
- `t_interval`: a measurement over seeds (steps, losses, parameters): Student's t, none for one run or a constant,
  cut to the measurement's range.
"""

from __future__ import annotations

import math

CONFIDENCE = 0.95
RESAMPLES = 2000


def t_interval(values, bounds: tuple[float, float] = (-math.inf, math.inf),
               confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and Student-t interval over runs (scipy); the interval is nan for fewer than two runs or a constant."""
    from statistics import fmean, stdev

    vals = [float(v) for v in values if v == v]
    if not vals:
        return math.nan, math.nan, math.nan
    m = fmean(vals)
    if len(vals) < 2 or max(vals) == min(vals):
        return m, math.nan, math.nan
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, len(vals) - 1)) * stdev(vals) / math.sqrt(len(vals))
    return m, max(bounds[0], m - half), min(bounds[1], m + half)


def pooled_wilson(passed, n, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Wilson's interval over every attempt of every run: sum(passed) of sum(n)."""
    from sleepy.metrics import wilson

    return wilson(int(sum(passed)), int(sum(n)), confidence)


def bootstrap_ratio(num, den, resamples: int = RESAMPLES, seed: int = 0,
                    confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """sum(num) / sum(den) over a seeds x koans grid (nan: a koan a run did not attempt), with a percentile interval
    from resampling koans and seeds independently; Wilson's over the koans when every resample is the same."""
    import numpy as np

    num, den = np.asarray(num, float), np.asarray(den, float)
    if num.ndim != 2 or num.shape != den.shape:
        raise ValueError(f"num and den must be seeds x koans grids of one shape; got {num.shape} and {den.shape}")
    s, n = num.shape
    total = np.nansum(den)
    if s == 0 or n == 0 or total == 0:
        return math.nan, math.nan, math.nan
    estimate = float(np.nansum(num) / total)
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, resamples, 200):
        b = min(200, resamples - start)
        seeds = rng.integers(0, s, size=(b, s, 1))
        koans = rng.integers(0, n, size=(b, 1, n))
        top = np.nansum(num[seeds, koans], axis=(1, 2))
        bottom = np.nansum(den[seeds, koans], axis=(1, 2))
        stats.append(np.divide(top, bottom, out=np.full(b, np.nan), where=bottom > 0))
    stats = np.concatenate(stats)
    lo, hi = np.nanquantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    if lo == hi:  # every resample alike: all passed or all failed; Wilson over the koans (per seed) says how sure
        from sleepy.metrics import wilson

        koans = max(1, round(total / s))
        _, lo, hi = wilson(round(estimate * koans), koans, confidence)
    return estimate, float(lo), float(hi)
