"""The forge: verified koans with tests, made by injecting compile errors into correct programs.

Sources are koans whose solution passes its tests (judged first). Every mutation of the catalogue
(`mutations.py`) is tried at every site of every source's solution; each distinct mutant is judged with
the source's tests (check mode: compiled with the tests, not run). A mutant is kept when it fails to
compile with error codes of its mutation's family alone (`families.accepts`). Of the kept mutants of one
source, in an order drawn from the seed: one per mutation and error signature (the first error's code
and message without names: the same mistake twice in one program is one koan), then at most
`per_family` per family. A forged koan's code is the
mutant, its solution, tests and split are its source's: a mutant of an eval koan is an eval koan, so the
forge cannot leak a held-out program into training.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sleepy.koans.families import FAMILIES, accepts
from sleepy.koans.model import Koan, KoanError, api, relpath
from sleepy.koans.mutations import CATALOGUE, Mutation, mutants
from sleepy.rust_source import RustSourceError, tokens

NAME = "forged"
GENERATOR = "1"  # bump when the forge or its catalogue changes: a new cache directory, a new pack
PER_FAMILY = 4
REPORT = "forge.json"


@dataclass
class _Candidate:
    source: Koan
    text: str
    offset: int
    mutations: list[Mutation] = field(default_factory=list)


def sources_of(koans: list[Koan]) -> list[Koan]:
    """The koans the forge can mutate: a solution with tests appended to it (not check, run or whole-file koans)."""
    return [k for k in koans if k.mode == "test" and k.tests and not k.required and not k.clippy]


def forge(koans: list[Koan], sandbox, seed: int = 0, per_family: int = PER_FAMILY,
          catalogue: list[Mutation] | None = None) -> tuple[list[Koan], dict]:
    """Forged koans from the koans' solutions, and what happened to every mutant (counts per mutation)."""
    from sleepy.koans.generated import judge_all
    from sleepy.sandbox import Program

    start = time.perf_counter()
    sources = sources_of(koans)
    verdicts = judge_all(sandbox, [k.program(k.solution) for k in sources])
    passing = [k for k, v in zip(sources, verdicts, strict=True) if v.passed]
    candidates: dict[tuple[str, ...], _Candidate] = {}
    sites: Counter = Counter()
    for k in passing:
        original = _normalized(k.solution)
        for m, text, offset in mutants(k.solution, catalogue):
            sites[m.name] += 1
            key = _normalized(text)
            if key == original:
                continue
            candidates.setdefault(key, _Candidate(k, text, offset)).mutations.append(m)
    judged = list(candidates.values())
    verdicts = judge_all(sandbox, [Program(c.text, c.source.tests, "check", api=api(c.source.solution))
                                   for c in judged])
    outcome: Counter = Counter()
    kept: dict[str, list[tuple[_Candidate, Mutation, object]]] = {}
    for c, v in zip(judged, verdicts, strict=True):
        m = next((m for m in c.mutations if not v.compiled and accepts(m.family, v.error_codes)), None)
        if m is None:
            outcome[c.mutations[0].name, "compiles" if v.compiled else "wrong_family"] += 1
            continue
        kept.setdefault(c.source.id, []).append((c, m, v))
    forged: list[Koan] = []
    for k in passing:
        chosen = sorted(kept.get(k.id, []), key=lambda x: (x[0].offset, x[1].name, x[0].text))
        random.Random(f"{seed}:{k.id}").shuffle(chosen)
        signatures: set[tuple[str, str]] = set()
        per: Counter = Counter()
        numbers: Counter = Counter()
        for c, m, v in chosen:
            if (m.name, v.signature) in signatures:
                outcome[m.name, "same_signature"] += 1
                continue
            signatures.add((m.name, v.signature))
            if per[m.family] >= per_family:
                outcome[m.name, "over_cap"] += 1
                continue
            per[m.family] += 1
            numbers[m.name] += 1
            outcome[m.name, "kept"] += 1
            forged.append(Koan(
                id=f"{k.id}_{m.name}_{numbers[m.name]}", family=m.family, split=k.split,
                title=f"Make `{_item_at(c.text, c.offset)}` compile again", code=c.text, solution=k.solution,
                tests=k.tests, expected_errors=tuple(v.error_codes), origin=k.id, mutation=m.name, pack=NAME))
    forged.sort(key=lambda x: (x.family, x.split, x.id))
    seconds = time.perf_counter() - start
    stats = {
        "sources": len(sources), "sources_passing": len(passing), "mutants": sum(sites.values()),
        "distinct_mutants": len(judged), "koans": len(forged), "seconds": round(seconds, 1),
        "koans_per_minute": round(60 * len(forged) / seconds, 1) if seconds else 0.0,
        "by_family_split": {f"{f}/{s}": n for (f, s), n in sorted(Counter((x.family, x.split) for x in forged).items())},
        "mutations": {m.name: {"family": m.family, "sites": sites[m.name],
                               **{what: outcome[m.name, what] for what in
                                  ("compiles", "wrong_family", "same_signature", "over_cap", "kept")}}
                      for m in (catalogue or CATALOGUE)},
    }
    return forged, stats


def _normalized(text: str) -> tuple[str, ...]:
    """A program without its comments and layout."""
    try:
        return tuple(t.text for t in tokens(text))
    except RustSourceError:
        return (text,)


def _item_at(text: str, offset: int) -> str:
    """The name of the item the edit at offset is in (or, for an attribute, the item after it)."""
    toks = tokens(text)
    best, after = None, None
    for i, t in enumerate(toks[:-1]):
        if t.text in ("fn", "struct", "enum", "trait", "impl", "mod") and (toks[i + 1].kind == "ident" or t.text == "impl"):
            name = _item_name(toks, i)
            if t.start <= offset and _item_end(toks, i) >= offset:
                best = name
            elif t.start > offset and after is None:
                after = name
    return best or after or "the program"


def _item_name(toks, i: int) -> str:
    if toks[i].text != "impl":
        return toks[i + 1].text
    words = []
    for t in toks[i:]:
        if t.text in ("{", "where"):
            break
        words.append(t.text)
    return " ".join(words).replace(" < ", "<").replace(" >", ">").replace("< ", "<").replace(" ,", ",")


def _item_end(toks, i: int) -> int:
    from sleepy.rust_source import matching

    for j in range(i, len(toks)):
        if toks[j].text == ";":
            return toks[j].end
        if toks[j].text == "{":
            try:
                return toks[matching(toks, j)].end
            except RustSourceError:
                return len(toks)
    return toks[-1].end


def make(out: Path, koans: list[Koan], sandbox, seed: int = 0, per_family: int = PER_FAMILY,
         source_name: str = "builtin") -> dict:
    """Forge koans from these and write them as a TOML pack at out (a new or empty directory), with its lock
    and forge.json (what became of every mutation's mutants)."""
    from sleepy.koans.generated import toolchain_line
    from sleepy.koans.pack import write_pack

    if out.exists() and any(out.iterdir()):
        raise KoanError(f"{relpath(out)}: exists and is not empty (the forge writes a new pack)")
    forged, stats = forge(koans, sandbox, seed, per_family)
    if not forged:
        raise KoanError(f"{source_name}: no mutant of its solutions failed with its family's errors alone")
    meta = {"seed": seed, "from": source_name, "per_family": per_family, "rustc": toolchain_line(),
            "edition": sandbox.edition, "koans": len(forged)}
    used = {f: d for f, d in FAMILIES.items() if any(k.family == f for k in forged)}
    write_pack(out, NAME, used, forged, meta, note=f"forged by sleepy from {source_name} with seed {seed} by "
                                                   f"{toolchain_line()}, edition {sandbox.edition}")
    (out / REPORT).write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    return stats


def load_default(sandbox=None):
    """The `forged` pack: the builtin koans forged with seed 0, made on first use and cached (keyed by the
    toolchain, the edition and the builtin koans' content)."""
    from sleepy.koans.generated import load_or_make, pack_dir, toolchain_key
    from sleepy.koans.pack import load_pack
    from sleepy.sandbox import Sandbox

    sandbox = sandbox or Sandbox()
    builtin = load_pack()
    digest = hashlib.sha256("".join(sorted(k.content_hash() for k in builtin.koans)).encode()).hexdigest()[:12]
    root = pack_dir(NAME, f"{toolchain_key()}-edition{sandbox.edition}-seed0-{builtin.name}-{digest}-v{GENERATOR}")
    return load_or_make(root, lambda out: make(out, builtin.koans, sandbox, 0, PER_FAMILY, builtin.name),
                        f"the {NAME} koan pack from the builtin koans")
