"""A rustlings-format checkout loads as a koan pack and verifies."""

import json
from pathlib import Path

from conftest import run_cli

from sleepy.koans import load_pack
from sleepy.koans.cli import verify_koans

FIXTURE = Path(__file__).parent / "fixtures" / "rustlings"


def test_exercises_load_with_family_from_dir_and_mode_from_test_flag():
    pack = load_pack(FIXTURE)
    by_id = {k.id: k for k in pack.koans}
    assert list(by_id) == ["intro1", "intro2", "vecs1", "clippy1"]
    assert by_id["vecs1"].family == "05_vecs" and by_id["vecs1"].mode == "test"
    assert by_id["intro2"].mode == "run" and by_id["intro2"].tests == ""
    assert by_id["clippy1"].clippy and not by_id["intro1"].check_unsolved
    assert by_id["vecs1"].hint.startswith("Use the `vec!` macro")


def test_the_exercises_own_test_module_becomes_the_appended_tests():
    k = load_pack(FIXTURE).get("vecs1")
    assert k.tests.startswith("#[cfg(test)]\nmod tests {") and k.tests.rstrip().endswith("}")
    assert "#[cfg(test)]" not in k.code and "#[cfg(test)]" not in k.solution
    assert '"a {{ brace }} in a string"' in k.tests


def test_fixture_pack_verifies(sandbox):
    report = verify_koans(load_pack(FIXTURE).koans, sandbox)
    assert report["failed"] == [] and report["verified"] == 4


def test_a_solved_exercise_without_skip_check_unsolved_fails_verify(tmp_path, sandbox):
    import shutil

    pack = tmp_path / "pack"
    shutil.copytree(FIXTURE, pack)
    info = (pack / "info.toml").read_text().replace("skip_check_unsolved = true\n", "")
    (pack / "info.toml").write_text(info)
    report = verify_koans(load_pack(pack).koans, sandbox)
    assert report["failed"] == [{"id": "intro1", "why": "broken code passes"}]


def test_strict_clippy_exercise_is_judged_with_clippy(sandbox):
    k = load_pack(FIXTURE).get("clippy1")
    with_clippy = sandbox.judge(k.code, k.tests, k.mode, clippy=True)
    plain = sandbox.judge(k.code, k.tests, k.mode, clippy=False)
    assert plain.passed and not with_clippy.passed
    assert "clippy::approx_constant" in with_clippy.error_codes


def test_verify_cli_on_a_rustlings_checkout():
    rc, out, err = run_cli("-m", "sleepy.koans", "verify", "--pack", str(FIXTURE), "--json")
    assert rc == 0, err
    assert json.loads(out) | {"isolation": None} == {"koans": 4, "verified": 4, "failed": [], "skipped": [],
                                                      "isolation": None}
