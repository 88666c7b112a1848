"""The frozen eval split: koans/eval.lock holds a content hash per eval koan."""

from __future__ import annotations

from pathlib import Path

from sleepy.koans.model import Koan, KoanError, relpath

LOCK_FILE = "eval.lock"
HEADER = ("# sleepy eval lock: sha256 of every eval koan's content. The eval split is frozen:\n"
          "# any change to an eval koan fails until this file is regenerated on purpose\n"
          "# with `sleepy-koans lock`.\n")


def render(koans: list[Koan], note: str = "") -> str:
    lines = sorted(f"{k.content_hash()}  {k.id}" for k in koans if k.split == "eval")
    noted = "".join(f"# {line}\n" for line in note.splitlines())
    return HEADER + noted + "\n".join(lines) + "\n"


def digest(koans: list[Koan]) -> str:
    """A short hash of exactly these koans: of their lock lines (`<content hash>  <id>`, sorted) as eval.lock holds
    them for eval koans, so a whole eval split's digest is the hash of its lock's lines."""
    import hashlib

    lines = "\n".join(sorted(f"{k.content_hash()}  {k.id}" for k in koans))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()[:16]


def write(koans: list[Koan], path: Path, note: str = "") -> int:
    """Write the lock for the eval koans (`note`: comment lines saying what they were made from); returns how
    many it holds."""
    path.write_text(render(koans, note), encoding="utf-8")
    return sum(k.split == "eval" for k in koans)


def read(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KoanError(f"{relpath(path)}: missing; the eval split must be frozen (run `sleepy-koans lock`)") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise KoanError(f"{relpath(path)}:{n}: malformed line (expected '<sha256>  <koan id>')")
        out[parts[1]] = parts[0]
    return out


def check(koans: list[Koan], path: Path) -> None:
    """Raise KoanError unless every eval koan matches the lock and the lock names no other koan."""
    locked = read(path)
    evals = {k.id: k for k in koans if k.split == "eval"}
    changed = [k for i, k in evals.items() if i in locked and locked[i] != k.content_hash()]
    if changed:
        ids = ", ".join(f"{k.source or k.id}" for k in changed)
        raise KoanError(f"{relpath(path)}: eval koan changed since the lock was written: {ids} "
                        "(the eval split is frozen; if the change is deliberate, run `sleepy-koans lock`)")
    added = sorted(set(evals) - set(locked))
    if added:
        raise KoanError(f"{relpath(path)}: eval koan not in the lock: {', '.join(added)} "
                        "(run `sleepy-koans lock` to freeze it)")
    gone = sorted(set(locked) - set(evals))
    if gone:
        raise KoanError(f"{relpath(path)}: locked eval koan missing from the pack: {', '.join(gone)}")
