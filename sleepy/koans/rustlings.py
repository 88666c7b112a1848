"""Load a rustlings-format checkout (info.toml, exercises/, solutions/) as a koan pack."""

from __future__ import annotations

import re
from pathlib import Path

from sleepy.koans.model import Koan, KoanError, read_utf8, relpath

_TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{")
_EXERCISE_KEYS = {"name", "dir", "test", "hint", "skip_check_unsolved", "strict_clippy"}


def load_rustlings(root: Path):
    from sleepy.koans.pack import Pack, read_toml

    info_path = root / "info.toml"
    info = read_toml(info_path)
    exercises = info.get("exercises")
    if not isinstance(exercises, list) or not exercises:
        raise KoanError(f"{relpath(info_path)}: holds no [[exercises]]")
    koans: list[Koan] = []
    seen: set[str] = set()
    for n, ex in enumerate(exercises, 1):
        where = f"{relpath(info_path)}: exercise #{n}"
        if not isinstance(ex, dict) or not isinstance(ex.get("name"), str):
            raise KoanError(f"{where}: missing field 'name'")
        unknown = sorted(set(ex) - _EXERCISE_KEYS)
        if unknown:
            raise KoanError(f"{where} ('{ex['name']}'): unknown field '{unknown[0]}' "
                            f"(valid: {', '.join(sorted(_EXERCISE_KEYS))})")
        name, sub = ex["name"], ex.get("dir", "")
        if name in seen:
            raise KoanError(f"{where}: duplicate exercise name '{name}'")
        seen.add(name)
        rel = Path(sub, f"{name}.rs")
        exercise = read_utf8(root / "exercises" / rel)
        solution = read_utf8(root / "solutions" / rel)
        code, tests = split_tests(exercise)
        fixed, _ = split_tests(solution)
        run_tests = bool(ex.get("test", True))
        koans.append(Koan(
            id=name, family=sub or "exercises", split="train", title=f"rustlings {sub + '/' if sub else ''}{name}",
            code=code, solution=fixed, tests=tests if run_tests else "",
            hint=str(ex.get("hint", "")).strip(), mode="test" if run_tests else "run",
            clippy=bool(ex.get("strict_clippy", False)),
            check_unsolved=not ex.get("skip_check_unsolved", False),
            source=relpath(root / "exercises" / rel),
        ))
    families = {k.family: f"rustlings {k.family}" for k in koans}
    return Pack(str(info.get("name", root.name)), root, koans, families)


def split_tests(source: str, name: str = r"\w+") -> tuple[str, str]:
    """Split `#[cfg(test)] mod <name> { ... }` out of a source file: (code without it, the module)."""
    m = re.compile(_TEST_MODULE.pattern.replace(r"\w+", name)).search(source)
    if not m:
        return source, ""
    end = _matching_brace(source, m.end() - 1)
    return source[:m.start()].rstrip() + "\n" + source[end + 1:], source[m.start():end + 1] + "\n"


def _matching_brace(s: str, open_at: int) -> int:
    """Index of the brace closing s[open_at], skipping comments, strings and char literals."""
    depth, i = 0, open_at
    while i < len(s):
        c = s[i]
        if s.startswith("//", i):
            i = s.find("\n", i)
            if i < 0:
                break
        elif s.startswith("/*", i):
            i = s.find("*/", i) + 1
        elif c == '"':
            i += 1
            while i < len(s) and s[i] != '"':
                i += 2 if s[i] == "\\" else 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", s[i:i + 4]):
            i = s.find("'", i + 2)
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise KoanError("unbalanced braces in the #[cfg(test)] module")
