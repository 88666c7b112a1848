"""Sandbox.judge: diagnostics, reasons, signatures, modes, cache and parallel judging."""

import re

from sleepy.koans.model import wrap_tests
from sleepy.sandbox import Program, Sandbox

ADD = "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n"
ADD_TESTS = wrap_tests("#[test]\nfn adds() {\n    assert_eq!(add(2, 3), 5);\n}\n")


def test_passing_program_is_ok(sandbox):
    v = sandbox.judge(ADD, ADD_TESTS)
    assert (v.compiled, v.tests_passed, v.passed, v.reason) == (True, True, True, "ok")
    assert v.signature == "" and v.error_codes == []
    assert v.isolation == sandbox.isolation


def test_compile_error_is_parsed_into_codes_spans_and_rendered_text(sandbox):
    code = "fn main() {\n    let v = vec![1];\n    let w = v;\n    println!(\"{:?}\", v);\n    drop(w);\n}\n"
    v = sandbox.judge(code, mode="run")
    assert v.reason == "compile_error" and not v.compiled and not v.passed
    assert v.error_codes == ["E0382"]
    err = v.errors[0]
    assert err.code == "E0382" and err.level == "error" and err.line == 4
    assert "borrow of moved value" in err.message
    assert "koan.rs:4" in err.rendered and "/tmp" not in err.rendered


def test_normalized_message_drops_names_paths_and_numbers():
    from sleepy.sandbox.verdict import normalize_message

    assert normalize_message("cannot borrow `self.items` as mutable more than 2 times in std::vec::Vec") == \
        "cannot borrow `_` as mutable more than N times in P"


def test_same_mistake_in_two_programs_has_one_signature(sandbox):
    a = sandbox.judge("fn f(x: Vec<i32>) -> usize { let y = x; x.len() + y.len() }", mode="check")
    b = sandbox.judge("fn g(names: Vec<String>) -> usize { let moved = names; names.len() + moved.len() }",
                      mode="check")
    assert a.error_codes == b.error_codes == ["E0382"]
    assert a.signature == b.signature
    assert a.signature.startswith("E0382: borrow of moved value")
    assert "names" not in b.signature


def test_failing_tests_give_test_failure_and_name_the_tests(sandbox):
    v = sandbox.judge(ADD.replace("a + b", "a - b"), ADD_TESTS)
    assert (v.compiled, v.tests_passed, v.reason) == (True, False, "test_failure")
    assert v.signature == "test_failure: koan_tests::adds"


def test_tests_are_appended_so_a_fix_cannot_drop_them(sandbox):
    """A 'fix' that deletes the function under test does not compile against the koan's tests."""
    v = sandbox.judge("pub fn unrelated() {}\n", ADD_TESTS)
    assert v.reason == "compile_error" and "E0425" in v.error_codes


def test_run_mode_judges_main_by_exit_status(sandbox):
    assert sandbox.judge("fn main() {}", mode="run").passed
    v = sandbox.judge("fn main() { std::process::exit(3) }", mode="run")
    assert v.reason == "runtime_error" and v.compiled


def test_panic_in_main_is_a_runtime_error(sandbox):
    v = sandbox.judge('fn main() { let v: Vec<i32> = Vec::new(); println!("{}", v[3]); }', mode="run")
    assert v.reason == "runtime_error"
    assert "index out of bounds" in v.output


def test_check_mode_only_type_checks(sandbox):
    assert sandbox.judge("fn main() { loop {} }", mode="check").passed
    assert sandbox.judge("fn main() { let x: i32 = \"no\"; }", mode="check").error_codes == ["E0308"]


def test_compile_results_are_cached_by_content_and_runs_are_not(tmp_path):
    sb = Sandbox(cache_dir=tmp_path)
    first = sb.judge(ADD, ADD_TESTS)
    second = sb.judge(ADD, ADD_TESTS)
    assert not first.cached and second.cached
    assert second.compile_ms == first.compile_ms  # the compile result, as recorded
    timing = re.compile(r"finished in [0-9.]+s")  # libtest's own clock: the run is new, so it may differ
    assert second.run_ms > 0 and second.reason == "ok"  # the tests ran again
    assert timing.sub("", second.output) == timing.sub("", first.output) and "1 passed" in second.output
    failed = sb.judge(ADD.replace("+", "-"), ADD_TESTS)
    again = sb.judge(ADD.replace("+", "-"), ADD_TESTS)
    assert (failed.reason, again.reason, again.cached) == ("test_failure", "test_failure", True)
    other = sb.judge(ADD, ADD_TESTS.replace("5", "6"))
    assert not other.cached and other.reason == "test_failure"
    edition = Sandbox(cache_dir=tmp_path, edition="2021").judge(ADD, ADD_TESTS)
    assert not edition.cached
    broken = sb.judge("pub fn add(a: i32) -> i32 { a + }", ADD_TESTS)
    assert sb.judge("pub fn add(a: i32) -> i32 { a + }", ADD_TESTS).cached and broken.reason == "compile_error"


FLAKY_TESTS = wrap_tests("#[test]\nfn first_key() {\n"
                         "    let m: std::collections::HashMap<u8, u8> = (0..2).map(|i| (i, i)).collect();\n"
                         "    assert_eq!(m.keys().next(), Some(&0));\n}\n")


def test_a_flaky_test_is_judged_again_every_time_not_frozen_by_the_cache(tmp_path):
    """HashMap order changes with every process: the outcome must too, though the compile result is cached."""
    sb = Sandbox(cache_dir=tmp_path)
    reasons = [sb.judge("pub fn unused() {}", FLAKY_TESTS).reason for _ in range(16)]
    assert set(reasons) == {"ok", "test_failure"}


def test_repeated_runs_mark_a_flaky_verdict_and_never_pass_it(tmp_path):
    sb = Sandbox(cache_dir=tmp_path, runs=16)
    v = sb.judge("pub fn unused() {}", FLAKY_TESTS)
    assert v.flaky and not v.passed and v.reason == "test_failure"
    steady = sb.judge(ADD, ADD_TESTS)
    assert steady.passed and not steady.flaky


def test_judge_many_keeps_input_order(tmp_path):
    sb = Sandbox(cache_dir=tmp_path, jobs=2)
    programs = [Program(f"fn main() {{ std::process::exit({i}) }}" if i else "fn main() {}", mode="run")
                for i in range(4)]
    programs.append(Program(ADD, ADD_TESTS))
    verdicts = sb.judge_many(programs)
    assert [v.reason for v in verdicts] == ["ok", "runtime_error", "runtime_error", "runtime_error", "ok"]


def test_unknown_mode_is_refused(sandbox):
    import pytest

    with pytest.raises(ValueError, match="mode must be one of"):
        sandbox.judge(ADD, mode="bench")
