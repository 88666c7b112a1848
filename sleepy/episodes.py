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

from sleepy.stores import StoreError, store_errors

TABLE = "episodes"
DIAGNOSTICS_CHARS = 4000
ADDED_COLUMNS = {"flaky": "false", "truncated": "false"}  # columns newer than some stores, with the SQL value old rows get


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
    truncated: bool = False  # the reply was longer than agent.max_reply_chars: `response` holds its start
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
        "response": pa.string(), "truncated": pa.bool_(), "code": pa.string(), "compiled": pa.bool_(),
        "tests_passed": pa.bool_(),
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
        with store_errors("episode", self.uri, "opened"):
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
                with store_errors("episode", self.uri, f"written ({what})"):
                    write()
                return
            except StoreError as e:
                if done_by and f"concurrent transaction {done_by}" in str(e):
                    return
                if attempt == self.retries - 1 or not any(w in str(e).lower() for w in ("conflict", "contention")):
                    raise  # a damaged store, not another job's commit: one line, at once
                time.sleep(0.05 * 2**attempt * (1 + random.random()))

    def check(self) -> int:
        """Read every data file of the store once (one small column): a damaged store is found before a job starts
        a run on it. The number of episodes."""
        with store_errors("episode", self.uri, "read"):
            self._table.checkout_latest()
            return self._table.search().select(["attempt"]).limit(None).to_arrow().num_rows

    def version(self) -> int:
        with store_errors("episode", self.uri, "read"):
            self._table.checkout_latest()
            return int(self._table.version)

    def frame(self, version: int | None = None, **where):
        """Episodes as a polars DataFrame, filtered by equality on columns (run_id=..., stage=...)."""
        import polars as pl

        with store_errors("episode", self.uri, "read"):
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
        """Koans this run finished at (stage, cycle): passed, or used their attempts on real replies. A resumed
        stage skips them; a koan recorded with a failed model call is attempted again (see `forget`)."""
        import polars as pl

        df = self.frame(run_id=run_id, stage=stage, cycle=cycle)
        per_koan = df.group_by("koan_id").agg(pl.col("passed").any(), (pl.col("reason") == "model_error").any()
                                              .alias("model_error"))
        return set(per_koan.filter(pl.col("passed") | ~pl.col("model_error"))["koan_id"].to_list())

    def recorded(self, run_id: str, stage: str, cycle: int) -> set[str]:
        """Koans with any episode of this run at (stage, cycle)."""
        return set(self.frame(run_id=run_id, stage=stage, cycle=cycle)["koan_id"].to_list())

    def forget(self, run_id: str, stage: str, cycle: int, koan_id: str) -> None:
        """Delete a koan's episodes of this run at (stage, cycle), before it is attempted again."""
        where = " AND ".join(f"{k} = {literal(v)}" for k, v in
                             {"run_id": run_id, "stage": stage, "cycle": cycle, "koan_id": koan_id}.items())
        self._commit("delete episodes", lambda: self._table.delete(where))

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
