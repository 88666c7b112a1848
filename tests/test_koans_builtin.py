"""The builtin pack: the seed's family counts, a disjoint and frozen eval split, every koan verified."""

from collections import Counter

import pytest

from sleepy.koans import find_leaks, load_pack
from sleepy.koans.verify import verify_koans

TRAIN_MINIMUM = {"borrow_checker": 10, "lifetimes": 6, "trait_bounds": 10, "result_handling": 10,
                 "type_mismatch": 6}
BUILTIN = load_pack()


def test_train_split_has_the_seeds_counts_per_family(builtin):
    counts = Counter(k.family for k in builtin.koans if k.split == "train")
    for family, minimum in TRAIN_MINIMUM.items():
        assert counts[family] >= minimum, family


def test_eval_split_has_at_least_six_per_family(builtin):
    counts = Counter(k.family for k in builtin.koans if k.split == "eval")
    assert set(counts) == set(TRAIN_MINIMUM)
    assert min(counts.values()) >= 6
    assert len(builtin.koans) >= 72


def test_eval_split_shares_no_program_with_train(builtin):
    assert find_leaks(builtin.koans) == []
    train_code = {k.code.strip() for k in builtin.koans if k.split == "train"}
    assert not [k.id for k in builtin.koans if k.split == "eval" and k.code.strip() in train_code]


def test_leak_check_catches_a_renamed_copy(builtin):
    from dataclasses import replace

    train = next(k for k in builtin.koans if k.split == "train")
    renamed = train.code
    for i, name in enumerate(sorted(set(__import__("re").findall(r"\bfn (\w+)", train.code)))):
        renamed = renamed.replace(name, f"renamed_{i}")
    copy = replace(train, id="copy", split="eval", code=renamed, solution=train.solution + "\n")
    assert [(e, t) for e, t, _ in find_leaks([train, copy])] == [("copy", train.id)]


def test_every_builtin_koan_verifies(sandbox):
    """Each broken program fails with all its expected error codes; each solution passes its tests."""
    report = verify_koans(BUILTIN.koans, sandbox)
    assert report["failed"] == []
    assert report["verified"] == len(BUILTIN.koans)


@pytest.mark.parametrize("koan", BUILTIN.koans, ids=lambda k: k.id)
def test_koan_tests_reject_a_gutted_fix(koan, sandbox):
    """Deleting the broken function bodies (a `todo!()` fix) compiles but fails the koan's tests."""
    import re

    gutted = re.sub(r"(fn \w+[^{;]*\{)", r"\1 todo!();", koan.solution, count=0)
    verdict = sandbox.judge(gutted, koan.tests)
    assert not verdict.passed, koan.id
