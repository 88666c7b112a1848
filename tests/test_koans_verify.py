"""One verify path: `sleepy-koans verify` and `stage=verify` judge the same way and both check for leaks."""

import shutil

from conftest import ROOT, run_cli

from sleepy.koans import load_pack


def leaking_pack(tmp_path):
    """The builtin pack plus a renamed copy of a train koan filed as eval, frozen in the lock."""
    import re

    pack = tmp_path / "pack"
    shutil.copytree(ROOT / "koans", pack)
    train = next(k for k in load_pack(pack).koans if k.split == "train" and k.family == "borrow_checker")
    text = (pack / train.family / f"{train.id}.toml").read_text()
    copy = re.sub(r'^id = ".*"$', 'id = "leaked_copy"', text, flags=re.M).replace('split = "train"', 'split = "eval"')
    (pack / train.family / "leaked_copy.toml").write_text(copy)
    rc, _, err = run_cli("-m", "sleepy.koans", "lock", "--pack", str(pack))
    assert rc == 0, err
    return pack, train


def test_both_verify_commands_refuse_a_leaking_eval_koan(tmp_path):
    pack, train = leaking_pack(tmp_path)
    env = {"SLEEPY_CACHE_DIR": str(tmp_path / "cache")}
    rc, out, _ = run_cli("-m", "sleepy.koans", "verify", "--pack", str(pack), env_extra=env)
    assert rc == 1 and f"FAIL leaked_copy: eval koan shares 100% of its shape with train koan {train.id}" in out
    rc, out, _ = run_cli("-m", "sleepy", "stage=verify", f"koans.pack={pack}", "koans.families=[borrow_checker]",
                         f"hydra.run.dir={tmp_path}/out", env_extra=env)
    assert rc == 1 and f"FAIL leaked_copy: eval koan shares 100% of its shape with train koan {train.id}" in out
