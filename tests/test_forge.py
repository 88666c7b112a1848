"""The forge: verified koans with tests from the builtin solutions, their sources' splits kept, reproducible from a
seed, written as a TOML pack with its own lock."""

import json

import pytest
from conftest import run_cli

from sleepy.koans import KoanError, find_leaks, load_pack
from sleepy.koans.forge import forge, make
from sleepy.koans.pack import write_pack
from sleepy.koans.verify import verify

SOURCES = ("bc_auction_close", "tb_shape_collection", "lt_router_prefix_loop", "rh_settings_loader")


@pytest.fixture(scope="module")
def small(builtin, tmp_path_factory):
    """A pack of four builtin koans, two train and two eval."""
    koans = [builtin.get(i) for i in SOURCES]
    assert {k.split for k in koans} == {"train", "eval"}
    root = tmp_path_factory.mktemp("small") / "pack"
    write_pack(root, "small", builtin.families, koans)
    return load_pack(root)


@pytest.fixture(scope="module")
def forged(small, sandbox):
    return forge(small.koans, sandbox, seed=0)


def test_every_forged_koan_keeps_its_sources_split_tests_and_solution(small, forged):
    koans, stats = forged
    sources = {k.id: k for k in small.koans}
    assert len(koans) >= 20 and stats["sources_passing"] == 4
    for k in koans:
        origin = sources[k.origin]
        assert (k.split, k.tests, k.solution) == (origin.split, origin.tests, origin.solution), k.id
    assert {k.split for k in koans} == {"train", "eval"}
    assert len({k.id for k in koans}) == len(koans) and len({k.code for k in koans}) == len(koans)


def test_one_koan_per_source_mutation_and_error_signature(forged, sandbox):
    koans, _ = forged
    verdicts = sandbox.judge_many([k.program() for k in koans])
    seen = [(k.origin, k.mutation, v.signature) for k, v in zip(koans, verdicts, strict=True)]
    assert len(set(seen)) == len(seen)


def test_at_most_per_family_koans_per_source_and_family(small, sandbox):
    from collections import Counter

    koans, stats = forge(small.koans, sandbox, seed=0, per_family=1)
    assert max(Counter((k.origin, k.family) for k in koans).values()) == 1
    assert sum(m["over_cap"] for m in stats["mutations"].values()) > 0


def test_the_same_seed_forges_the_same_pack(small, forged, sandbox):
    again, _ = forge(small.koans, sandbox, seed=0)
    assert [(k.id, k.code) for k in again] == [(k.id, k.code) for k in forged[0]]
    other, _ = forge(small.koans, sandbox, seed=1, per_family=1)
    once, _ = forge(small.koans, sandbox, seed=0, per_family=1)
    assert [k.code for k in other] != [k.code for k in once]


def test_a_forged_pack_is_written_locked_and_verifies(small, tmp_path, sandbox, builtin):
    stats = make(tmp_path / "forged", small.koans, sandbox, seed=0, source_name="small")
    pack = load_pack(tmp_path / "forged")
    assert len(pack.koans) == stats["koans"] and pack.meta["seed"] == 0 and pack.meta["from"] == "small"
    assert json.loads((tmp_path / "forged" / "forge.json").read_text())["koans"] == stats["koans"]
    assert "eval.lock" in {p.name for p in (tmp_path / "forged").iterdir()}
    report = verify(pack.koans, sandbox)
    assert report["failed"] == [] and report["verified"] == len(pack.koans)


def test_the_leak_check_holds_over_the_builtin_and_forged_packs(forged, builtin):
    assert find_leaks(builtin.koans + forged[0]) == []


def test_a_train_mutant_of_an_eval_koan_would_be_caught_as_a_leak(forged, builtin):
    from dataclasses import replace

    eval_mutant = next(k for k in forged[0] if k.split == "eval")
    leaked = replace(eval_mutant, split="train")
    assert (builtin.get(eval_mutant.origin).id, leaked.id) in {(e, t) for e, t, _ in find_leaks([*builtin.koans,
                                                                                                  leaked])}


def test_the_forge_refuses_a_directory_that_holds_something(small, tmp_path, sandbox):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(KoanError, match="exists and is not empty"):
        make(tmp_path / "out", small.koans, sandbox)


def test_forge_command_then_verify_command(small, tmp_path):
    env = {"SLEEPY_CACHE_DIR": str(tmp_path / "cache")}
    rc, out, err = run_cli("-m", "sleepy.koans", "forge", "--out", str(tmp_path / "f"), "--from", str(small.root),
                           "--seed", "3", env_extra=env)
    assert rc == 0, err
    assert "drop_clone" in out and "koans/min" in out and f"verify --pack {tmp_path / 'f'}" in out
    rc, out, err = run_cli("-m", "sleepy.koans", "verify", "--pack", str(tmp_path / "f"), env_extra=env)
    assert rc == 0, err
    assert " 0 failed" in out and "forged: " in out and "minimum detectable change" in out


@pytest.mark.slow
def test_the_default_forged_pack_holds_300_eval_koans_and_as_many_train_that_verify(tmp_path, builtin):
    """From a cold cache: `koans=forged` forges the builtin koans (seed 0), then every koan verifies, no leak."""
    env = {"SLEEPY_CACHE_DIR": str(tmp_path)}
    rc, out, err = run_cli("-m", "sleepy.koans", "verify", "--pack", "builtin", "--pack", "forged", "--json",
                           env_extra=env, timeout=3000)
    assert rc == 0, err
    report = json.loads(out)
    assert report["failed"] == [] and report["verified"] == report["koans"]
    rc, out, _ = run_cli("-m", "sleepy.koans", "list", "--pack", "forged", "--json", env_extra=env)
    koans = json.loads(out)
    evals = [k for k in koans if k["split"] == "eval"]
    assert len(evals) >= 300 and len(koans) - len(evals) >= 300
    assert {k["family"] for k in evals} == {"borrow_checker", "lifetimes", "trait_bounds", "result_handling",
                                            "type_mismatch"}
