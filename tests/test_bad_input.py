"""Bad koan input: one clear line naming the file and the field or koan, exit 2, no traceback."""

import shutil

import pytest
from conftest import ROOT, run_cli

from sleepy.koans import KoanError, load_pack

EXAMPLE = "borrow_checker"


@pytest.fixture()
def pack(tmp_path):
    """A copy of the builtin pack to break."""
    dst = tmp_path / "pack"
    shutil.copytree(ROOT / "koans", dst)
    return dst


def first_train(pack_dir):
    for path in sorted((pack_dir / EXAMPLE).glob("*.toml")):
        if 'split = "train"' in path.read_text():
            return path
    raise AssertionError("no train koan")


def first_eval(pack_dir):
    for path in sorted((pack_dir / EXAMPLE).glob("*.toml")):
        if 'split = "eval"' in path.read_text():
            return path
    raise AssertionError("no eval koan")


def assert_cli_error(pack_dir, *needles):
    rc, out, err = run_cli("-m", "sleepy.koans", "list", "--pack", str(pack_dir))
    assert rc == 2, out
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_malformed_toml(pack):
    path = first_train(pack)
    path.write_text(path.read_text().replace('title = "', 'title = ', 1))
    assert_cli_error(pack, path.name, "malformed TOML")


def test_missing_field(pack):
    path = first_train(pack)
    text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("title ="))
    path.write_text(text)
    assert_cli_error(pack, path.name, "missing field 'title'")


def test_unknown_field_names_it_and_the_valid_ones(pack):
    path = first_train(pack)
    path.write_text('difficulty = "hard"\n' + path.read_text())
    assert_cli_error(pack, path.name, "unknown field 'difficulty'", "expected_errors")


def test_unknown_family(pack):
    path = first_train(pack)
    path.write_text(path.read_text().replace(f'family = "{EXAMPLE}"', 'family = "borrowing"'))
    assert_cli_error(pack, path.name, "unknown family 'borrowing'", "lifetimes")


def test_duplicate_id(pack):
    path = first_train(pack)
    copy = pack / "lifetimes" / path.name
    copy.write_text(path.read_text().replace(f'family = "{EXAMPLE}"', 'family = "lifetimes"'))
    assert_cli_error(pack, f"duplicate koan id '{path.stem}'", path.name)


def test_non_utf8_file(pack):
    path = first_train(pack)
    path.write_bytes(path.read_bytes().replace(b"title = \"", b"title = \"\xff\xfe", 1))
    assert_cli_error(pack, path.name, "not valid UTF-8")


def test_changed_eval_koan_fails_until_relocked(pack):
    path = first_eval(pack)
    path.write_text(path.read_text().replace("#[test]", "#[test]\n// a quiet edit", 1))
    assert_cli_error(pack, "eval.lock", "eval koan changed", path.name, "sleepy-koans lock")
    rc, _, _ = run_cli("-m", "sleepy.koans", "lock", "--pack", str(pack))
    assert rc == 0
    assert load_pack(pack).get(path.stem)


def test_the_builtin_eval_split_matches_its_lock():
    load_pack()  # raises KoanError if any eval koan changed since koans/eval.lock was written


def test_new_eval_koan_must_be_locked(pack):
    path = first_train(pack)
    new = path.with_name("bc_brand_new_eval.toml")
    new.write_text(path.read_text().replace('split = "train"', 'split = "eval"')
                   .replace(f'id = "{path.stem}"', 'id = "bc_brand_new_eval"'))
    assert_cli_error(pack, "eval koan not in the lock: bc_brand_new_eval")


def test_pack_path_that_is_no_pack(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert_cli_error(tmp_path, str(tmp_path), "no info.toml")


def test_pack_path_that_does_not_exist(tmp_path):
    assert_cli_error(tmp_path / "missing", "does not exist")


def test_rustlings_checkout_without_exercises(tmp_path):
    (tmp_path / "info.toml").write_text('format_version = 1\nwelcome_message = "hi"\n')
    assert_cli_error(tmp_path, "info.toml", "no [[exercises]]")


def test_rustlings_exercise_file_missing(tmp_path):
    (tmp_path / "info.toml").write_text('[[exercises]]\nname = "ghost"\ndir = "01_x"\n')
    assert_cli_error(tmp_path, "exercises/01_x/ghost.rs", "no such file")


def test_pack_without_koans(tmp_path):
    (tmp_path / "pack.toml").write_text('name = "empty"\n[families]\nborrow_checker = "x"\n')
    assert_cli_error(tmp_path, "holds no koans")


def test_koan_error_is_raised_in_process_too(pack):
    path = first_train(pack)
    path.write_text(path.read_text().replace('split = "train"', 'split = "test"'))
    with pytest.raises(KoanError, match="field 'split' must be one of train, eval"):
        load_pack(pack)
