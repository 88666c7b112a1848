"""The Koan: a broken Rust program, its intended fix and the tests that pin its behaviour; the Pack: koans loaded
from one place, whatever its format."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPLITS = ("train", "eval")
CHECK_MODE = "check mode: compiles, no tests"  # what a pass of a check-mode koan means, wherever one is shown


class KoanError(Exception):
    """Bad koan input. The message is one line naming the file and the field or koan."""


@dataclass(frozen=True)
class Koan:
    id: str
    family: str
    split: str
    title: str
    code: str
    solution: str
    tests: str  # a complete Rust test module, appended verbatim to whatever code is judged
    expected_errors: tuple[str, ...] = ()
    hint: str = ""
    mode: str = "test"  # test: run the appended tests; run: build and run main, exit 0 = pass
    clippy: bool = False  # judged with clippy -D warnings
    check_unsolved: bool = True  # the broken code must fail (rustlings' skip_check_unsolved = false)
    source: str = ""  # the file it was loaded from, for error messages
    # Whole-file koans (a rustlings exercise whose TODO is inside its tests): the fix keeps its own test
    # module, which must still hold these tests and pass them; `tests` are the solution's, judged too
    # and never shown in the prompt.
    required: tuple[str, ...] = ()
    origin: str = ""  # a forged koan: the id of the koan whose solution was mutated
    mutation: str = ""  # a forged koan: the mutation that broke it
    pack: str = ""  # the name of the pack it was loaded from, for per-pack results

    def content_hash(self) -> str:
        """sha256 of everything that defines the koan (not where it was loaded from)."""
        fields = asdict(self)
        fields.pop("source")
        fields.pop("pack")
        for key in ("required", "origin", "mutation"):  # absent from koans written before they existed:
            if not fields[key]:  # their hashes stay
                fields.pop(key)
        blob = json.dumps(fields, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def program(self, code: str | None = None):
        """What the sandbox judges: `code` (default: the broken code) with this koan's tests, mode and lints."""
        from sleepy.sandbox import Program

        return Program(self.code if code is None else code, self.tests, self.mode, self.clippy, self.required,
                       api(self.solution), self.solution if self.mode == "run" else "")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["expected_errors"] = list(self.expected_errors)
        return d


def check_mode(koans) -> bool:
    """The koans are judged in check mode (compiled only: no tests), all of them."""
    koans = list(koans)
    return bool(koans) and all(k.mode == "check" for k in koans)


@functools.lru_cache(maxsize=4096)
def api(solution: str):
    """What a koan's solution gives its tests (its names, traits and std imports): all a fix may give them."""
    from sleepy.sandbox.harness import Api

    return Api.of(solution)


def wrap_tests(tests: str) -> str:
    """Put test functions into the module the sandbox appends: `mod koan_tests { use super::*; ... }`."""
    body = "\n".join("    " + line if line.strip() else "" for line in tests.strip("\n").splitlines())
    return f"#[cfg(test)]\nmod koan_tests {{\n    use super::*;\n\n{body}\n}}\n"


_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+|\S")
_KEYWORDS = set(
    "as break const continue crate else enum extern false fn for if impl in let loop match mod move mut "
    "pub ref return self Self static struct super trait true type unsafe use where while async await dyn "
    "Some None Ok Err Vec String Option Result Box HashMap str usize isize u8 u16 u32 u64 i8 i16 i32 i64 "
    "f32 f64 bool char".split()
)


def shape_tokens(code: str) -> list[str]:
    """Tokens of a program with comments removed and every name and number replaced by a placeholder,
    so that a renamed copy of a program has the same shape."""
    out = []
    for tok in _TOKEN.findall(_COMMENT.sub(" ", code)):
        if tok[0].isdigit():
            out.append("0")
        elif (tok[0].isalpha() or tok[0] == "_") and tok not in _KEYWORDS:
            out.append("x")
        else:
            out.append(tok)
    return out


def shape_similarity(a: str, b: str, n: int = 8) -> float:
    """Share of the smaller program's token n-grams (by shape) that also occur in the other."""
    ga, gb = shape_grams(a, n), shape_grams(b, n)
    if not ga or not gb:
        return 0.0
    return len(ga & gb) / min(len(ga), len(gb))


@functools.lru_cache(maxsize=8192)
def shape_grams(code: str, n: int = 8) -> frozenset[tuple[str, ...]]:
    """The token n-grams of a program's shape (see `shape_tokens`)."""
    tokens = shape_tokens(code)
    return frozenset(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def read_utf8(path: Path) -> str:
    """A file's text; a missing or non-UTF-8 file is one KoanError naming it."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise KoanError(f"{relpath(path)}: no such file") from None
    except UnicodeDecodeError as e:
        raise KoanError(f"{relpath(path)}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise KoanError(f"{relpath(path)}: cannot read ({e.strerror})") from None


def relpath(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_toml(path: Path) -> dict:
    """Parse a TOML file; any problem is one KoanError naming the file."""
    text = read_utf8(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise KoanError(f"{relpath(path)}: malformed TOML: {e}") from None


@dataclass
class Pack:
    name: str
    root: Path
    koans: list[Koan]
    families: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)  # pack.toml's other keys (how a generated pack was made)
    notes: list[str] = field(default_factory=list)  # what loading it left out, and why

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
