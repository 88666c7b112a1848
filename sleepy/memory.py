"""Memory: the `memory` strategy's recall of earlier fixes, scoped to this run.

A fix is a train koan's failing diagnostics and the code that then passed, from this run's days before the stage
(and, named and logged, from the run `memory.source` names). The fixes are loaded once per stage; each prompt asks
the episode store's full-text index on diagnostics for the failures most like its own among them. No other run,
experiment or parallel seed is ever read.
"""

from __future__ import annotations

from sleepy.episodes import literal


class Memory:
    """diagnostics -> up to k (diagnostics, fix) pairs from the remembered days, most similar first."""

    def __init__(self, store, run_id: str, before: int, k: int, source: str | None = None):
        """Remember the passed train episodes of run_id's days before cycle `before`, and every day of `source`."""
        self.store, self.k = store, k
        scope = f"(run_id = {literal(run_id)} AND cycle < {int(before)})"
        if source:
            scope += f" OR run_id = {literal(source)}"
        self.where = f"stage = 'day' AND split = 'train' AND ({scope})"
        store.index_diagnostics()  # only a memory stage needs the index
        wins = store.frame(stage="day", split="train", passed=True)
        wins = wins.filter(((wins["run_id"] == run_id) & (wins["cycle"] < before)) | (wins["run_id"] == (source or "")))
        self.fixes = {(r["run_id"], r["koan_id"], r["cycle"], r["sample"]): r["code"] for r in wins.iter_rows(named=True)}

    def __call__(self, diagnostics: str) -> list[tuple[str, str]]:
        if not self.fixes:
            return []
        hits = self.store.search_diagnostics(diagnostics[:500], limit=self.k * 4, where=self.where)
        out, seen = [], set()
        for row in hits.iter_rows(named=True):
            key = (row["run_id"], row["koan_id"], row["cycle"], row["sample"])
            if key in self.fixes and key not in seen:
                seen.add(key)
                out.append((row["diagnostics"], self.fixes[key]))
            if len(out) == self.k:
                break
        return out
