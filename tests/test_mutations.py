"""Every mutation of the forge's catalogue injects an error of its family into a correct program, judged by
rustc; a mutant that compiles, or fails with another family's errors, is dropped."""

import re
from dataclasses import replace
from pathlib import Path

import pytest

from sleepy.koans.forge import forge
from sleepy.koans.model import Koan
from sleepy.koans.mutations import CATALOGUE, Code, apply, mutants
from sleepy.rust_source import split_module

FIXTURES = Path(__file__).parent / "fixtures" / "mutations"
BY_NAME = {m.name: m for m in CATALOGUE}


def source(name: str, text: str, split: str = "eval") -> Koan:
    """A koan whose solution (with its test module) the forge mutates."""
    solution, tests = split_module(text)
    return Koan(id=name, family="borrow_checker", split=split, title=name, code=solution, solution=solution,
                tests=tests)


def fixture(name: str) -> tuple[Koan, str]:
    text = (FIXTURES / f"{name}.rs").read_text()
    return source(name, text), re.search(r"// expect: (E\d{4})", text).group(1)


def test_every_mutation_has_a_fixture_and_a_family():
    assert sorted(p.stem for p in FIXTURES.glob("*.rs")) == sorted(BY_NAME)
    assert {m.family for m in CATALOGUE} == {"borrow_checker", "lifetimes", "trait_bounds", "result_handling",
                                             "type_mismatch"}


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_mutation_injects_an_error_of_its_family(name, sandbox):
    koan, code = fixture(name)
    m = BY_NAME[name]
    forged, stats = forge([koan], sandbox, catalogue=[m], per_family=100)
    assert stats["sources_passing"] == 1, "the fixture's solution must pass its tests"
    kept = [k for k in forged if code in k.expected_errors]
    assert kept, f"{name}: no mutant failed with {code}: {stats['mutations'][name]}"
    k = kept[0]
    assert k.family == m.family and k.mutation == name and k.origin == name
    assert k.split == "eval" and k.solution == koan.solution and k.tests == koan.tests
    assert k.code != koan.solution


def test_a_mutant_that_still_compiles_is_dropped(sandbox):
    koan = source("copy_clone", """pub fn plus_one(x: i32) -> i32 {
    let y = x.clone();
    y + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_one() {
        assert_eq!(plus_one(1), 2);
    }
}
""")
    forged, stats = forge([koan], sandbox, catalogue=[BY_NAME["drop_clone"]])
    assert forged == [] and stats["mutations"]["drop_clone"]["compiles"] == 1


def test_a_mutant_that_fails_with_another_familys_error_is_dropped(sandbox):
    koan = source("owned_copy", """pub fn owned(s: &String) -> String {
    s.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies() {
        assert_eq!(owned(&"a".to_string()), "a");
    }
}
""")
    forged, stats = forge([koan], sandbox, catalogue=[BY_NAME["drop_clone"]])  # E0308: a type_mismatch error
    assert forged == [] and stats["mutations"]["drop_clone"]["wrong_family"] == 1


def test_a_source_that_fails_its_own_tests_is_not_mutated(sandbox):
    koan, _ = fixture("drop_mut")
    broken = replace(koan, solution=koan.solution.replace("total += x", "total -= x"))
    forged, stats = forge([broken], sandbox, catalogue=[BY_NAME["drop_mut"]])
    assert forged == [] and stats["sources_passing"] == 0


def test_edits_are_made_on_tokens_not_inside_strings_or_comments():
    text = ('fn f(v: &Vec<u8>) -> usize {\n    // x.clone() in a comment\n    let s = "a.clone()";\n'
            '    v.clone().len() + s.len()\n}\n')
    out = [t for m, t, _ in mutants(text, [BY_NAME["drop_clone"]])]
    assert out == [text.replace("v.clone().len()", "v.len()")]


def test_apply_makes_several_edits_from_the_end():
    assert apply("abcdef", [(0, 1, "X"), (3, 5, "")]) == "Xbcf"


def test_code_matches_brackets_and_angle_brackets():
    c = Code("fn f<T: Into<String>>(x: T) -> Vec<T> where T: Clone { vec![x] }")
    lt = next(i for i, t in enumerate(c.toks) if t.text == "<")
    assert c.at(c.angle_close(lt) + 1) == "("
    assert [c.at(i) for i in c.close] == ["(", "[", "{"]
