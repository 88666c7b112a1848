"""The minimum detectable effect of McNemar's exact test: the numbers the issue computed, and a simulation."""

import math
import random

import pytest

from sleepy.metrics import mcnemar_exact
from sleepy.power import best_mde, describe, mde, observed_mde, power


def test_35_koans_detect_only_about_22_points_and_nothing_below_22_percent_discordance():
    assert 0.20 < best_mde(35) < 0.24
    assert math.isnan(mde(35, 0.20))  # too few koans change for any effect to be found
    assert 0.24 < mde(35, 0.30) < 0.28


@pytest.mark.parametrize(("n", "discordance"), [(160, 0.05), (675, 0.20)])
def test_a_5_point_effect_needs_160_to_675_koans(n, discordance):
    assert mde(n, discordance) == pytest.approx(0.05, abs=0.003)
    half = mde(n // 2, discordance)
    assert math.isnan(half) or half > 0.06


def test_mde_grows_with_discordance_and_shrinks_with_n():
    assert mde(400, 0.1) < mde(400, 0.2) < mde(400, 0.4)
    assert mde(1000, 0.2) < mde(400, 0.2) < mde(200, 0.2)
    assert power(400, 0.2, mde(400, 0.2)) == pytest.approx(0.8, abs=1e-3)


def test_the_exact_test_keeps_its_level_when_nothing_changes():
    for n, d in ((35, 0.3), (300, 0.1), (1000, 0.2)):
        assert power(n, d, 0.0) <= 0.05


def test_power_agrees_with_a_simulation_of_the_runners_own_test():
    rng = random.Random(7)
    n, d, effect, trials = 120, 0.25, 0.15, 3000
    rejected = 0
    for _ in range(trials):
        b = c = 0
        for _ in range(n):
            if rng.random() < d:  # this koan changes outcome: gained with probability (d + effect) / 2d
                if rng.random() < (d + effect) / (2 * d):
                    b += 1
                else:
                    c += 1
        rejected += mcnemar_exact(b, c) <= 0.05
    assert rejected / trials == pytest.approx(power(n, d, effect), abs=0.03)


def test_observed_mde_uses_the_pairs_that_changed():
    assert observed_mde(400, 30, 10) == pytest.approx(mde(400, 0.1))
    assert math.isnan(observed_mde(400, 0, 0)) and math.isnan(observed_mde(0, 0, 0))


def test_describe_says_what_a_set_can_detect():
    text = describe(35)
    assert "n=35" in text and "21.6 points at best" in text and "none if 10%" in text
