"""The rustc error-code pack: the toolchain's documented examples as check-mode koans, verified, locked, cached;
`rustc --explain` when rust-docs is missing."""

import shutil

import pytest
from conftest import run_cli

from sleepy.koans import KoanError, load_pack
from sleepy.koans import error_codes as ec
from sleepy.koans.verify import verify_koans

PAGES = ("E0382", "E0499", "E0001", "E0733")


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """A docs directory with a few of the toolchain's own pages (E0001 is retired)."""
    if not any(ec.docs_dir().glob("E0382.html")):
        pytest.skip("rust-docs is not installed")
    out = tmp_path_factory.mktemp("docs")
    for code in PAGES:
        shutil.copy(ec.docs_dir() / f"{code}.html", out)
    return out


def test_pages_keep_their_tags_and_retired_codes_are_marked(docs):
    pages = {p.code: p for p in ec.read_docs(docs)}
    assert set(pages) == set(PAGES) and not pages["E0001"].active and pages["E0382"].active
    assert pages["E0382"].title == "A variable was used after its contents have been moved elsewhere."
    first = pages["E0382"].examples[0]
    assert first.fails_with == {"E0382"} and first.compiles is False
    assert "fn main() {" in first.text and "&amp;" not in first.text and "<span" not in first.text
    assert any(e.compiles for e in pages["E0382"].examples)


def test_a_koan_per_active_code_verified_in_check_mode(docs, sandbox):
    koans, stats = ec.build(ec.read_docs(docs), sandbox)
    by_id = {k.id: k for k in koans}
    assert set(by_id) == {"e0382", "e0499", "e0733"}
    assert stats["pages"] == 4 and stats["active_codes"] == 3 and stats["koans"] == 3
    k = by_id["e0382"]
    assert (k.family, k.split, k.mode, k.tests, k.expected_errors) == ("borrow_checker", "eval", "check", "", ("E0382",))
    assert by_id["e0733"].family == "other" and stats["codes_from_E0700"] == 1
    assert verify_koans(koans, sandbox)["failed"] == []
    fixed = sandbox.judge_program(k.program(k.solution))
    assert fixed.passed and not sandbox.judge_program(k.program()).passed


def test_without_rust_docs_the_pack_comes_from_rustc_explain_with_a_warning(tmp_path, sandbox, capsys):
    empty = tmp_path / "no-docs"
    empty.mkdir()
    stats = ec.make(tmp_path / "pack", sandbox, docs=empty, codes=["E0382", "E0499", "E0308"])
    assert "warning: no rust-docs error-code pages in" in capsys.readouterr().err
    pack = load_pack(tmp_path / "pack")
    assert pack.meta["source"] == "explain" and stats["koans"] == len(pack.koans) >= 2
    assert {k.mode for k in pack.koans} == {"check"}
    assert verify_koans(pack.koans, sandbox)["failed"] == []


def test_explain_examples_are_wrapped_the_way_rustdoc_does():
    wrapped = ec.rustdoc_wrap("#![deny(warnings)]\nlet x = 1;\n")
    assert wrapped.startswith("#![deny(warnings)]\n#![allow(unused)]\nfn main() {\nlet x = 1;\n}")
    assert ec.rustdoc_wrap("fn main() {}\n") == "fn main() {}\n"


def test_the_pack_is_frozen_by_its_lock(docs, tmp_path, sandbox):
    ec.make(tmp_path / "pack", sandbox, docs=docs)
    lock = (tmp_path / "pack" / "eval.lock").read_text()
    assert "rustc 1." in lock and "check mode" in lock
    path = tmp_path / "pack" / "borrow_checker" / "e0382.toml"
    path.write_text(path.read_text().replace("let y = x;", "let y = x; "))
    with pytest.raises(KoanError, match="eval koan changed since the lock was written: .*e0382"):
        load_pack(tmp_path / "pack")


def test_the_named_pack_is_made_once_and_kept(docs, tmp_path, monkeypatch, sandbox):
    monkeypatch.setenv("SLEEPY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ec, "docs_dir", lambda: docs)
    first = ec.load(sandbox)
    assert "rustc-1." in str(first.root) and "edition2024-docs" in str(first.root)
    monkeypatch.setattr(ec, "build", lambda *a: pytest.fail("made again"))
    assert [k.content_hash() for k in ec.load(sandbox).koans] == [k.content_hash() for k in first.koans]


@pytest.mark.slow
def test_the_whole_pack_verifies_offline_from_a_cold_cache(tmp_path):
    rc, out, err = run_cli("-m", "sleepy.koans", "verify", "--pack", "rustc_errors",
                           env_extra={"SLEEPY_CACHE_DIR": str(tmp_path)}, timeout=1800)
    assert rc == 0, err
    verified = int(out.split("/")[0].split()[-1])
    assert verified >= 250 and "0 failed" in out and "check mode" in out
