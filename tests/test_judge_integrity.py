"""A pass must be earned: every way found to pass a koan without passing its tests is judged failed.

Each gaming fix is sent the way the agent sends a model's reply: through `extract_fix` and the koan's
own program. The fixes are built on builtin koans' solutions with every function gutted (they compile
and fail the tests), so each attack is the only thing that could turn the verdict into a pass.
"""

import re
from dataclasses import replace
from pathlib import Path

import pytest

from sleepy.koans import load_pack
from sleepy.koans.model import Koan, wrap_tests
from sleepy.prompt import extract_fix

PACK = load_pack()
SAMPLE = [next(k for k in PACK.koans if k.family == f and k.split == "train") for f in sorted(PACK.families)]

pytestmark = pytest.mark.skipif(
    __import__("sleepy.sandbox.isolation", fromlist=["detect"]).detect() != "bwrap",
    reason="bubblewrap isolation is not available here (apt-get install bubblewrap)")


def gutted(koan: Koan, body: str = "todo!();") -> str:
    """The solution with `body` first in every function: it compiles, and every test that calls it fails."""
    return re.sub(r"(fn \w+[^{;]*\{)", lambda m: f"{m.group(1)} {body}", koan.solution)


def judged(sandbox, koan: Koan, fix: str):
    """Judge a fix as the agent does: a model's reply, the program extracted, the koan's tests."""
    return sandbox.judge_program(koan.program(extract_fix(f"Here is the fixed program:\n```rust\n{fix}\n```\n")))


def verdicts(sandbox, fixes: list[tuple[Koan, str]]):
    return sandbox.judge_many([k.program(extract_fix(f"```rust\n{f}\n```")) for k, f in fixes])


def test_the_honest_solutions_of_the_sample_pass_and_their_gutted_versions_fail(sandbox):
    """The control: without an attack, the sample's solutions pass and the gutted fixes fail."""
    assert [judged(sandbox, k, k.solution).reason for k in SAMPLE] == ["ok"] * len(SAMPLE)
    assert not any(judged(sandbox, k, gutted(k)).passed for k in SAMPLE)


@pytest.mark.parametrize("attribute", ["#![cfg(any())]", "#![cfg(not(test))]"])
def test_an_inner_cfg_attribute_passes_no_builtin_koan(sandbox, attribute):
    found = verdicts(sandbox, [(k, f"{attribute}\n{k.code}") for k in PACK.koans])
    assert [k.id for k, v in zip(PACK.koans, found, strict=True) if v.passed] == []
    assert {v.reason for v in found} == {"compile_error"}


@pytest.mark.parametrize("attribute", ["#[cfg(any())]", "#[cfg(not(test))]", "#[cfg_attr(test, cfg(any()))]"])
def test_a_trailing_attribute_cannot_reach_the_tests(sandbox, attribute):
    found = verdicts(sandbox, [(k, f"{gutted(k)}\n{attribute}\n") for k in SAMPLE])
    assert not any(v.passed for v in found)


def test_shadowed_assertion_macros_do_not_change_the_tests(sandbox):
    shadows = "".join(f"macro_rules! {m} {{ ($($t:tt)*) => {{{{}}}} }}\n"
                      for m in ("assert", "assert_eq", "assert_ne", "vec", "panic"))
    exported = shadows.replace("macro_rules!", "#[macro_export]\nmacro_rules!")
    found = verdicts(sandbox, [(k, shadows + gutted(k)) for k in SAMPLE] + [(k, exported + gutted(k)) for k in SAMPLE])
    assert not any(v.passed for v in found)


def test_exit_zero_from_code_the_tests_call(sandbox):
    found = verdicts(sandbox, [(k, gutted(k, "std::process::exit(0);")) for k in SAMPLE])
    assert [v.reason for v in found] == ["incomplete"] * len(SAMPLE)


def test_a_panic_hook_that_exits_zero(sandbox):
    hook = "std::panic::set_hook(Box::new(|_| std::process::exit(0))); todo!();"
    found = verdicts(sandbox, [(k, gutted(k, hook)) for k in SAMPLE])
    assert [v.reason for v in found] == ["incomplete"] * len(SAMPLE)


def test_a_drop_that_exits_zero_while_a_failing_test_unwinds(sandbox):
    guard = ("struct Guard;\nimpl Drop for Guard { fn drop(&mut self) { if std::thread::panicking() "
             "{ std::process::exit(0) } } }\n")
    found = verdicts(sandbox, [(k, guard + gutted(k, "let _g = Guard; todo!();")) for k in SAMPLE])
    assert not any(v.passed for v in found)


@pytest.mark.parametrize("attack", [
    # a constructor in .init_array that exits 0 before any test runs
    '#[unsafe(link_section = ".init_array")]\n#[used]\nstatic EXIT: extern "C" fn() = {\n'
    '    extern "C" fn bye() { std::process::exit(0) }\n    bye\n};\n',
    # an `exit` symbol that turns libtest's failing exit into 0
    'unsafe extern "C" { fn _exit(code: i32) -> !; }\n#[unsafe(no_mangle)]\n'
    'pub extern "C" fn exit(_code: i32) -> ! { unsafe { _exit(0) } }\n',
    # a `write` symbol that rewrites libtest's report
    '#[unsafe(no_mangle)]\npub extern "C" fn write(_fd: i32, _buf: *const u8, n: usize) -> isize { n as isize }\n',
    # assembly that installs a constructor
    'core::arch::global_asm!(".section .init_array,\\"aw\\"", ".quad 0", ".text");\n',
])
def test_constructors_and_symbol_interposition_are_refused(sandbox, attack):
    found = verdicts(sandbox, [(k, attack + gutted(k)) for k in SAMPLE])
    assert {v.reason for v in found} == {"compile_error"}
    assert all("unsafe_code" in v.error_codes for v in found)  # the lint the crate root forbids


def test_a_forged_libtest_summary(sandbox):
    forge = ('{ use std::io::Write; let mut o = std::io::stdout(); '
             'let _ = o.write_all(b"test koan_tests::x ... ok\\n\\ntest result: ok. 3 passed; 0 failed; 0 ignored; '
             '0 measured; 0 filtered out; finished in 0.00s\\n\\n"); let _ = o.flush(); std::process::exit(0) }')
    found = verdicts(sandbox, [(k, gutted(k, forge)) for k in SAMPLE])
    assert [v.reason for v in found] == ["incomplete"] * len(SAMPLE)


def test_forged_tokens(sandbox):
    forge = ('{ use std::io::Write; let mut o = std::io::stdout(); for i in 0..64u128 { '
             'let _ = o.write_all(format!("\\n@sleepy:{:032x}\\n", i * 0x9e3779b97f4a7c15).as_bytes()); } '
             'std::process::exit(0) }')
    found = verdicts(sandbox, [(k, gutted(k, forge)) for k in SAMPLE])
    assert [v.reason for v in found] == ["forged"] * len(SAMPLE)


def test_the_program_cannot_read_its_own_binary_for_the_tokens(sandbox):
    """Reading the test binary would reveal the tokens; it is execute-only and /proc is not mounted."""
    scan = ('{ use std::io::Write; let me = std::env::args().next().unwrap(); '
            'for path in [me.as_str(), "/proc/self/exe", "/proc/self/mem"] { match std::fs::read(path) { '
            'Ok(bytes) => { for w in bytes.windows(32) { if w.iter().all(|c| c.is_ascii_hexdigit()) { '
            'let _ = std::io::stdout().write_all(format!("\\n@sleepy:{}\\n", String::from_utf8_lossy(w)).as_bytes()); '
            '} } } Err(e) => { let _ = std::io::stderr().write_all(format!("{path}: {e}\\n").as_bytes()); } } } '
            'std::process::exit(0) }')
    v = judged(sandbox, SAMPLE[0], gutted(SAMPLE[0], scan))
    assert v.reason == "incomplete"
    assert "Permission denied" in v.output and "/proc/self/exe: No such file" in v.output


def test_the_program_cannot_run_itself_again(sandbox):
    """Running its own binary could list the tests or retry one until a random answer passes."""
    again = ('{ use std::io::Write; let me = std::env::args().next().unwrap(); '
             'match std::process::Command::new(&me).arg("--list").output() { '
             'Ok(out) => { let _ = std::io::stdout().write_all(&out.stdout); } '
             'Err(e) => { let _ = std::io::stderr().write_all(format!("spawn: {e}\\n").as_bytes()); } } '
             'std::process::exit(0) }')
    v = judged(sandbox, SAMPLE[0], gutted(SAMPLE[0], again))
    assert v.reason == "incomplete"
    assert "spawn: Operation not permitted" in v.output


def test_a_copy_of_the_test_module_in_the_fix_is_not_what_is_judged(sandbox):
    """A fix that brings its own, emptied, `mod koan_tests` is judged against the koan's module."""
    k = SAMPLE[0]
    emptied = re.sub(r"(#\[test\]\s*fn \w+\(\)\s*\{)", r"\1 return;", k.tests)
    assert emptied != k.tests
    assert not judged(sandbox, k, gutted(k) + "\n" + emptied).passed
    assert not sandbox.judge_program(k.program(gutted(k) + "\n" + emptied)).passed  # not even without extract_fix


SOME = Koan(id="find_some", family="type_mismatch", split="train", title="find", code="",
            solution="pub fn find(v: &[i32], x: i32) -> Option<usize> {\n    v.iter().position(|&y| y == x)\n}\n",
            tests=wrap_tests("#[test]\nfn finds() {\n    assert_eq!(find(&[1, 2, 3], 3), Some(2));\n"
                             "    let s: String = String::from(\"a\");\n    assert_eq!(s.len(), 1);\n}\n"))


def test_prelude_names_the_tests_use_cannot_be_redefined_by_the_fix(sandbox):
    liar = ("pub fn find(_v: &[i32], _x: i32) -> Option<usize> { None }\n"
            "#[allow(non_snake_case)]\npub fn Some<T>(_: T) -> Option<usize> { None }\n")
    assert judged(sandbox, SOME, SOME.solution).passed
    v = judged(sandbox, SOME, liar)
    assert not v.passed and v.reason == "test_failure"


def test_names_the_koans_own_solution_defines_stay_the_koans(sandbox):
    """A koan whose solution has its own `Some` (an enum variant) keeps it: only std's names are pinned."""
    solution = ("#[derive(Debug, PartialEq, Clone, Copy)]\npub enum Progress { None, Some, Complete }\n"
                "pub fn next(p: Progress) -> Progress {\n    match p { Progress::None => Progress::Some, "
                "_ => Progress::Complete }\n}\n")
    koan = replace(SOME, id="own_some", solution=solution, tests=wrap_tests(
        "use Progress::*;\n#[test]\nfn advances() {\n    assert_eq!(next(None), Some);\n"
        "    assert_eq!(next(Some), Complete);\n}\n"))
    assert judged(sandbox, koan, solution).passed


RUN = Koan(id="runs", family="type_mismatch", split="train", title="runs to the end", code="", tests="", mode="run",
           solution='fn main() {\n    let v: Vec<u32> = (1..=3).collect();\n    println!("{}", v.iter().sum::<u32>());\n}\n')


def test_run_mode_needs_main_to_return(sandbox):
    assert judged(sandbox, RUN, RUN.solution).reason == "ok"
    early = 'fn main() {\n    if std::env::args().count() > 0 { std::process::exit(0); }\n    panic!("unfinished");\n}\n'
    assert judged(sandbox, RUN, early).reason == "incomplete"
    err = 'fn main() -> Result<(), String> {\n    Err("no".to_string())\n}\n'
    assert judged(sandbox, RUN, err).reason == "runtime_error"
    ok = 'fn main() -> Result<(), String> {\n    println!("6");\n    Ok(())\n}\n'
    assert judged(sandbox, RUN, ok).reason == "ok"


def test_run_mode_constructor_is_refused(sandbox):
    ctor = ('#[unsafe(link_section = ".init_array")]\n#[used]\nstatic EXIT: extern "C" fn() = {\n'
            '    extern "C" fn bye() { std::process::exit(0) }\n    bye\n};\nfn main() { panic!("unfinished") }\n')
    assert judged(sandbox, RUN, ctor).reason == "compile_error"


@pytest.mark.parametrize("attribute", ["#![no_implicit_prelude]", "#![no_std]", "#![no_main]"])
def test_crate_level_attributes_are_refused(sandbox, attribute):
    assert not judged(sandbox, SAMPLE[0], f"{attribute}\n{gutted(SAMPLE[0])}").passed


def test_lint_levels_of_the_fix_still_apply(sandbox):
    """A fix's own `#![allow(...)]` is kept (hoisted to the crate), but cannot allow unsafe code."""
    k = SAMPLE[0]
    assert judged(sandbox, k, "// fixed\n#![allow(dead_code)]\n//! docs\n" + k.solution).passed
    v = judged(sandbox, k, "#![allow(unsafe_code)]\n" + k.solution)
    assert not v.passed and "E0453" in v.error_codes


def test_the_night_never_trains_on_a_target_that_games_the_judge(sandbox):
    """Self targets are re-judged by the same judge: a sample that only games it is not an example."""
    from sleepy.night.dataset import build_examples

    k = SAMPLE[0]

    class Gamer:
        def generate(self, prompts, params, adapter=None):
            from sleepy.models.base import Generation

            return [Generation(text=f"```rust\n#![cfg(any())]\n{k.code}\n```") for _ in prompts]

    examples, stats = build_examples([(k, k.title)], [], ["self"], sandbox, set(), backend=Gamer(), self_samples=2)
    assert examples == [] and stats["targets_self"] == 0 and stats["untargeted"] == 1


# -- found by a red-team review of the judge ---------------------------------------------------------------

ATTACKS = Path(__file__).parent / "fixtures" / "attacks"


def test_tokens_read_out_of_the_programs_own_memory_are_forged(sandbox):
    """A soundness hole of rustc gives safe code any memory: printing every token-shaped string found in the
    binary proves nothing, since a token counts only in its own test's report line, and decoys sit beside
    the real tokens."""
    k = PACK.get("tm_average_as_float")
    steal = (ATTACKS / "read_own_memory.rs").read_text()
    fix = steal + gutted(k).replace("pub fn average(scores: &[u32]) -> f64 {",
                                    "pub fn average(scores: &[u32]) -> f64 {\n    steal();")
    v = judged(sandbox, k, fix)
    assert not v.passed and v.reason in ("forged", "runtime_error")  # the scan itself crashes now and then


def test_a_fix_cannot_stand_in_for_std_in_the_tests(sandbox):
    """`pub mod std { ... }` in the fix would replace the tests' `std::num::ParseIntError`."""
    k = PACK.get("rh_settings_loader")
    wrong = k.solution.replace(".parse()?", '.parse().map_err(|_| SettingsError::Missing("threads"))?')
    assert wrong != k.solution and not judged(sandbox, k, wrong).passed
    shadow = "\npub mod std { pub mod num { pub use crate::SettingsError as ParseIntError; } }\n"
    assert not judged(sandbox, k, wrong.replace("use std::", "use ::std::") + shadow).passed


def test_a_fix_trait_cannot_take_over_a_std_method_the_tests_call(sandbox):
    """A by-value trait method is found before an inherent `&self` one: the tests never see the fix's traits."""
    k = PACK.get("rh_csv_row_sum")
    wrong = k.solution.replace(".map(|field|", ".filter(|f| !f.trim().is_empty()).map(|field|")
    assert wrong != k.solution and not judged(sandbox, k, wrong).passed
    hijack = ("\npub trait RowCheck { fn is_err(self) -> bool; }\n"
              "impl<E> RowCheck for Result<i64, E> { fn is_err(self) -> bool { true } }\n")
    assert not judged(sandbox, k, wrong + hijack).passed


def test_a_fix_may_not_extend_the_koans_own_traits(sandbox):
    k = next(k for k in PACK.koans if k.family == "trait_bounds" and "trait " in k.solution and k.split == "train")
    trait = re.search(r"trait (\w+)[^{]*\{", k.solution)
    extended = k.solution[:trait.end()] + "\n    fn is_empty(&self) -> bool { true }\n" + k.solution[trait.end():]
    v = judged(sandbox, k, extended)
    assert v.reason == "compile_error" and "sleepy::refused" in v.error_codes
    assert f"adds methods to the koan's trait `{trait.group(1)}`: is_empty" in v.errors[0].message


def test_assert_takes_a_bool_not_a_type_whose_not_the_fix_defines(sandbox):
    koan = replace(SOME, id="is_big", solution="pub fn is_big(x: u32) -> bool {\n    x > 9\n}\n",
                   tests=wrap_tests("#[test]\nfn big() {\n    assert!(is_big(10));\n    assert!(!is_big(3));\n}\n"))
    liar = ("pub struct Yes;\nimpl std::ops::Not for Yes { type Output = bool; fn not(self) -> bool { false } }\n"
            "pub fn is_big(_x: u32) -> Yes { Yes }\n")
    assert judged(sandbox, koan, koan.solution).passed
    assert not judged(sandbox, koan, liar).passed


def test_a_whole_file_fix_must_also_pass_the_solutions_tests(sandbox):
    from sleepy.koans import load_pack

    pack = load_pack(Path(__file__).parent / "fixtures" / "rustlings")
    todo, panic = pack.get("tests_todo"), pack.get("tests_panic")
    rigged = todo.solution.replace("n / 2", "n * 0").replace("assert_eq!(halve(8), 4)",
                                                             "assert_eq!(halve(8), halve(8))")
    assert judged(sandbox, todo, rigged).reason == "test_failure"
    rigged = panic.solution.replace('.expect("pop from an empty stack")', ".unwrap_or(0)").replace(
        "        s.pop();\n    }\n}", '        s.pop();\n        panic!("empty stack");\n    }\n}')
    assert "unwrap_or(0)" in rigged and 'panic!("empty stack")' in rigged
    assert judged(sandbox, panic, rigged).reason == "test_failure"


def test_a_clippy_koan_is_fixed_not_silenced(sandbox):
    from sleepy.koans import load_pack

    k = load_pack(Path(__file__).parent / "fixtures" / "rustlings").get("clippy1")
    assert judged(sandbox, k, k.solution).passed
    for silence in ("#![allow(clippy::approx_constant)]\n", "#![allow(warnings)]\n"):
        v = judged(sandbox, k, silence + k.code)
        assert v.reason == "compile_error" and "sleepy::refused" in v.error_codes
    inline = k.code.replace("    let pi", "    #[allow(clippy::all)]\n    let pi")
    assert inline != k.code and not judged(sandbox, k, inline).passed


def test_run_mode_compares_what_the_program_prints_with_the_solution(sandbox):
    from sleepy.koans import load_pack

    k = load_pack(Path(__file__).parent / "fixtures" / "rustlings").get("intro2")
    assert judged(sandbox, k, k.solution).passed
    v = judged(sandbox, k, "fn main() {}\n")
    assert v.reason == "test_failure" and "expected output:" in v.output


@pytest.mark.parametrize("form", ['#[should_panic = "empty stack"]', '#[should_panic(expected = r"empty stack")]',
                                  '#[should_panic(expected = "caf\u00e9")]'])
def test_should_panic_expects_the_message_exactly_as_libtest_does(sandbox, form):
    solution = 'pub fn pop(v: &mut Vec<i32>) -> i32 {\n    v.pop().expect("pop from an empty stack caf\u00e9")\n}\n'
    koan = replace(SOME, id="sp", solution=solution, tests=wrap_tests(
        f"#[test]\n{form}\nfn empty_pop_panics() {{\n    pop(&mut Vec::new());\n}}\n"))
    assert judged(sandbox, koan, solution).passed
    other = 'pub fn pop(_v: &mut Vec<i32>) -> i32 {\n    panic!("index out of bounds")\n}\n'
    assert judged(sandbox, koan, other).reason == "test_failure"


@pytest.mark.parametrize("reply", ['pub fn average(s: &[u32]) -> f64 { 0.0 }\nconst S: &str = r#"abc;\n',
                                   "/* unterminated\npub fn average(s: &[u32]) -> f64 { 0.0 }\n",
                                   'pub fn average(s: &[u32]) -> f64 { "unterminated }\n'])
def test_a_reply_cut_off_mid_literal_is_a_compile_error_not_a_crash(sandbox, reply):
    v = judged(sandbox, PACK.get("tm_average_as_float"), reply)
    assert v.reason == "compile_error" and v.errors


def test_run_mode_output_from_threads_may_come_in_any_order(sandbox):
    threads = ('fn main() {\n    let hs: Vec<_> = (0..4).map(|i| std::thread::spawn(move || println!("worker {i} done")))'
               '.collect();\n    for h in hs { h.join().unwrap(); }\n}\n')
    koan = replace(RUN, id="threads", solution=threads)
    ordered = 'fn main() {\n    for i in (0..4).rev() { println!("worker {i} done"); }\n}\n'
    assert judged(sandbox, koan, ordered).passed
    assert judged(sandbox, koan, ordered.replace("(0..4)", "(0..3)")).reason == "test_failure"
