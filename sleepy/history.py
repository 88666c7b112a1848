"""What a run attempted before: its own episodes by stage and cycle, and, named and logged, a baseline run's.

A metric that compares a cycle with an earlier one gets the earlier cycle here and only here: from this run, or
from the run `baseline_run_id` names when that run attempted the same koans; otherwise the metric is absent. Nothing
is borrowed from "the latest run of the experiment".
"""

from __future__ import annotations

from collections.abc import Callable


class History:
    """Episodes of `run_id` (and of `baseline_run_id`) in the episode store, as the stages' metrics need them."""

    def __init__(self, store, run_id: str, baseline_run_id: str | None, koans: Callable[[str], list], max_attempts: int):
        """koans(stage): the koans this run attempts at a stage, which a baseline run must have attempted too."""
        self.store, self.run_id, self.baseline_run_id = store, run_id, baseline_run_id
        self.koans, self.max_attempts = koans, max_attempts
        self._warned: set[str] = set()

    def episodes(self, stage: str, cycle: int):
        """This run's episodes of (stage, cycle)."""
        return self.store.frame(run_id=self.run_id, stage=stage, cycle=cycle)

    def passed(self, stage: str, cycle: int) -> set[str]:
        """The koans this run passed at (stage, cycle)."""
        from sleepy.metrics import koan_outcomes

        episodes = self.episodes(stage, cycle)
        return set(koan_outcomes(episodes, self.max_attempts).filter("passed")["koan_id"]) if episodes.height else set()

    def earlier(self, stage: str, cycle: int):
        """This run's episodes of (stage, cycle), else the baseline run's, else None."""
        own = self.episodes(stage, cycle)
        return own if own.height else self._baseline_run(stage, cycle)

    def baseline(self, stage: str, cycle: int):
        """The stage's first cycle before `cycle`: this run's, else the baseline run's first; None when there is none."""
        mine = self.store.frame(run_id=self.run_id, stage=stage)
        first = mine.filter(mine["cycle"] < cycle)["cycle"].min()
        return mine.filter(mine["cycle"] == first) if first is not None else self._baseline_run(stage, None)

    def _baseline_run(self, stage: str, cycle: int | None):
        """baseline_run_id's episodes of (stage, cycle) (cycle None: its first), if it attempted the same koans."""
        run = self.baseline_run_id
        theirs = self.store.frame(run_id=run, stage=stage) if run else None
        if theirs is None or theirs.is_empty():
            return None
        theirs = theirs.filter(theirs["cycle"] == (theirs["cycle"].min() if cycle is None else cycle))
        koans = {k.id for k in self.koans(stage)} if stage != "recall" else set(theirs["koan_id"])
        if set(theirs["koan_id"]) != koans:
            if stage not in self._warned:
                from sleepy.console import warn

                self._warned.add(stage)
                warn(f"baseline_run_id={run} attempted other {stage} koans than this run: the metrics against it are "
                     "left out")
            return None
        return theirs if theirs.height else None

    def outcomes_after(self, night: int):
        """Koan outcomes on the train koans with night `night`'s model (0: the base model): its recall, else the next
        day's (which the same adapter served)."""
        import polars as pl

        from sleepy.metrics import koan_outcomes

        frames = [self.episodes("recall", night), self.episodes("day", night + 1)]
        outcomes = [koan_outcomes(f, self.max_attempts).select("koan_id", "passed") for f in frames if f.height]
        if not outcomes:
            return pl.DataFrame(schema={"koan_id": pl.String, "passed": pl.Boolean})
        return pl.concat(outcomes).unique("koan_id", keep="first", maintain_order=True)
