"""The episode store: one LanceDB row per attempt, written a koan at a time, read back as polars.

A koan's attempts land in one commit, so after a crash a koan is either wholly recorded or not at
all, and `finished()` tells a resumed stage which koans to skip. Every write returns the table
version, which a night records so the episodes that trained an adapter can always be read again.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TABLE = "episodes"
DIAGNOSTICS_CHARS = 4000
ADDED_COLUMNS = {"flaky": "false"}  # columns newer than some stores, with the SQL value old rows get


@dataclass
class Episode:
    """One attempt at one koan."""

    run_id: str
    experiment: str
    cycle: int
    stage: str
    koan_id: str
    family: str
    split: str
    attempt: int
    model: str
    adapter: str = ""
    sample: int = 0
    prompt: str = ""
    response: str = ""
    code: str = ""
    compiled: bool = False
    tests_passed: bool = False
    passed: bool = False
    reason: str = ""
    flaky: bool = False  # the judge's repeated runs disagreed (sandbox.runs > 1)
    error_codes: list[str] = field(default_factory=list)
    signature: str = ""
    diagnostics: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    judge_ms: float = 0.0
    seed: int = 0
    temperature: float = 0.0
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


def schema():
    import pyarrow as pa

    types = {
        "run_id": pa.string(), "experiment": pa.string(), "cycle": pa.int32(), "stage": pa.string(),
        "koan_id": pa.string(), "family": pa.string(), "split": pa.string(), "attempt": pa.int32(),
        "model": pa.string(), "adapter": pa.string(), "sample": pa.int32(), "prompt": pa.string(),
        "response": pa.string(), "code": pa.string(), "compiled": pa.bool_(), "tests_passed": pa.bool_(),
        "passed": pa.bool_(), "reason": pa.string(), "flaky": pa.bool_(), "error_codes": pa.list_(pa.string()),
        "signature": pa.string(), "diagnostics": pa.string(), "tokens_in": pa.int32(), "tokens_out": pa.int32(),
        "latency_ms": pa.float64(), "judge_ms": pa.float64(), "seed": pa.int64(), "temperature": pa.float64(),
        "created_at": pa.timestamp("us", tz="UTC"),
    }
    missing = set(Episode.__dataclass_fields__) ^ set(types)
    assert not missing, f"episode schema and Episode disagree on {missing}"
    return pa.schema([(name, types[name]) for name in Episode.__dataclass_fields__])


def literal(value) -> str:
    """A SQL literal for a filter value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


class EpisodeStore:
    """The `episodes` table of a LanceDB directory (created on first use)."""

    def __init__(self, uri: str | Path, retries: int = 8):
        import lancedb

        self.uri = str(uri)
        self.retries = retries
        Path(self.uri).mkdir(parents=True, exist_ok=True)
        self._db = lancedb.connect(self.uri)
        try:
            self._table = self._db.create_table(TABLE, schema=schema(), exist_ok=True)
        except ValueError as e:  # a store written by an earlier sleepy: its rows get the new columns' defaults
            if "schema" not in str(e).lower():
                raise
            self._table = self._db.open_table(TABLE)
            missing = {k: v for k, v in ADDED_COLUMNS.items() if k not in self._table.schema.names}
            self._commit("add columns", lambda: self._table.add_columns(missing), done_by="AddColumns")

    def add_koan(self, episodes: list[Episode]) -> int:
        """Write all attempts of one or more koans in one commit; returns the new table version."""
        import pyarrow as pa

        if not episodes:
            return self.version()
        rows = []
        for e in episodes:
            row = asdict(e)
            row["diagnostics"] = row["diagnostics"][:DIAGNOSTICS_CHARS]
            rows.append(row)
        table = pa.Table.from_pylist(rows, schema=schema())
        self._commit("write episodes", lambda: self._table.add(table))
        return self.version()

    def _commit(self, what: str, write, done_by: str | None = None) -> None:
        """Run one write; another job committing to the same table at the same moment makes Lance
        refuse it as a retryable conflict, so back off (with jitter, so the jobs fall out of step)
        and try again. A conflict with a concurrent `done_by` transaction means the other job did
        this very work: nothing is left to do."""
        for attempt in range(self.retries):
            try:
                write()
                return
            except (OSError, RuntimeError) as e:
                if done_by and f"concurrent transaction {done_by}" in str(e):
                    return
                if attempt == self.retries - 1:
                    raise RuntimeError(f"episode store {self.uri}: could not {what} after {self.retries} tries: {e}") \
                        from e
                time.sleep(0.05 * 2**attempt * (1 + random.random()))

    def version(self) -> int:
        self._table.checkout_latest()
        return int(self._table.version)

    def frame(self, version: int | None = None, **where):
        """Episodes as a polars DataFrame, filtered by equality on columns (run_id=..., stage=...)."""
        import polars as pl

        self._table.checkout_latest()
        if version is not None:
            self._table.checkout(version)
        try:
            query = self._table.search()
            clauses = [f"{k} = {literal(v)}" for k, v in where.items() if v is not None]
            if clauses:
                query = query.where(" AND ".join(clauses))
            arrow = query.limit(None).to_arrow()
        finally:
            self._table.checkout_latest()
        return pl.from_arrow(arrow).sort(["cycle", "koan_id", "sample", "attempt"]) if arrow.num_rows else \
            pl.DataFrame(schema=pl.from_arrow(schema().empty_table()).schema)

    def finished(self, run_id: str, stage: str, cycle: int) -> set[str]:
        """Koans already recorded for this run, stage and cycle: a resumed stage skips them."""
        df = self.frame(run_id=run_id, stage=stage, cycle=cycle)
        return set(df["koan_id"].to_list())

    def index_diagnostics(self) -> None:
        """(Re)build the full-text index on diagnostics, used to retrieve similar past episodes.
        When parallel jobs index at once, the index committed first stands; rows it does not cover
        are still searched (unindexed rows are scanned) until the next index."""
        from lancedb.index import FTS

        self._commit("index diagnostics",
                     lambda: self._table.create_index("diagnostics", config=FTS(), replace=True), done_by="CreateIndex")

    def search_diagnostics(self, text: str, limit: int = 5, where: str | None = None):
        """Episodes whose diagnostics best match text (full-text), among those `where` (SQL) selects, as polars."""
        import polars as pl

        query = self._table.search(text, query_type="fts")
        if where:
            query = query.where(where, prefilter=True)
        return pl.from_arrow(query.limit(limit).to_arrow())
