"""Each metric against cases computed by hand."""

import math

import polars as pl
import pytest

from sleepy.metrics import (
    cycle_metrics,
    forgetting,
    koan_outcomes,
    mcnemar_exact,
    pass_at_k,
    pass_at_k_table,
    wilson,
)


def test_wilson_interval_matches_the_textbook_values():
    p, lo, hi = wilson(8, 10)
    assert p == 0.8 and lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 10)[1:] == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson(10, 10)[1] == pytest.approx(0.7225, abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_mcnemar_exact_two_sided():
    assert mcnemar_exact(1, 6) == pytest.approx(16 / 128)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def ep(cycle, koan, family, attempt, passed, sig=""):
    return {"cycle": cycle, "koan_id": koan, "family": family, "attempt": attempt, "passed": passed,
            "signature": sig}


# Cycle 0: a passes at 1; b fails (S0 then S1); c passes at 2; d fails (T).
# Cycle 1: a fails (U): a regression; b fails again with S1: a repeat; c passes at 1; d passes at 3.
EPISODES = pl.DataFrame([
    ep(0, "a", "X", 1, True),
    ep(0, "b", "X", 1, False, "S0"), ep(0, "b", "X", 2, False, "S1"),
    ep(0, "c", "Y", 1, False, "V"), ep(0, "c", "Y", 2, True),
    ep(0, "d", "Y", 1, False, "T"),
    ep(1, "a", "X", 1, False, "U"),
    ep(1, "b", "X", 1, False, "S1"),
    ep(1, "c", "Y", 1, True),
    ep(1, "d", "Y", 1, False, "T"), ep(1, "d", "Y", 2, False, "T"), ep(1, "d", "Y", 3, True),
])


def test_outcomes_take_first_passing_attempt_and_last_signature():
    out = koan_outcomes(EPISODES).filter(pl.col("cycle") == 0)
    assert out["passed"].to_list() == [True, False, True, False]
    assert out["steps"].to_list() == [1, None, 2, None]
    assert out["last_signature"].to_list() == ["", "S1", "", "T"]


def test_cycle_metrics_by_hand():
    m = cycle_metrics(koan_outcomes(EPISODES), cycle=1)
    assert (m.n, m.passed, m.pass_rate) == (4, 2, 0.5)
    assert m.median_steps == 2.0
    assert m.repeat_error_rate == 0.5  # of b and d (failed at 0), b fails again with S1
    assert m.regressions == 1  # a
    assert m.per_family == {"X": 0.0, "Y": 1.0}
    assert m.mcnemar_p == 1.0  # one koan each way
    base = cycle_metrics(koan_outcomes(EPISODES), cycle=0)
    assert base.median_steps == 1.5 and math.isnan(base.repeat_error_rate) and base.regressions == 0


def test_max_attempts_cuts_late_passes():
    m = cycle_metrics(koan_outcomes(EPISODES, max_attempts=2), cycle=1)
    assert m.passed == 1 and m.repeat_error_rate == 1.0  # d now fails with T again


def test_mlflow_names():
    names = set(cycle_metrics(koan_outcomes(EPISODES), cycle=1).as_mlflow("eval"))
    assert {"eval/pass_rate", "eval/pass_rate_lo", "eval/pass_rate_hi", "eval/median_steps",
            "eval/repeat_error_rate", "eval/pass_rate/X", "eval/pass_rate/Y"} <= names


def test_pass_at_k_over_samples():
    rows = [{"koan_id": "a", "sample": s, "attempt": 1, "passed": s < 2} for s in range(5)]
    rows += [{"koan_id": "b", "sample": s, "attempt": 1, "passed": False} for s in range(5)]
    table = pass_at_k_table(pl.DataFrame(rows), ks=(1, 2))
    assert table[1] == pytest.approx((0.4 + 0.0) / 2) and table[2] == pytest.approx((0.7 + 0.0) / 2)


def test_forgetting_and_backward_transfer():
    f = forgetting(koan_outcomes(EPISODES))
    assert f["forgetting"] == 0.5  # a and c were passed at cycle 0; a is lost at the end
    assert f["backward_transfer"] == 0.0
