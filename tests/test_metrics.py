"""Each metric against cases computed by hand."""

import math

import polars as pl
import pytest

from sleepy.metrics import (
    accuracy_matrix,
    continual_metrics,
    cycle_metrics,
    koan_outcomes,
    mcnemar_exact,
    pass_at_k,
    pass_at_k_table,
    stage_metrics,
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


def ep(cycle, koan, family, attempt, passed, sig="", codes=()):
    return {"cycle": cycle, "koan_id": koan, "family": family, "attempt": attempt, "passed": passed,
            "signature": sig, "error_codes": list(codes), "tokens_out": 5, "reason": "ok" if passed else "compile_error"}


# Cycle 0: a passes at 1; b fails (S0 then S1); c passes at 2; d fails (T).
# Cycle 1: a fails (U): a regression; b fails again with S1: a repeat; c passes at 1; d passes at 3.
EPISODES = pl.DataFrame([
    ep(0, "a", "X", 1, True),
    ep(0, "b", "X", 1, False, "S0", ["E0382"]), ep(0, "b", "X", 2, False, "S1", ["E0499"]),
    ep(0, "c", "Y", 1, False, "V"), ep(0, "c", "Y", 2, True),
    ep(0, "d", "Y", 1, False, "T", ["E0308"]),
    ep(1, "a", "X", 1, False, "U", ["E0308"]),
    ep(1, "b", "X", 1, False, "S1", ["E0499"]),
    ep(1, "c", "Y", 1, True),
    ep(1, "d", "Y", 1, False, "T", ["E0308"]), ep(1, "d", "Y", 2, False, "T", ["E0308"]), ep(1, "d", "Y", 3, True),
])
EXPECTED = {"a": ("E0382",), "b": ("E0382",), "c": ("E0599",), "d": ("E0308",)}


def cycle(c, max_attempts=3):
    return koan_outcomes(EPISODES.filter(pl.col("cycle") == c), max_attempts)


def test_outcomes_take_first_passing_attempt_and_last_signature():
    out = cycle(0)
    assert out["passed"].to_list() == [True, False, True, False]
    assert out["steps"].to_list() == [1, None, 2, None]
    assert out["last_signature"].to_list() == ["", "S1", "", "T"]
    assert out["last_codes"].to_list()[1] == ["E0499"]


def test_cycle_metrics_by_hand():
    m = cycle_metrics(cycle(1), cycle(0), cycle(0), max_attempts=3, expected=EXPECTED)
    assert (m.n, m.passed, m.pass_rate) == (4, 2, 0.5)
    assert m.median_steps == 2.0
    assert m.mean_steps_all == (4 + 4 + 1 + 3) / 4  # a and b unsolved: max_attempts + 1
    assert m.repeat_error_rate == 0.5  # of b and d (failed at 0), b fails again with S1
    assert m.persistent_failure_rate == 0.5  # b fails again, d does not
    assert m.expected_error_rate == 0.0  # a ends on E0308, b on E0499: neither shows its expected E0382
    assert m.regressions == 1  # a
    assert m.per_family == {"X": 0.0, "Y": 1.0}
    assert m.mcnemar_p == 1.0  # one koan each way


def test_without_an_earlier_cycle_the_metrics_comparing_with_it_are_absent():
    """A run's metrics come from the cycles it is given, never borrowed: no previous cycle and no baseline means no
    repeat errors, regressions or McNemar test at all (not 0, not 1.0)."""
    metrics, table = stage_metrics("eval", EPISODES.filter(pl.col("cycle") == 1), max_attempts=3)
    for key in ("repeat_error_rate", "persistent_failure_rate", "regressions", "mcnemar_p"):
        assert f"eval/{key}" not in metrics
        assert table[-1][key] is None
    assert metrics["eval/pass_rate"] == 0.5 and metrics["eval/koans"] == 4 and metrics["eval/attempts"] == 6


def test_given_earlier_cycles_the_comparisons_are_logged():
    metrics, _ = stage_metrics("eval", EPISODES.filter(pl.col("cycle") == 1), EPISODES.filter(pl.col("cycle") == 0),
                               EPISODES.filter(pl.col("cycle") == 0), max_attempts=3, expected=EXPECTED)
    assert metrics["eval/repeat_error_rate"] == 0.5 and metrics["eval/regressions"] == 1
    assert metrics["eval/mcnemar_p"] == 1.0 and metrics["eval/expected_error_rate"] == 0.0


def test_koans_failing_every_cycle_with_new_errors_read_as_persistent_failures_not_as_no_repeats():
    """The smoke run's case: every koan fails every cycle, each time with another signature. The seed's repeat error
    rate reads 0% (inside its < 20% target); the persistent-failure rate reads 100%."""
    def failing(c):
        return pl.DataFrame([ep(c, k, "X", 1, False, f"garbage {c}", ["E0425"]) for k in "abc"])

    metrics, _ = stage_metrics("eval", failing(1), failing(0), failing(0), max_attempts=1,
                               expected={k: ("E0382",) for k in "abc"})
    assert metrics["eval/repeat_error_rate"] == 0.0
    assert metrics["eval/persistent_failure_rate"] == 1.0
    assert metrics["eval/expected_error_rate"] == 0.0  # the original error is gone: the model changed the program
    assert metrics["eval/mean_steps_all"] == 2.0 and math.isnan(metrics["eval/median_steps"])


def test_max_attempts_cuts_late_passes():
    m = cycle_metrics(cycle(1, max_attempts=2), cycle(0, max_attempts=2), max_attempts=2)
    assert m.passed == 1 and m.repeat_error_rate == 1.0  # d now fails with T again


def test_mlflow_names():
    names = set(cycle_metrics(cycle(1), cycle(0), cycle(0), max_attempts=3).as_mlflow("eval"))
    assert {"eval/pass_rate", "eval/pass_rate_lo", "eval/pass_rate_hi", "eval/median_steps", "eval/mean_steps_all",
            "eval/repeat_error_rate", "eval/persistent_failure_rate", "eval/pass_rate/X", "eval/pass_rate/Y"} <= names


def test_pass_at_k_over_samples():
    rows = [{"koan_id": "a", "sample": s, "attempt": 1, "passed": s < 2} for s in range(5)]
    rows += [{"koan_id": "b", "sample": s, "attempt": 1, "passed": False} for s in range(5)]
    table = pass_at_k_table(pl.DataFrame(rows), ks=(1, 2))
    assert table[1] == pytest.approx((0.4 + 0.0) / 2) and table[2] == pytest.approx((0.7 + 0.0) / 2)


def outcomes(passed: dict[str, bool]) -> pl.DataFrame:
    return pl.DataFrame({"koan_id": list(passed), "passed": list(passed.values())})


def test_the_accuracy_matrix_is_the_pass_rate_on_each_nights_koans_after_each_night():
    tasks = {1: {"a", "b"}, 2: {"c"}}
    after = [outcomes({"a": False, "b": False, "c": True}),  # the base model
             outcomes({"a": True, "b": True, "c": False}),  # after night 1
             outcomes({"a": True, "b": False, "c": True})]  # after night 2
    assert accuracy_matrix(after, tasks) == [{1: 0.0, 2: 1.0}, {1: 1.0, 2: 0.0}, {1: 0.5, 2: 1.0}]
    assert accuracy_matrix([outcomes({"a": True})], tasks) == [{}]  # a task not wholly measured is left out


def test_gem_transfer_and_chaudhry_forgetting_by_hand():
    R = [{1: 0.0, 2: 1.0, 3: 0.5},
         {1: 1.0, 2: 0.0, 3: 0.5},
         {1: 0.5, 2: 1.0, 3: 0.0},
         {1: 0.25, 2: 0.5, 3: 1.0}]
    m = continual_metrics(R)
    assert m["bwt"] == pytest.approx(((0.25 - 1.0) + (0.5 - 1.0)) / 2)  # R[3][j] - R[j][j], j = 1, 2
    assert m["fwt"] == pytest.approx(((0.0 - 1.0) + (0.0 - 0.5)) / 2)  # R[j-1][j] - R[0][j], j = 2, 3
    assert m["forgetting"] == pytest.approx(((1.0 - 0.25) + (1.0 - 0.5)) / 2)  # max over l in [j, 3) - R[3][j]
    assert continual_metrics(R[:2]) == {}  # one task: nothing learned after it, nothing before it
    assert continual_metrics(R[:3]) == {"bwt": -0.5, "fwt": -1.0, "forgetting": 0.5}
