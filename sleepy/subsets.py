"""Eval results per pack and subset, each with its n and the minimum detectable effect.

The rows: all eval koans; each pack (builtin, forged, rustc_errors, rustlings, ...); within a pack, the
koans whose expected error codes some train koan also expects (`seen_codes`) and those with a code no
train koan has (`unseen_codes`); in the error-code pack, the codes from E0700 on (newer, less likely in
a model's training data). Koans of a check-mode pack (the error-code pack) have no tests: a pass there
means "compiles with no error", and their rows say so.
"""

from __future__ import annotations

import math

from sleepy.koans.families import NEW_CODES_FROM, is_new
from sleepy.koans.model import CHECK_MODE, check_mode

PREFIX = "subset"


def groups(koans) -> dict[str, list]:
    """Row name -> the eval koans in it; a row the same as the one above it (a single pack) is left out."""
    evals = [k for k in koans if k.split == "eval"]
    seen = {c for k in koans if k.split == "train" for c in k.expected_errors}
    out = {"all": evals}
    packs = sorted({k.pack or "?" for k in evals})
    for pack in packs:
        mine = [k for k in evals if (k.pack or "?") == pack]
        if len(packs) > 1:
            out[pack] = mine
        subsets = {"seen_codes": [k for k in mine if set(k.expected_errors) <= seen],
                   "unseen_codes": [k for k in mine if not set(k.expected_errors) <= seen]} if seen else {}
        if check_mode(mine):
            subsets[f"from_{NEW_CODES_FROM}"] = [k for k in mine if any(is_new(c) for c in k.expected_errors)]
        out.update({f"{pack}/{name}": ks for name, ks in subsets.items() if ks and len(ks) < len(mine)})
    return out


def label(name: str, check: bool) -> str:
    return f"{name} ({CHECK_MODE})" if check else name


def rows(outcomes, koans, cycle: int, baseline_cycle: int = 0) -> list[dict]:
    """Per row: n, passed, pass rate with its Wilson 95% interval, the koans that changed against the baseline cycle
    (b: now pass, c: now fail) and the MDE at that discordance (McNemar exact; nan: none detectable, or no
    baseline yet), and the best-case MDE of n koans."""
    import polars as pl

    from sleepy.metrics import wilson
    from sleepy.power import best_mde, observed_mde

    now = outcomes.filter(pl.col("cycle") == cycle)
    base = outcomes.filter(pl.col("cycle") == baseline_cycle)
    out = []
    for name, members in groups(koans).items():
        ids = [k.id for k in members]
        mine = now.filter(pl.col("koan_id").is_in(ids))
        n, passed = mine.height, int(mine["passed"].sum()) if mine.height else 0
        if not n:
            continue
        p, lo, hi = wilson(passed, n)
        paired = base.filter(pl.col("koan_id").is_in(ids)).join(mine, on="koan_id", suffix="_now")
        compared = cycle != baseline_cycle and paired.height > 0
        b = paired.filter(~pl.col("passed") & pl.col("passed_now")).height if compared else 0
        c = paired.filter(pl.col("passed") & ~pl.col("passed_now")).height if compared else 0
        out.append({"subset": name, "check_mode": check_mode(members), "n": n, "passed": passed, "pass_rate": p,
                    "lo": lo, "hi": hi, "compared": compared, "gained": b, "lost": c,
                    "mde": observed_mde(paired.height, b, c) if compared else math.nan, "best_mde": best_mde(n)})
    return out


def as_mlflow(table: list[dict], stage: str = "eval") -> dict[str, float]:
    """`eval/subset/<row>/{n,pass_rate,discordant,mde,best_mde,check_mode}`, and the `all` row's as `eval/mde`,
    `eval/discordant`."""
    out: dict[str, float] = {}
    for r in table:
        key = f"{stage}/{PREFIX}/{r['subset']}"
        out.update({f"{key}/n": float(r["n"]), f"{key}/pass_rate": r["pass_rate"],
                    f"{key}/discordant": float(r["gained"] + r["lost"]), f"{key}/mde": r["mde"],
                    f"{key}/best_mde": r["best_mde"], f"{key}/check_mode": float(r["check_mode"])})
        if r["subset"] == "all":
            out[f"{stage}/mde"] = r["mde"]
            out[f"{stage}/discordant"] = float(r["gained"] + r["lost"])
    return out


def report(now, baseline, koans, cycle: int, max_attempts: int) -> tuple[dict[str, float], list[dict]]:
    """From a stage's episodes at `cycle` and the baseline cycle's (None: none): the MLflow metrics and the rows to
    print."""
    import polars as pl

    from sleepy.metrics import koan_outcomes

    frames = [(f, c) for f, c in ((now, cycle),) + (((baseline, 0),) if cycle else ()) if f is not None and f.height]
    if not frames:
        return {}, []
    outcomes = pl.concat([koan_outcomes(f, max_attempts).with_columns(pl.lit(c, pl.Int32).alias("cycle"))
                          for f, c in frames], how="vertical_relaxed")
    table = rows(outcomes, koans, cycle)
    return as_mlflow(table), table


def points(x: float) -> str:
    return "none" if x != x else f"{100 * x:.1f} pts"


def print_rows(table: list[dict], title: str) -> None:
    """The rows as a table: n, pass rate, changed against the baseline, minimum detectable effect."""
    from rich.console import Console
    from rich.table import Table

    from sleepy.console import show

    def pct(x):
        return "-" if x != x else f"{100 * x:.0f}%"

    t = Table(title=title, caption="MDE: the smallest change in pass rate McNemar's exact test detects (alpha 0.05, "
                                   "power 0.8) at the observed share of changed koans; best: if every change went "
                                   "one way")
    for col in ("pack / subset", "n", "pass rate (95% CI)", "changed vs cycle 0 (+/-)", "MDE", "best MDE"):
        t.add_column(col, justify="left" if col == "pack / subset" else "right")
    for r in table:
        changed = f"{r['gained'] + r['lost']} (+{r['gained']}/-{r['lost']})" if r["compared"] else "-"
        t.add_row(label(r["subset"], r["check_mode"]), str(r["n"]), f"{pct(r['pass_rate'])} [{pct(r['lo'])}, "
                  f"{pct(r['hi'])}]", changed, points(r["mde"]) if r["compared"] else "-", points(r["best_mde"]))
    show(t, width=max(Console().width, 120))
