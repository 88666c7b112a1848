"""Koan packs: the TOML pack format (one file per koan: the builtin pack, the error-code pack, forged packs),
rustlings-format checkouts, and the leak check between splits."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from sleepy import shipped
from sleepy.koans import lock
from sleepy.koans.model import SPLITS, Koan, KoanError, Pack, read_toml, relpath, shape_grams, wrap_tests
from sleepy.koans.rustlings import info_path, load_rustlings

BUILTIN = shipped("koans")
REQUIRED = ("id", "family", "split", "title", "expected_errors", "code", "solution", "tests")
OPTIONAL = ("hint", "mode", "origin", "mutation")
TOML_MODES = ("test", "check")  # check: compiles with no error (no tests), as the error-code pack is judged
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_CODE = re.compile(r"^E\d{4}$")


def load_pack(path: str | Path | None = None, check_lock: bool = True) -> Pack:
    """Load the builtin pack (path=None), a TOML pack directory, or a rustlings checkout."""
    root = Path(path) if path else BUILTIN
    if not root.is_dir():
        raise KoanError(f"{root}: koan pack path does not exist or is not a directory")
    if info_path(root):
        return load_rustlings(root)
    if (root / "pack.toml").exists():
        return load_toml_pack(root, check_lock)
    raise KoanError(f"{relpath(root)}: not a koan pack (no info.toml of a rustlings checkout, no pack.toml)")


def write_pack(root: Path, name: str, families: dict[str, str], koans: list[Koan], meta: dict | None = None,
               note: str = "") -> None:
    """Write koans as a TOML pack at root (pack.toml, <family>/<id>.toml) with the lock of its eval koans;
    meta: more pack.toml keys (strings, numbers, lists) saying how the pack was made."""
    root.mkdir(parents=True, exist_ok=True)
    head = [f"name = {_toml_string(name)}"]
    head += [f"{key} = {_toml_value(value)}" for key, value in (meta or {}).items()]
    head += ["", "[families]", *(f"{f} = {_toml_string(d)}" for f, d in families.items())]
    (root / "pack.toml").write_text("\n".join(head) + "\n", encoding="utf-8")
    for k in koans:
        (root / k.family).mkdir(exist_ok=True)
        (root / k.family / f"{k.id}.toml").write_text(koan_toml(k), encoding="utf-8")
    lock.write(koans, root / lock.LOCK_FILE, note)


def koan_toml(k: Koan) -> str:
    """A koan as a koan file of a TOML pack (its tests as the whole module the judge appends)."""
    fields = {"id": k.id, "family": k.family, "split": k.split, "title": k.title,
              "expected_errors": list(k.expected_errors), "mode": k.mode if k.mode != "test" else "",
              "origin": k.origin, "mutation": k.mutation, "hint": k.hint}
    lines = [f"{key} = {_toml_value(value)}" for key, value in fields.items() if value not in ("", [])]
    lines += [f"{key} = {_toml_string(getattr(k, key), multiline=True)}" for key in ("code", "solution", "tests")
              if getattr(k, key)]
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str, multiline: bool = False) -> str:
    """A TOML string: a multi-line literal string where the text allows it, else a basic string with escapes."""
    plain = all(c in "\n\t" or (c.isprintable() and c != "\x7f") for c in text)
    if multiline and plain and "'''" not in text and not text.endswith("'"):
        return "'''\n" + text + "'''"
    escaped = []
    for c in text:
        if c in '"\\':
            escaped.append("\\" + c)
        elif c == "\n":
            escaped.append("\\n")
        elif c == "\t":
            escaped.append("\\t")
        elif not c.isprintable() or c == "\x7f":
            escaped.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
        else:
            escaped.append(c)
    return '"' + "".join(escaped) + '"'


def load_toml_pack(root: Path, check_lock: bool = True) -> Pack:
    meta = read_toml(root / "pack.toml")
    families = meta.get("families")
    if not isinstance(families, dict) or not families:
        raise KoanError(f"{relpath(root / 'pack.toml')}: needs a [families] table (family = \"description\")")
    koans: list[Koan] = []
    seen: dict[str, Path] = {}
    for path in sorted(root.glob("*/*.toml")):
        koan = parse_koan(path, families)
        if koan.id in seen:
            raise KoanError(f"{relpath(path)}: duplicate koan id '{koan.id}' (also in {relpath(seen[koan.id])})")
        seen[koan.id] = path
        koans.append(koan)
    if not koans:
        raise KoanError(f"{relpath(root)}: the pack holds no koans (expected <family>/<id>.toml files)")
    koans.sort(key=lambda k: (k.family, k.split, k.id))
    name = str(meta.get("name", root.name))
    koans = [replace(k, pack=name) for k in koans]
    rest = {k: v for k, v in meta.items() if k not in ("name", "families")}
    pack = Pack(name, root, koans, {k: str(v) for k, v in families.items()}, rest)
    if check_lock:
        lock.check(pack.koans, root / lock.LOCK_FILE)
    return pack


def parse_koan(path: Path, families: dict) -> Koan:
    data = read_toml(path)
    where = relpath(path)
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise KoanError(f"{where}: unknown field '{unknown[0]}' (valid: {', '.join(REQUIRED + OPTIONAL)})")
    mode = data.get("mode", "test")
    if mode not in TOML_MODES:
        raise KoanError(f"{where}: field 'mode' must be one of {', '.join(TOML_MODES)}; got {mode!r}")
    for key in REQUIRED:
        if key not in data and not (key == "tests" and mode == "check"):
            raise KoanError(f"{where}: missing field '{key}'")
    for key in (*REQUIRED, *OPTIONAL):
        want = list if key == "expected_errors" else str
        if key in data and not isinstance(data[key], want):
            raise KoanError(f"{where}: field '{key}' must be a {want.__name__}")
    if not _ID.match(data["id"]) or data["id"] != path.stem:
        raise KoanError(f"{where}: field 'id' must be lowercase snake_case and equal the file name "
                        f"('{path.stem}'); got '{data['id']}'")
    family = data["family"]
    if family not in families:
        raise KoanError(f"{where}: unknown family '{family}' (valid: {', '.join(sorted(families))})")
    if family != path.parent.name:
        raise KoanError(f"{where}: field 'family' is '{family}' but the file is in '{path.parent.name}/'")
    if data["split"] not in SPLITS:
        raise KoanError(f"{where}: field 'split' must be one of {', '.join(SPLITS)}; got '{data['split']}'")
    codes = data["expected_errors"]
    bad = [c for c in codes if not isinstance(c, str) or not _CODE.match(c)]
    if not codes or bad:
        raise KoanError(f"{where}: field 'expected_errors' must list rustc error codes like \"E0382\""
                        + (f"; got {bad[0]!r}" if bad else "; it is empty"))
    tests = data.get("tests", "")
    if mode == "test" and "#[test]" not in tests:
        raise KoanError(f"{where}: field 'tests' holds no #[test] function")
    if mode == "check" and tests.strip():
        raise KoanError(f"{where}: field 'tests' must be empty in a check-mode koan (it is only compiled)")
    return Koan(
        id=data["id"], family=family, split=data["split"], title=data["title"].strip(),
        code=data["code"], solution=data["solution"], tests=_test_module(tests) if tests.strip() else "",
        expected_errors=tuple(codes), hint=data.get("hint", "").strip(), mode=mode, source=where,
        origin=data.get("origin", ""), mutation=data.get("mutation", ""),
    )


def _test_module(tests: str) -> str:
    """A koan file's tests as the module the judge appends: test functions are wrapped, a whole
    `#[cfg(test)] mod` (a forged koan keeps its source's module) is taken as it is."""
    return tests if "#[cfg(test)]" in tests else wrap_tests(tests)


MIN_SHARED = 16  # 8-grams of shape (about two lines of code): what two tiny programs share by chance is no leak


def find_leaks(koans: list[Koan], threshold: float = 0.5) -> list[tuple[str, str, float]]:
    """Eval koans whose broken program (or solution) shares a large part of its shape with a train koan's:
    the share of the smaller program's token 8-grams that the other has too (see `shape_similarity`), and at
    least MIN_SHARED of them (a ten-line example from the error-code docs shares half its few 8-grams with
    many a program: `fn x ( ) { let x = x {`)."""
    train = [k for k in koans if k.split == "train"]
    grams = {name: [shape_grams(getattr(t, name)) for t in train] for name in ("code", "solution")}
    index = {name: _index(g) for name, g in grams.items()}
    leaks = []
    for e in (k for k in koans if k.split == "eval"):
        shared, own = {}, {}
        for name in ("code", "solution"):
            own[name] = shape_grams(getattr(e, name))
            counts: dict[int, int] = {}
            for gram in own[name]:
                for i in index[name].get(gram, ()):
                    counts[i] = counts.get(i, 0) + 1
            shared[name] = counts
        for i, t in enumerate(train):
            for name in ("code", "solution"):
                smaller, common = min(len(own[name]), len(grams[name][i])), shared[name].get(i, 0)
                s = common / smaller if smaller else 0.0
                if s >= threshold and common >= min(MIN_SHARED, smaller):
                    leaks.append((e.id, t.id, round(s, 3)))
                    break
    return leaks


def _index(grams: list[frozenset]) -> dict:
    out: dict = {}
    for i, g in enumerate(grams):
        for gram in g:
            out.setdefault(gram, []).append(i)
    return out
