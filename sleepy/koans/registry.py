"""Which packs a run uses: each a name (builtin, rustc_errors, forged) or a path, one or several at once.

`builtin` is the repository's pack; `rustc_errors` the toolchain's error-code pack and `forged` the
forge's mutants of the builtin koans (seed 0), both made on first use and cached. Anything else is a
path: a TOML pack directory or a rustlings checkout.

Packs that come without a split of their own (a rustlings checkout, the error-code pack) are external:
every koan of theirs is held out for eval unless `external_split` says train. An exercise that passes
unsolved (rustlings' `skip_check_unsolved`) says nothing as an eval koan and is left out of the eval set.
Several packs load as one: koan ids must be unique across them, and each koan knows its pack. An external
eval koan whose program shares its shape with a train koan of another pack (`find_leaks`) is left out of
the eval set, as it would not be held out: rustlings' `lifetimes1` is the builtin train koan
`lt_menu_display_label` in small.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sleepy.koans.model import KoanError
from sleepy.koans.pack import Pack, load_pack

NAMED = ("builtin", "rustc_errors", "forged")
EXTERNAL_SPLITS = ("eval", "train")


def load_one(spec: str | None, sandbox=None, external_split: str = "eval", check_lock: bool = True) -> Pack:
    """One pack by name or path (None: builtin), external packs split as `external_split` says."""
    from sleepy.koans.rustlings import info_path

    if external_split not in EXTERNAL_SPLITS:
        raise KoanError(f"koans.external_split must be one of {', '.join(EXTERNAL_SPLITS)}; got {external_split!r}")
    if spec in (None, "", "builtin"):
        pack = load_pack(None, check_lock)
    elif spec == "rustc_errors":
        from sleepy.koans import error_codes

        pack = error_codes.load(sandbox)
    elif spec == "forged":
        from sleepy.koans import forge

        pack = forge.load_default(sandbox)
    elif "/" not in spec and not Path(spec).is_dir():  # a mistyped name; a path is judged by load_pack
        raise KoanError(f"koan pack '{spec}': neither a pack name ({', '.join(NAMED)}) nor a directory "
                        "(a TOML pack or a rustlings checkout)")
    else:
        pack = load_pack(spec, check_lock)
    pack.koans = [k if k.pack else replace(k, pack=pack.name) for k in pack.koans]
    if pack.meta.get("external") or info_path(pack.root):
        hold_out(pack, external_split)
    return pack


def hold_out(pack: Pack, split: str) -> None:
    """Give every koan of an external pack the split `split`; an eval set leaves out koans that pass unsolved."""
    passing = [k.id for k in pack.koans if not k.check_unsolved] if split == "eval" else []
    if passing:
        pack.notes.append(f"{pack.name}: left out of the eval set, passes unsolved: {', '.join(passing)}")
    pack.koans = [replace(k, split=split) for k in pack.koans if k.id not in passing]
    pack.meta["held_out"] = split == "eval"


def load_packs(specs: list[str | None], sandbox=None, external_split: str = "eval") -> Pack:
    """Several packs as one (one pack as itself): koan ids unique across them, families and notes merged."""
    packs = [load_one(s, sandbox, external_split) for s in (specs or [None])]
    if len(packs) == 1:
        return packs[0]
    owner: dict[str, str] = {}
    for p in packs:
        for k in p.koans:
            if k.id in owner:
                raise KoanError(f"koan id '{k.id}' is in two packs: {owner[k.id]} and {p.name} "
                                "(ids must be unique across koans.packs)")
            owner[k.id] = p.name
    families: dict[str, str] = {}
    for p in packs:
        for f, d in p.families.items():
            families.setdefault(f, d)
    koans, notes = [k for p in packs for k in p.koans], [n for p in packs for n in p.notes]
    held_out = {p.name for p in packs if p.meta.get("held_out")}
    if held_out and any(k.split == "train" for k in koans):
        from sleepy.koans.pack import find_leaks

        leaked: dict[str, str] = {}
        for e, t, _ in find_leaks(koans):
            if owner[e] in held_out:
                leaked.setdefault(e, t)
        for name in sorted({owner[e] for e in leaked}):
            shown = ", ".join(f"{e} (like {t})" for e, t in leaked.items() if owner[e] == name)
            notes.append(f"{name}: left out of the eval set, shares its shape with a train koan: {shown}")
        koans = [k for k in koans if k.id not in leaked]
    return Pack("+".join(p.name for p in packs), packs[0].root, koans, families, {"packs": [p.name for p in packs]},
                notes)


def load_configured(koans_cfg, sandbox=None) -> Pack:
    """The packs of the `koans` config group: `koans.packs` (several) or `koans.pack` (one)."""
    packs = list(koans_cfg.get("packs") or [])
    if packs and koans_cfg.get("pack"):
        raise KoanError("set koans.pack or koans.packs, not both "
                        f"(koans.pack={koans_cfg.get('pack')}, koans.packs={packs})")
    return load_packs(packs or [koans_cfg.get("pack")], sandbox, koans_cfg.get("external_split") or "eval")
