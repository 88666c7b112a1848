"""Packs by name or path, several at once; external packs held out; the TOML pack format written and read."""

import shutil
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from sleepy.koans import KoanError, find_leaks, load_pack
from sleepy.koans.model import shape_similarity
from sleepy.koans.pack import koan_toml, write_pack
from sleepy.koans.registry import load_configured, load_packs

RUSTLINGS = Path(__file__).parent / "fixtures" / "rustlings"


def test_a_written_pack_reads_back_the_same_koans(tmp_path, builtin):
    write_pack(tmp_path / "copy", "copy", builtin.families, builtin.koans, {"seed": 3}, note="a copy")
    copy = load_pack(tmp_path / "copy")
    assert [k.content_hash() for k in copy.koans] == [k.content_hash() for k in builtin.koans]
    assert {k.pack for k in copy.koans} == {"copy"} and copy.meta == {"seed": 3}
    assert "# a copy" in (tmp_path / "copy" / "eval.lock").read_text()


def test_texts_that_a_literal_string_cannot_hold_are_escaped(tmp_path, builtin):
    from dataclasses import replace

    k = replace(builtin.koans[0], code="let s = '''x''';\t\u0007\n", hint='say "hi" \\ bye')
    write_pack(tmp_path / "p", "p", builtin.families, [k])
    back = load_pack(tmp_path / "p").koans[0]
    assert (back.code, back.hint) == (k.code, k.hint)


def test_a_check_mode_koan_has_no_tests(tmp_path, builtin):
    from dataclasses import replace

    k = replace(builtin.koans[0], mode="check", tests="")
    write_pack(tmp_path / "p", "p", builtin.families, [k])
    assert load_pack(tmp_path / "p").koans[0].mode == "check"
    path = tmp_path / "p" / k.family / f"{k.id}.toml"
    path.write_text(koan_toml(k).replace('mode = "check"', 'mode = "compile"'))
    with pytest.raises(KoanError, match=r"field 'mode' must be one of test, check; got 'compile'"):
        load_pack(tmp_path / "p")
    path.write_text(koan_toml(k) + "tests = '#[test] fn t() {}'\n")
    with pytest.raises(KoanError, match="'tests' must be empty in a check-mode koan"):
        load_pack(tmp_path / "p")


def test_the_leak_check_finds_what_the_pairwise_definition_finds(builtin):
    from dataclasses import replace

    train = [k for k in builtin.koans if k.split == "train"]
    koans = [*builtin.koans, replace(train[0], id="copy", split="eval"), replace(train[1], id="copy2", split="eval",
                                                                                 code="fn main() {}\n")]
    brute = [(e.id, t.id) for e in koans if e.split == "eval" for t in koans if t.split == "train"
             if shape_similarity(e.code, t.code) >= 0.5 or shape_similarity(e.solution, t.solution) >= 0.5]
    assert [(e, t) for e, t, _ in find_leaks(koans)] == brute and len(brute) == 2


def test_a_tiny_program_that_shares_a_generic_shape_is_no_leak_but_its_copy_is(builtin):
    from dataclasses import replace

    tiny = "struct Foo {\n    x: i32,\n}\n\nfn main() {\n    let x = Foo { x: 0 };\n}\n"
    train = replace(builtin.koans[0], split="train", code=builtin.koans[0].code + "\nfn make() { let p = Point { x: 0 }; }\n")
    generic = replace(train, id="tiny", split="eval", code=tiny, solution=tiny)
    assert shape_similarity(tiny, train.code) >= 0.3 and find_leaks([train, generic]) == []
    copy = replace(train, id="tiny_train", code=tiny, solution=tiny)
    assert [(e, t) for e, t, _ in find_leaks([copy, generic])] == [("tiny", "tiny_train")]


def test_several_packs_load_as_one_and_each_koan_knows_its_pack(builtin):
    both = load_packs(["builtin", str(RUSTLINGS)])
    assert len(both.koans) == len(builtin.koans) + 5
    assert {k.pack for k in both.koans} == {"builtin", "rustlings"}
    assert both.name == "builtin+rustlings" and set(builtin.families) < set(both.families)


def test_an_external_pack_is_held_out_without_the_exercises_that_pass_unsolved():
    held_out = load_packs([str(RUSTLINGS)])
    assert {k.split for k in held_out.koans} == {"eval"}
    assert "intro1" not in {k.id for k in held_out.koans}
    assert held_out.notes == ["rustlings: left out of the eval set, passes unsolved: intro1"]
    trained = load_packs([str(RUSTLINGS)], external_split="train")
    assert {k.split for k in trained.koans} == {"train"} and len(trained.koans) == 6


def test_an_external_eval_koan_like_a_train_koan_is_left_out_of_the_eval_set(tmp_path, builtin):
    shutil.copytree(RUSTLINGS, tmp_path / "rustlings")
    train = next(k for k in builtin.koans if k.split == "train")
    for part, text in (("exercises", train.code), ("solutions", train.solution)):
        (tmp_path / "rustlings" / part / "05_vecs" / "copied.rs").write_text(text + "\n" + train.tests)
    info = tmp_path / "rustlings" / "info.toml"
    info.write_text(info.read_text() + '\n[[exercises]]\nname = "copied"\ndir = "05_vecs"\nhint = ""\n')
    alone = load_packs([str(tmp_path / "rustlings")])
    assert "copied" in {k.id for k in alone.koans}
    both = load_packs(["builtin", str(tmp_path / "rustlings")])
    assert "copied" not in {k.id for k in both.koans} and "vecs1" in {k.id for k in both.koans}
    assert f"rustlings: left out of the eval set, shares its shape with a train koan: copied (like {train.id})" \
        in both.notes
    assert find_leaks(both.koans) == []


def test_koan_ids_must_be_unique_across_packs(tmp_path):
    shutil.copytree(ROOT / "koans", tmp_path / "again")
    with pytest.raises(KoanError, match=r"koan id '\w+' is in two packs: builtin and builtin"):
        load_packs(["builtin", str(tmp_path / "again")])


def test_a_pack_that_is_neither_a_name_nor_a_directory_names_the_valid_names():
    rc, _, err = run_cli("-m", "sleepy.koans", "list", "--pack", "forgd")
    assert rc == 2 and "koan pack 'forgd': neither a pack name (builtin, rustc_errors, forged) nor a directory" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_pack_and_packs_together_are_refused():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"pack": "builtin", "packs": ["rustc_errors"], "external_split": "eval"})
    with pytest.raises(KoanError, match="set koans.pack or koans.packs, not both"):
        load_configured(cfg)


def test_a_bad_external_split_names_the_valid_ones():
    with pytest.raises(KoanError, match="external_split must be one of eval, train; got 'test'"):
        load_packs([str(RUSTLINGS)], external_split="test")


def test_the_runner_composes_several_packs(tmp_path):
    rc, out, _ = run_cli("-m", "sleepy", "--cfg", "job", "koans.packs=[builtin,forged,rustc_errors]")
    assert rc == 0 and "packs:\n  - builtin\n  - forged\n  - rustc_errors" in out
    rc, out, _ = run_cli("-m", "sleepy", "--cfg", "job", "koans=rustc_errors")
    assert rc == 0 and "pack: rustc_errors" in out
    rc, _, err = run_cli("-m", "sleepy", "koans.external_split=test", f"hydra.run.dir={tmp_path}/run")
    assert rc == 2 and "koans.external_split" in err and "train" in err


def test_verify_stage_over_two_packs(tmp_path, builtin):
    rc, out, err = run_cli("-m", "sleepy", f"koans.packs=[builtin,{RUSTLINGS}]", "koans.families=[05_vecs,lifetimes]",
                           "koans.split=eval", f"hydra.run.dir={tmp_path}/run")
    assert rc == 0, err
    n = len(builtin.select(family="lifetimes", split="eval")) + 1  # and rustlings' vecs1
    assert f"{n}/{n} koans verified" in out
