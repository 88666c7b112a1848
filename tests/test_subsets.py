"""Eval results per pack and subset: which koans form each row, and each row's n, changes and MDE."""

import math
from dataclasses import replace

import polars as pl
import pytest

from sleepy.koans.model import Koan
from sleepy.power import mde
from sleepy.subsets import as_mlflow, groups, rows


def koan(i, split="eval", pack="builtin", codes=("E0382",), mode="test"):
    return Koan(id=i, family="borrow_checker", split=split, title=i, code="", solution="", tests="",
                expected_errors=codes, mode=mode, pack=pack)


KOANS = [koan("t1", "train"), koan("b1"), koan("b2", codes=("E0106",)),
         koan("e0382", pack="rustc_errors", mode="check"), koan("e0700", pack="rustc_errors", codes=("E0700",),
                                                                   mode="check")]


def test_rows_are_all_each_pack_seen_and_unseen_codes_and_new_error_codes():
    got = {name: [k.id for k in ks] for name, ks in groups(KOANS).items()}
    assert got == {"all": ["b1", "b2", "e0382", "e0700"], "builtin": ["b1", "b2"], "builtin/seen_codes": ["b1"],
                   "builtin/unseen_codes": ["b2"], "rustc_errors": ["e0382", "e0700"],
                   "rustc_errors/seen_codes": ["e0382"], "rustc_errors/unseen_codes": ["e0700"],
                   "rustc_errors/from_E0700": ["e0700"]}


def test_the_builtin_pack_has_13_eval_koans_with_codes_no_train_koan_has(builtin):
    assert len(groups(builtin.koans)["builtin/unseen_codes"]) == 13


def outcomes(passed: dict[int, list[bool]], ids):
    return pl.DataFrame([{"cycle": c, "koan_id": i, "family": "f", "passed": p, "steps": 1, "last_signature": ""}
                         for c, ps in passed.items() for i, p in zip(ids, ps, strict=True)])


def test_each_row_has_n_changes_against_cycle_0_and_the_mde_there():
    koans = [koan(f"k{i}") for i in range(200)]
    before = [i % 2 == 0 for i in range(200)]
    after = [True if i < 40 else b for i, b in enumerate(before)]  # 20 koans (odd, < 40) now pass
    table = {r["subset"]: r for r in rows(outcomes({0: before, 1: after}, [k.id for k in koans]), koans, 1)}
    r = table["all"]
    assert (r["n"], r["passed"], r["gained"], r["lost"]) == (200, 120, 20, 0)
    assert r["mde"] == pytest.approx(mde(200, 0.1)) and r["best_mde"] < r["mde"]
    m = as_mlflow(list(table.values()))
    assert m["eval/subset/all/n"] == 200 and m["eval/discordant"] == 20 and m["eval/mde"] == r["mde"]


def test_at_cycle_0_there_is_no_comparison_yet():
    koans = [replace(koan("a"), mode="check")]
    r = rows(outcomes({0: [True]}, ["a"]), koans, 0)[0]
    assert not r["compared"] and math.isnan(r["mde"]) and r["check_mode"]
