"""The rustc error-code pack: the installed toolchain's own documented erroneous and corrected examples.

The rust-docs component has a page per error code (`share/doc/rust/html/error_codes/E*.html`) whose
code blocks keep their rustdoc tags (`compile_fail,E0382`); `rustc --explain` prints the same text
without the tags or the hidden lines, and is the fallback when rust-docs is not installed. A koan per
active code: an erroneous example of that code as `code`, as `solution` the example on the same page
that is closest to it (by lines) and compiles, both checked with the installed rustc (the erroneous one
fails with its code, the solution compiles with no error). The koans have no tests: they are judged in
check mode, "compiles with no error". Family from the code (`families.family_of`, `other` for the rest).

The pack is made on first use and cached under the cache directory, keyed by the rustc version, the
edition and the source (docs or explain); it is frozen by its own lock, so it never changes under a
running study.
"""

from __future__ import annotations

import difflib
import html
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sleepy.koans.families import FAMILIES, OTHER, family_of, is_new
from sleepy.koans.model import CHECK_MODE, Koan, KoanError

NAME = "rustc_errors"
GENERATOR = "1"  # bump when the way koans are made changes: a new cache directory, a new pack
_BLOCK = re.compile(r'<pre[^>]*><code class="([^"]*)">(.*?)</code></pre>', re.S)
_TAG = re.compile(r"<[^>]+>")
_RETIRED = "no longer emitted"
_FENCE = re.compile(r"^```[ \t]*([\w,-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_NOT_RUST = {"text", "plain", "console", "sh", "bash", "toml", "json", "ignore"}


@dataclass(frozen=True)
class Example:
    text: str
    fails_with: frozenset[str]  # docs: the codes its `compile_fail` tag names; explain: unknown (empty)
    compiles: bool | None  # docs: untagged (True) or tagged compile_fail or ignore (False); explain: unknown (None)


@dataclass(frozen=True)
class Page:
    code: str
    title: str
    active: bool
    examples: tuple[Example, ...]


def docs_dir() -> Path:
    """Where rust-docs keeps the error-code pages of the installed toolchain."""
    from sleepy.sandbox.toolchain import sysroot

    return Path(sysroot()) / "share" / "doc" / "rust" / "html" / "error_codes"


def read_docs(root: Path) -> list[Page]:
    """Every error-code page of rust-docs, its examples with their tags."""
    pages = []
    for path in sorted(root.glob("E[0-9][0-9][0-9][0-9].html")):
        text = path.read_text(encoding="utf-8", errors="replace")
        main = text[text.find("<main"):text.find("</main>")]
        examples = []
        for classes, body in _BLOCK.findall(main):
            words = classes.split()
            lang = words[0].removeprefix("language-") if words else ""
            if lang in _NOT_RUST or "ignore" in words:
                continue
            code = html.unescape(_TAG.sub("", body))
            failing = "compile_fail" in words or lang == "compile_fail"
            examples.append(Example(code, frozenset(w for w in words if re.fullmatch(r"E\d{4}", w)), not failing))
        paragraph = re.search(r"<p>(.*?)</p>", main, re.S)
        pages.append(Page(path.stem, _first_sentence(html.unescape(_TAG.sub("", paragraph.group(1))) if paragraph
                                                     else ""), _RETIRED not in main, tuple(examples)))
    return pages


def read_explain(codes: list[str] | None = None, jobs: int = 8) -> list[Page]:
    """The pages `rustc --explain` prints (every code E0001-E0999 it knows, or `codes`): no tags, no hidden lines,
    so each example is wrapped in `fn main` the way rustdoc does and judged to find out what it is."""
    from sleepy.sandbox.toolchain import toolchain

    rustc = toolchain()[0]

    def explain(code: str) -> Page | None:
        done = subprocess.run([rustc, "--explain", code], capture_output=True, text=True)
        if done.returncode != 0 or not done.stdout.strip():
            return None
        text = done.stdout
        examples = tuple(Example(rustdoc_wrap(body), frozenset(), None) for lang, body in _FENCE.findall(text)
                         if not set(lang.split(",")) & _NOT_RUST)
        first = next((p for p in text.split("\n\n") if p.strip() and not p.startswith("#")), "")
        return Page(code, _first_sentence(first), _RETIRED not in text, examples)

    wanted = codes or [f"E{i:04d}" for i in range(1, 1000)]
    with ThreadPoolExecutor(jobs) as pool:
        return [p for p in pool.map(explain, wanted) if p is not None]


def rustdoc_wrap(code: str) -> str:
    """An example as rustdoc compiles it: crate attributes first, the rest in `fn main` unless it has one."""
    if re.search(r"\bfn\s+main\s*\(", code):
        return code
    lines = code.splitlines()
    attrs = [line for line in lines if line.lstrip().startswith("#![")]
    body = [line for line in lines if not line.lstrip().startswith("#![")]
    return "\n".join([*attrs, "#![allow(unused)]", "fn main() {", *body, "}"]) + "\n"


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text)[:200]


def build(pages: list[Page], sandbox) -> tuple[list[Koan], dict]:
    """Koans from the pages, every example judged with the installed rustc (check mode); and counts of what
    was found: pages, active codes, codes whose erroneous example fails with it, koans."""
    from sleepy.koans.generated import judge_all
    from sleepy.sandbox import Program

    active = [p for p in pages if p.active]
    candidates = [(p, e) for p in active for e in p.examples]
    verdicts = judge_all(sandbox, [Program(e.text, mode="check") for _, e in candidates])
    failing: dict[str, list[str]] = {}
    compiling: dict[str, list[str]] = {}
    for (page, example), v in zip(candidates, verdicts, strict=True):
        if example.compiles is not False and v.passed:
            compiling.setdefault(page.code, []).append(example.text)
        elif (example.compiles is None or page.code in example.fails_with) and page.code in v.error_codes:
            failing.setdefault(page.code, []).append(example.text)
    koans, changed = [], []
    for page in active:
        pair = _closest(failing.get(page.code, []), compiling.get(page.code, []))
        if pair is None:
            continue
        code, solution = pair
        changed.append(_changed_lines(code, solution))
        koans.append(Koan(id=page.code.lower(), family=family_of(page.code), split="eval",
                          title=page.title or f"Error {page.code}", code=code, solution=solution, tests="",
                          expected_errors=(page.code,), mode="check", pack=NAME))
    stats = {"pages": len(pages), "active_codes": len(active), "failing_codes": len(failing), "koans": len(koans),
             "codes_from_E0700": sum(is_new(k.expected_errors[0]) for k in koans),
             "median_changed_lines": statistics.median(changed) if changed else 0}
    return koans, stats


def _closest(failing: list[str], compiling: list[str]) -> tuple[str, str] | None:
    """The (erroneous, compiling) pair of examples with the most lines in common; the first such pair on ties."""
    best, best_ratio = None, -1.0
    for a in failing:
        for b in compiling:
            ratio = difflib.SequenceMatcher(None, a.splitlines(), b.splitlines(), autojunk=False).ratio()
            if ratio > best_ratio:
                best, best_ratio = (a, b), ratio
    return best


def _changed_lines(a: str, b: str) -> int:
    return sum(1 for line in difflib.ndiff(a.splitlines(), b.splitlines()) if line[:1] in "+-")


def source_pages(docs: Path | None = None, codes: list[str] | None = None) -> tuple[str, list[Page]]:
    """('docs', the rust-docs pages) or, when rust-docs is not installed, ('explain', `rustc --explain`'s)
    with a warning."""
    root = docs or docs_dir()
    if any(root.glob("E[0-9][0-9][0-9][0-9].html")):
        pages = read_docs(root)
        return "docs", [p for p in pages if codes is None or p.code in codes]
    print(f"warning: no rust-docs error-code pages in {root}: the {NAME} pack is built from `rustc --explain`, "
          "whose examples lack their compile_fail tags and hidden lines, so it holds fewer koans "
          "(`rustup component add rust-docs` for the full pack)", file=sys.stderr)
    return "explain", read_explain(codes)


def load(sandbox=None, docs: Path | None = None):
    """The pack for the installed toolchain: from the cache, else made now and cached."""
    from sleepy.koans.generated import load_or_make, pack_dir, toolchain_key
    from sleepy.sandbox import Sandbox

    sandbox = sandbox or Sandbox()
    source = "docs" if any((docs or docs_dir()).glob("E[0-9][0-9][0-9][0-9].html")) else "explain"
    root = pack_dir(NAME, f"{toolchain_key()}-edition{sandbox.edition}-{source}-v{GENERATOR}")
    return load_or_make(root, lambda out: make(out, sandbox, docs), f"the {NAME} koan pack from the installed toolchain")


def make(out: Path, sandbox, docs: Path | None = None, codes: list[str] | None = None) -> dict:
    """Make the pack at out from the toolchain's pages (only `codes`, when given): the counts `build` reports."""
    from sleepy.koans.generated import toolchain_line
    from sleepy.koans.pack import write_pack

    source, pages = source_pages(docs, codes)
    koans, stats = build(pages, sandbox)
    if not koans:
        raise KoanError(f"{NAME}: no erroneous example with a compiling counterpart in the {source} of the toolchain")
    families = dict(FAMILIES, **{OTHER: "every other error code"})
    used = {f: d for f, d in families.items() if any(k.family == f for k in koans)}
    meta = {"external": True, "mode": "check", "rustc": toolchain_line(), "edition": sandbox.edition, "source": source,
            **stats}
    write_pack(out, NAME, used, koans, meta, note=f"made by sleepy from the {source} of {toolchain_line()}, "
                                                   f"edition {sandbox.edition}; {CHECK_MODE}")
    return stats
