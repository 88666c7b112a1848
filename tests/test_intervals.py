"""Intervals over koans and seeds: a rate's stays in [0, 1], seeds that repeat the same koans add no false certainty,
a constant has none."""

import math

import pytest

from sleepy.intervals import bootstrap_ratio, pooled_wilson, t_interval


def test_t_interval_uses_students_quantile_and_has_none_for_a_constant_or_one_run():
    m, lo, hi = t_interval([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and hi - m == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert all(math.isnan(x) for x in t_interval([16384.0] * 4)[1:])
    assert all(math.isnan(x) for x in t_interval([0.4])[1:])
    assert t_interval([0.1, 0.9], bounds=(0.0, 1.0))[1:] == (0.0, 1.0)  # cut to the metric's range


def test_a_seed_that_repeats_the_same_koan_outcomes_does_not_narrow_the_interval():
    one = [[1.0] * 12 + [0.0] * 8]
    _, lo1, hi1 = bootstrap_ratio(one, [[1.0] * 20])
    _, lo2, hi2 = bootstrap_ratio(one * 4, [[1.0] * 20] * 4)
    assert hi2 - lo2 == pytest.approx(hi1 - lo1, abs=0.03)
    _, wlo, whi = pooled_wilson([12] * 4, [20] * 4)  # what pooling the 80 attempts as independent would claim
    assert whi - wlo < 0.75 * (hi2 - lo2)


def test_seeds_that_disagree_widen_the_interval_and_it_stays_within_0_and_1():
    agree = [[1.0] * 10 + [0.0] * 10] * 2
    disagree = [[1.0] * 20, [0.0] * 20]
    ones = [[1.0] * 20] * 2
    _, alo, ahi = bootstrap_ratio(agree, ones)
    est, dlo, dhi = bootstrap_ratio(disagree, ones)
    assert est == 0.5 and dhi - dlo > ahi - alo
    assert 0.0 <= dlo and dhi <= 1.0


def test_all_failed_gives_wilsons_interval_over_the_koans_not_a_point():
    est, lo, hi = bootstrap_ratio([[0.0] * 20] * 3, [[1.0] * 20] * 3)
    assert est == 0.0 and lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-3)  # Wilson 0/20


def test_a_koan_a_run_did_not_attempt_is_left_out():
    nan = math.nan
    est, lo, hi = bootstrap_ratio([[1.0, 0.0, nan], [1.0, 0.0, 1.0]], [[1.0, 1.0, nan], [1.0, 1.0, 1.0]])
    assert est == pytest.approx(3 / 5) and 0 <= lo <= est <= hi <= 1
