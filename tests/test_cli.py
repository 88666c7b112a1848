"""sleepy-koans: list, show, verify, judge, lock."""

import json
import shutil
from pathlib import Path

from conftest import ROOT, run_cli

from sleepy.koans import load_pack


def test_list_json_gives_the_fields_of_every_koan(builtin):
    rc, out, _ = run_cli("-m", "sleepy.koans", "list", "--json")
    assert rc == 0
    rows = json.loads(out)
    assert len(rows) == len(builtin.koans)
    assert {"id", "family", "split", "title", "expected_errors"} <= set(rows[0])


def test_list_filters_by_family_and_split(builtin):
    rc, out, _ = run_cli("-m", "sleepy.koans", "list", "--family", "lifetimes", "--split", "eval", "--json")
    rows = json.loads(out)
    assert rc == 0 and rows
    assert {(r["family"], r["split"]) for r in rows} == {("lifetimes", "eval")}
    assert len(rows) == len(builtin.select("lifetimes", "eval"))


def test_show_prints_code_and_tests(builtin):
    koan = builtin.koans[0]
    rc, out, _ = run_cli("-m", "sleepy.koans", "show", koan.id)
    assert rc == 0
    assert koan.title in out and koan.code.strip().splitlines()[0] in out and "mod koan_tests" in out


def test_show_unknown_id_is_a_clear_error():
    rc, _, err = run_cli("-m", "sleepy.koans", "show", "no_such_koan")
    assert rc == 2 and "no koan with id 'no_such_koan'" in err and "Traceback" not in err


def test_show_json_gives_every_field_and_the_solution_only_when_asked(builtin):
    koan = builtin.koans[0]
    rc, out, err = run_cli("-m", "sleepy.koans", "show", koan.id, "--json")
    assert rc == 0, err
    shown = json.loads(out)
    assert (shown["id"], shown["code"], shown["tests"]) == (koan.id, koan.code, koan.tests) and "solution" not in shown
    assert shown["expected_errors"] == list(koan.expected_errors)
    rc, out, _ = run_cli("-m", "sleepy.koans", "show", koan.id, "--json", "--solution")
    assert rc == 0 and json.loads(out)["solution"] == koan.solution


def test_judge_a_fix_against_a_koans_tests_as_the_agent_does(tmp_path, builtin):
    """--koan: the file is read as a model's reply (its rust block) and judged with the koan's own tests."""
    koan = next(k for k in builtin.koans if k.split == "train" and k.tests)
    reply = tmp_path / "reply.md"
    reply.write_text(f"Here is the fix:\n\n```rust\n{koan.solution}\n```\n")
    rc, out, err = run_cli("-m", "sleepy.koans", "judge", "--koan", koan.id, str(reply))
    assert rc == 0, out + err
    assert f"koan {koan.id}: PASS (ok)" in out
    broken = tmp_path / "broken.rs"
    broken.write_text(koan.code)
    rc, out, _ = run_cli("-m", "sleepy.koans", "judge", "--koan", koan.id, str(broken), "--json")
    v = json.loads(out)
    assert rc == 1 and v["koan"] == koan.id and not v["passed"] and v["reason"] == "compile_error"
    assert set(koan.expected_errors) <= set(v["error_codes"])


def test_judge_a_fix_that_games_the_tests_fails(tmp_path, builtin):
    """A fix that gets rid of the koan's tests does not pass: the koan's tests are appended whatever the file holds."""
    koan = next(k for k in builtin.koans if k.split == "train" and k.tests)
    gutted = tmp_path / "gutted.rs"
    gutted.write_text("#![cfg(any())]\nfn main() {}\n")
    rc, out, _ = run_cli("-m", "sleepy.koans", "judge", "--koan", koan.id, str(gutted))
    assert rc == 1 and f"koan {koan.id}: FAIL" in out
    rc, _, err = run_cli("-m", "sleepy.koans", "judge", "--koan", koan.id, str(gutted), "--mode", "check")
    assert rc == 2 and "leave out --tests and --mode" in err and "Traceback" not in err


def closed_early(*args: str, lines: int = 1) -> tuple[int, bytes, str]:
    """Run `python -m ARGS` with stdout a small pipe that is closed after `lines` lines were read, as `| head -1`
    does (0: before the command writes anything)."""
    import fcntl
    import os
    import subprocess
    import sys

    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe, so the writer is still writing when the reader goes
    if not lines:
        os.close(r)  # before the command starts, so it cannot have written everything first
    p = subprocess.Popen([sys.executable, "-m", *args], stdout=w, stderr=subprocess.PIPE, cwd=ROOT)
    os.close(w)
    line = b""
    while lines and line.count(b"\n") < lines:
        line += os.read(r, 1)
    if lines:
        os.close(r)
    _, err = p.communicate(timeout=120)
    return p.returncode, line, err.decode()


def test_a_reader_that_goes_away_early_ends_the_command_quietly():
    for args in (("sleepy.koans", "list", "--json"), ("sleepy.koans", "list")):  # more than the pipe holds
        rc, line, err = closed_early(*args)
        assert line.endswith(b"\n") and "Traceback" not in err and "BrokenPipe" not in err, (args, err)
        assert rc == 141, args  # as if killed by SIGPIPE, like other command line tools
    for args in (("sleepy.koans", "show", "--json", "bc_bank_transfer"), ("sleepy", "--help"),
                 ("sleepy", "--info", "all"), ("sleepy.report", "--help")):  # less than it holds; --info logs
        rc, _, err = closed_early(*args, lines=0)
        assert "Traceback" not in err and "Logging error" not in err and "BrokenPipe" not in err, (args, err)
        assert rc == (0 if args[-1] == "--help" and args[0] != "sleepy" else 141), args  # argparse's help
        # swallows a closed pipe itself (exit 0)


def test_judge_json_reports_the_verdict(tmp_path):
    src = tmp_path / "broken.rs"
    src.write_text("fn main() {\n    let n: i32 = \"seven\";\n}\n")
    rc, out, _ = run_cli("-m", "sleepy.koans", "judge", str(src), "--mode", "run", "--json", "--no-cache")
    v = json.loads(out)
    assert rc == 1
    assert (v["compiled"], v["passed"], v["reason"], v["error_codes"]) == (False, False, "compile_error", ["E0308"])
    assert v["signature"].startswith("E0308: mismatched types")
    assert {"tests_passed", "isolation", "wall_ms"} <= set(v)


def test_judge_appends_a_tests_file(tmp_path):
    src, tests = tmp_path / "lib.rs", tmp_path / "tests.rs"
    src.write_text("pub fn double(x: u32) -> u32 { x * 2 }\n")
    tests.write_text("#[test]\nfn doubles() { assert_eq!(double(21), 42); }\n")
    rc, out, err = run_cli("-m", "sleepy.koans", "judge", str(src), "--tests", str(tests), "--json")
    assert rc == 0, err
    assert json.loads(out)["reason"] == "ok"
    tests.write_text("#[test]\nfn doubles() { assert_eq!(double(21), 41); }\n")
    rc, out, _ = run_cli("-m", "sleepy.koans", "judge", str(src), "--tests", str(tests), "--json")
    assert rc == 1 and json.loads(out)["reason"] == "test_failure"


def test_verify_cli_fails_and_names_a_koan_whose_solution_is_wrong(tmp_path):
    pack = tmp_path / "pack"
    shutil.copytree(ROOT / "koans", pack)
    victim = sorted((pack / "lifetimes").glob("*.toml"))[0]
    for other in pack.glob("*/*.toml"):
        if other != victim:
            other.unlink()
    text = victim.read_text()
    victim.write_text(text.replace("solution = '''", "solution = '''\ncompile_error!(\"broken solution\");", 1))
    run_cli("-m", "sleepy.koans", "lock", "--pack", str(pack))
    rc, out, err = run_cli("-m", "sleepy.koans", "verify", "--pack", str(pack), "--json")
    report = json.loads(out)
    assert rc == 1, err
    assert report["koans"] == 1 and report["verified"] == 0
    assert report["failed"][0]["id"] == victim.stem and "solution fails" in report["failed"][0]["why"]


def test_lock_freezes_eval_koans(tmp_path):
    pack = tmp_path / "pack"
    shutil.copytree(ROOT / "koans", pack)
    (pack / "eval.lock").unlink()
    rc, out, _ = run_cli("-m", "sleepy.koans", "lock", "--pack", str(pack))
    assert rc == 0 and "froze" in out
    assert (pack / "eval.lock").read_text() == (ROOT / "koans" / "eval.lock").read_text()
    assert load_pack(pack).koans


def test_console_scripts_are_installed():
    bindir = Path(__import__("sys").executable).parent
    assert (bindir / "sleepy-koans").exists() and (bindir / "sleepy").exists()
