"""What a paired comparison of pass rates can detect: the minimum detectable effect of McNemar's exact test.

Two evaluations of the same n koans (cycle c against cycle 0, say) differ only on the discordant koans:
b that failed and now pass, c the other way round. McNemar's exact test conditions on m = b + c and
tests b ~ Binomial(m, 1/2). If a share d of the koans changes outcome (the discordance) and the pass
rate truly changes by `effect`, then m ~ Binomial(n, d) and b | m ~ Binomial(m, (d + effect) / 2d).
The minimum detectable effect (MDE) is the smallest effect the test finds (two-sided, level alpha)
with probability `power`. There is none when even effect = d, every changed koan changing the same
way, is found less often than that: few koans, or few that change.

Koans are taken as independent. Koans that share a program (the forge's mutants of one source) are
not, so their MDE is optimistic.
"""

from __future__ import annotations

import math

ALPHA = 0.05
POWER = 0.8


def power(n: int, discordance: float, effect: float, alpha: float = ALPHA) -> float:
    """Probability that McNemar's exact test rejects at `alpha` for n koans, a share `discordance` of which
    change outcome, when the pass rate truly changes by `effect` (0 <= |effect| <= discordance)."""
    import numpy as np
    from scipy.stats import binom

    if n <= 0 or discordance <= 0:
        return 0.0
    effect = min(abs(effect), discordance)
    m = np.arange(n + 1)
    q = binom.ppf(alpha / 2, m, 0.5)
    k = np.where(binom.cdf(q, m, 0.5) <= alpha / 2, q, q - 1)  # reject when b <= k or b >= m - k
    p = (discordance + effect) / (2 * discordance)
    rejected = np.where(k >= 0, binom.cdf(k, m, p) + binom.sf(m - k - 1, m, p), 0.0)
    return float(np.sum(binom.pmf(m, n, min(discordance, 1.0)) * rejected))


def mde(n: int, discordance: float, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest change in pass rate detected with probability `target` at this discordance; nan when none is."""
    from scipy.optimize import brentq

    discordance = min(discordance, 1.0)
    if n <= 0 or discordance <= 0 or power(n, discordance, discordance, alpha) < target:
        return math.nan
    return float(brentq(lambda e: power(n, discordance, e, alpha) - target, 0.0, discordance, xtol=1e-5))


def best_mde(n: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest change n koans can show at all: every koan that changes, changes the same way (d = effect);
    nan when not even a change of every koan is detected."""
    from scipy.optimize import brentq

    if n <= 0 or power(n, 1.0, 1.0, alpha) < target:
        return math.nan
    return float(brentq(lambda e: power(n, e, e, alpha) - target, 1e-9, 1.0, xtol=1e-5))


def observed_mde(n: int, b: int, c: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The MDE at the discordance two evaluations of the same n koans showed (b + c koans changed)."""
    return mde(n, (b + c) / n, alpha, target) if n else math.nan


def describe(n: int, discordances: tuple[float, ...] = (0.1, 0.2)) -> str:
    """What n koans can detect, for planning (no comparison yet): at best, and at a few discordances."""
    def points(x: float) -> str:
        return "none" if x != x else f"{100 * x:.1f} points"

    at = ", ".join(f"{points(mde(n, d))} if {100 * d:.0f}%" for d in discordances)
    return (f"n={n}, minimum detectable change in pass rate (McNemar exact, alpha {ALPHA}, power {POWER}): "
            f"{points(best_mde(n))} at best (every change one way); {at} of the koans change")
