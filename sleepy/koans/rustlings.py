"""Load a rustlings-format checkout (info.toml, exercises/, solutions/) as a koan pack.

An exercise's `#[cfg(test)]` module is usually the same in the exercise and its solution: the
koan's code is the exercise without it, and the judge appends the module to every fix. Where the
solution's module differs, the TODO is inside the tests (the learner edits them, as rustlings asks):
the koan is judged on the whole fixed file, as rustlings does, and every test of the solution's module
must still be there, run and pass, so deleting the tests does not pass. The prompt then shows the
exercise's own file, never the solution's tests.
"""

from __future__ import annotations

from pathlib import Path

from sleepy.koans.model import Koan, KoanError, Pack, read_toml, read_utf8, relpath
from sleepy.rust_source import RustSourceError, split_module, test_functions, tokens

_EXERCISE_KEYS = {"name", "dir", "test", "hint", "skip_check_unsolved", "strict_clippy"}
INFO = ("info.toml", "rustlings-macros/info.toml")  # a course checkout, or the rustlings repository itself


def info_path(root: Path) -> Path | None:
    """The info.toml of a rustlings checkout at root, or None when root is not one."""
    return next((root / p for p in INFO if (root / p).is_file()), None)


def load_rustlings(root: Path):
    info_file = info_path(root)
    info = read_toml(info_file)
    exercises = info.get("exercises")
    if not isinstance(exercises, list) or not exercises:
        raise KoanError(f"{relpath(info_file)}: holds no [[exercises]]")
    koans: list[Koan] = []
    seen: set[str] = set()
    for n, ex in enumerate(exercises, 1):
        where = f"{relpath(info_file)}: exercise #{n}"
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
        koans.append(_koan(ex, name, sub, root / "exercises" / rel, root / "solutions" / rel))
    families = {k.family: f"rustlings {k.family}" for k in koans}
    return Pack(str(info.get("name", root.name)), root, koans, families)


def _koan(ex: dict, name: str, sub: str, exercise_path: Path, solution_path: Path) -> Koan:
    exercise, solution = read_utf8(exercise_path), read_utf8(solution_path)
    run_tests = bool(ex.get("test", True))
    common = dict(id=name, family=sub or "exercises", split="train",
                  title=f"rustlings {sub + '/' if sub else ''}{name}", hint=str(ex.get("hint", "")).strip(),
                  clippy=bool(ex.get("strict_clippy", False)), check_unsolved=not ex.get("skip_check_unsolved", False),
                  source=relpath(exercise_path))
    try:
        code, tests = split_module(exercise)
        fixed, solution_tests = split_module(solution)
    except RustSourceError as e:
        raise KoanError(f"{relpath(exercise_path)}: cannot read its test module ({e})") from None
    if not run_tests:
        return Koan(code=exercise, solution=solution, tests="", mode="run", **common)
    if _same(tests, solution_tests):
        return Koan(code=code, solution=fixed, tests=tests, mode="test", **common)
    required = tuple(t.name for t in test_functions(solution_tests))
    if not required:
        raise KoanError(f"{relpath(solution_path)}: the solution's test module holds no #[test] function")
    return Koan(code=exercise, solution=solution, tests=solution_tests, mode="test", required=required, **common)


def _same(a: str, b: str) -> bool:
    """Two test modules are the same program (comments and layout aside)."""
    return [t.text for t in tokens(a)] == [t.text for t in tokens(b)]


def split_tests(source: str, name: str | None = None) -> tuple[str, str]:
    """Split `#[cfg(test)] mod <name> { ... }` out of a source file: (code without it, the module)."""
    try:
        return split_module(source, name)
    except RustSourceError as e:
        raise KoanError(f"cannot read the #[cfg(test)] module: {e}") from None

