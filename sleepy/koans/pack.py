"""Koan packs: the builtin TOML pack (one file per koan) and rustlings-format checkouts."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sleepy.koans import lock
from sleepy.koans.model import SPLITS, Koan, KoanError, read_utf8, relpath, shape_similarity, wrap_tests

BUILTIN = Path(__file__).resolve().parents[2] / "koans"
REQUIRED = ("id", "family", "split", "title", "expected_errors", "code", "solution", "tests")
OPTIONAL = ("hint",)
_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_CODE = re.compile(r"^E\d{4}$")


@dataclass
class Pack:
    name: str
    root: Path
    koans: list[Koan]
    families: dict[str, str] = field(default_factory=dict)

    def get(self, koan_id: str) -> Koan:
        for k in self.koans:
            if k.id == koan_id:
                return k
        raise KoanError(f"{relpath(self.root)}: no koan with id '{koan_id}'")

    def select(self, family: str | Iterable[str] | None = None, split: str | None = None,
               count: int | None = None) -> list[Koan]:
        """Koans of the given families and split, in id order; the first `count` per family."""
        families = [family] if isinstance(family, str) else list(family) if family else None
        for f in families or []:
            if f not in self.families:
                raise KoanError(f"{relpath(self.root)}: unknown family '{f}' "
                                f"(valid: {', '.join(sorted(self.families))})")
        if split is not None and split not in SPLITS:
            raise KoanError(f"split must be one of {', '.join(SPLITS)}; got '{split}'")
        chosen = [k for k in self.koans
                  if (families is None or k.family in families) and (split is None or k.split == split)]
        if count is None:
            return chosen
        per: dict[str, int] = {}
        out = []
        for k in chosen:
            per[k.family] = per.get(k.family, 0) + 1
            if per[k.family] <= count:
                out.append(k)
        return out


def load_pack(path: str | Path | None = None, check_lock: bool = True) -> Pack:
    """Load the builtin pack (path=None), a TOML pack directory, or a rustlings checkout."""
    root = Path(path) if path else BUILTIN
    if not root.is_dir():
        raise KoanError(f"{root}: koan pack path does not exist or is not a directory")
    from sleepy.koans.rustlings import info_path, load_rustlings

    if info_path(root):
        return load_rustlings(root)
    if (root / "pack.toml").exists():
        return load_toml_pack(root, check_lock)
    raise KoanError(f"{relpath(root)}: not a koan pack (no info.toml of a rustlings checkout, no pack.toml)")


def read_toml(path: Path) -> dict:
    """Parse a TOML file; any problem is one KoanError naming the file."""
    text = read_utf8(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise KoanError(f"{relpath(path)}: malformed TOML: {e}") from None


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
    pack = Pack(str(meta.get("name", root.name)), root, koans, {k: str(v) for k, v in families.items()})
    if check_lock:
        lock.check(pack.koans, root / lock.LOCK_FILE)
    return pack


def parse_koan(path: Path, families: dict) -> Koan:
    data = read_toml(path)
    where = relpath(path)
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise KoanError(f"{where}: unknown field '{unknown[0]}' (valid: {', '.join(REQUIRED + OPTIONAL)})")
    for key in REQUIRED:
        if key not in data:
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
    if "#[test]" not in data["tests"]:
        raise KoanError(f"{where}: field 'tests' holds no #[test] function")
    return Koan(
        id=data["id"], family=family, split=data["split"], title=data["title"].strip(),
        code=data["code"], solution=data["solution"], tests=wrap_tests(data["tests"]),
        expected_errors=tuple(codes), hint=data.get("hint", "").strip(), source=where,
    )


def find_leaks(koans: list[Koan], threshold: float = 0.5) -> list[tuple[str, str, float]]:
    """Eval koans whose broken program shares a large part of its shape with a train koan's."""
    train = [k for k in koans if k.split == "train"]
    leaks = []
    for e in (k for k in koans if k.split == "eval"):
        for t in train:
            for a, b in ((e.code, t.code), (e.solution, t.solution)):
                s = shape_similarity(a, b)
                if s >= threshold:
                    leaks.append((e.id, t.id, round(s, 3)))
                    break
    return leaks
