"""A rustlings-format checkout loads as a koan pack and verifies."""

import json
from pathlib import Path

from conftest import run_cli

from sleepy.koans import load_pack
from sleepy.koans.verify import verify_koans

FIXTURE = Path(__file__).parent / "fixtures" / "rustlings"


def test_exercises_load_with_family_from_dir_and_mode_from_test_flag():
    pack = load_pack(FIXTURE)
    by_id = {k.id: k for k in pack.koans}
    assert list(by_id) == ["intro1", "intro2", "vecs1", "clippy1", "tests_todo", "tests_panic"]
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
    assert report["failed"] == [] and report["verified"] == 6


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
    rc, out, err = run_cli("-m", "sleepy.koans", "verify", "--pack", str(FIXTURE), "--external-split", "train", "--json")
    assert rc == 0, err
    assert json.loads(out) | {"isolation": None} == {"koans": 6, "verified": 6, "failed": [], "skipped": [],
                                                      "isolation": None}
    rc, out, err = run_cli("-m", "sleepy.koans", "verify", "--pack", str(FIXTURE), "--json")  # held out: eval
    assert rc == 0, err
    assert json.loads(out)["verified"] == 5 and "left out of the eval set, passes unsolved: intro1" in err


def test_an_exercise_whose_todo_is_in_its_tests_is_judged_as_a_whole_file():
    pack = load_pack(FIXTURE)
    todo, panic = pack.get("tests_todo"), pack.get("tests_panic")
    assert todo.required == ("halves_eight", "halves_zero")
    assert "halve(8), 4" in todo.tests  # the solution's tests: judged too, never shown
    assert "mod tests" in todo.code and "todo_value" in todo.code  # the learner edits the whole file
    assert panic.required == ("pops_the_last_item", "empty_pop_panics")
    assert pack.get("vecs1").required == ()  # same test module in exercise and solution: appended as before


def test_a_whole_file_fix_must_keep_every_test_of_the_solution(sandbox):
    k = load_pack(FIXTURE).get("tests_todo")
    assert sandbox.judge_program(k.program(k.solution)).passed
    no_tests = k.solution.split("#[cfg(test)]")[0]
    assert sandbox.judge_program(k.program(no_tests)).reason == "incomplete"
    renamed = k.solution.replace("fn halves_zero", "fn halves_nothing")
    assert sandbox.judge_program(k.program(renamed)).reason == "incomplete"
    wrong = k.solution.replace("halve(8), 4", "halve(8), 5")
    assert sandbox.judge_program(k.program(wrong)).reason == "test_failure"
    gamed = "#![cfg(not(test))]\n" + k.solution
    assert not sandbox.judge_program(k.program(gamed)).passed


def test_should_panic_in_a_whole_file_fix_must_panic_with_the_expected_message(sandbox):
    k = load_pack(FIXTURE).get("tests_panic")
    assert sandbox.judge_program(k.program(k.solution)).passed
    other_message = k.solution.replace('expected = "empty stack"', 'expected = "full stack"')
    assert sandbox.judge_program(k.program(other_message)).reason == "test_failure"
    assert not sandbox.judge_program(k.program()).passed


def test_the_prompt_of_a_whole_file_exercise_shows_the_exercise_not_the_solutions_tests(sandbox):
    from sleepy.prompt import user_prompt

    k = load_pack(FIXTURE).get("tests_todo")
    prompt = user_prompt(k, k.code, sandbox.judge_program(k.program()))
    assert "todo_value" in prompt and "halve(8), 4" not in prompt
    assert "`halves_eight`, `halves_zero`" in prompt
