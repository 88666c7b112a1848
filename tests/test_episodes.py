"""The LanceDB episode store: atomic per-koan writes, resume after SIGKILL, versions, full-text search."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sleepy.episodes import Episode, EpisodeStore


def attempts(koan, n, passed_at=None, run_id="r1", cycle=1, stage="day", sig="E0382: borrow of moved value"):
    return [Episode(run_id=run_id, experiment="x", cycle=cycle, stage=stage, koan_id=koan, family="borrow_checker",
                    split="train", attempt=a, model="tiny", passed=a == passed_at,
                    signature="" if a == passed_at else sig, diagnostics="error[E0382]: borrow of moved value: `v`",
                    error_codes=[] if a == passed_at else ["E0382"]) for a in range(1, n + 1)]


def test_rows_round_trip_with_their_types(tmp_path):
    store = EpisodeStore(tmp_path / "ep")
    store.add_koan(attempts("k1", 3, passed_at=3))
    df = store.frame(run_id="r1")
    assert df.height == 3 and df["attempt"].to_list() == [1, 2, 3]
    assert df["passed"].to_list() == [False, False, True]
    assert df["error_codes"].to_list()[0] == ["E0382"]
    assert store.finished("r1", "day", 1) == {"k1"} and store.finished("r1", "eval", 1) == set()


def test_each_write_is_a_version_that_can_be_read_again(tmp_path):
    store = EpisodeStore(tmp_path / "ep")
    v1 = store.add_koan(attempts("k1", 1, passed_at=1))
    v2 = store.add_koan(attempts("k2", 2))
    assert v2 > v1
    assert store.frame(version=v1)["koan_id"].to_list() == ["k1"]
    assert sorted(set(store.frame()["koan_id"])) == ["k1", "k2"]


def test_full_text_search_on_diagnostics(tmp_path):
    store = EpisodeStore(tmp_path / "ep")
    store.add_koan(attempts("k1", 2, passed_at=2))
    other = attempts("k2", 1)
    other[0].diagnostics = "error[E0308]: mismatched types: expected `i32`, found `&str`"
    store.add_koan(other)
    store.index_diagnostics()
    hits = store.search_diagnostics("mismatched types", limit=5)
    assert hits["koan_id"].to_list()[0] == "k2"


WRITER = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{root!r}, {root!r} + "/tests"]
    from test_episodes import attempts
    from sleepy.episodes import EpisodeStore
    store = EpisodeStore({uri!r})
    done = store.finished("r1", "day", 1)
    for i in range(12):
        koan = f"k{{i:02d}}"
        if koan in done:
            continue
        store.add_koan(attempts(koan, 3, passed_at=(i % 3) + 1))
        print(koan, flush=True)
        time.sleep({pause})
""")


def test_sigkill_mid_stage_then_resume_loses_and_duplicates_nothing(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    uri = str(tmp_path / "ep")
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=root, uri=uri, pause=0.15)],
                            stdout=subprocess.PIPE, text=True)
    written = [proc.stdout.readline().strip() for _ in range(4)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = EpisodeStore(uri).finished("r1", "day", 1)
    assert set(written) <= before and len(before) < 12
    subprocess.run([sys.executable, "-c", WRITER.format(root=root, uri=uri, pause=0)], check=True,
                   capture_output=True)
    df = EpisodeStore(uri).frame(run_id="r1", stage="day", cycle=1)
    assert sorted(set(df["koan_id"])) == [f"k{i:02d}" for i in range(12)]
    assert df.height == 12 * 3
    assert df.group_by(["koan_id", "attempt"]).len()["len"].max() == 1


@pytest.mark.slow
def test_four_concurrent_writers_lose_nothing(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    uri = str(tmp_path / "ep")
    EpisodeStore(uri)
    script = textwrap.dedent("""
        import sys
        sys.path[:0] = [{root!r}, {root!r} + "/tests"]
        from test_episodes import attempts
        from sleepy.episodes import EpisodeStore
        store = EpisodeStore({uri!r})
        for i in range(10):
            store.add_koan(attempts(f"k{{i}}", 2, run_id=sys.argv[1]))
    """).format(root=root, uri=uri)
    procs = [subprocess.Popen([sys.executable, "-c", script, f"run{j}"]) for j in range(4)]
    start = time.time()
    assert all(p.wait(timeout=300) == 0 for p in procs), time.time() - start
    df = EpisodeStore(uri).frame()
    assert df.height == 4 * 10 * 2
    assert df.group_by("run_id").len()["len"].to_list() == [20, 20, 20, 20]


def test_parallel_jobs_writing_and_indexing_one_table_all_succeed(tmp_path):
    """A joblib sweep's jobs share one episode table and each rebuilds the full-text index after its
    day: Lance refuses all but one of simultaneous index commits. No job may fail for that, no row may
    be lost, and every job's rows stay searchable."""
    import threading

    uri = tmp_path / "ep"
    EpisodeStore(uri)
    errors = []

    def job(j):
        store = EpisodeStore(uri)
        for i in range(6):
            try:
                episodes = attempts(f"k{i}", 1, run_id=f"run{j}")
                episodes[0].diagnostics = f"error[E0382]: borrow of moved value: `job{j}`"
                store.add_koan(episodes)
                store.index_diagnostics()
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))

    threads = [threading.Thread(target=job, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = EpisodeStore(uri)
    assert store.frame().group_by("run_id").len()["len"].sort().to_list() == [6, 6, 6, 6]
    for j in range(4):
        assert set(store.search_diagnostics(f"job{j}", limit=50)["run_id"]) == {f"run{j}"}


def test_a_store_written_before_the_flaky_column_opens_and_keeps_its_rows(tmp_path):
    import lancedb
    import pyarrow as pa

    from sleepy.episodes import schema

    old = pa.schema([f for f in schema() if f.name != "flaky"])
    row = {f.name: None for f in old} | dict(run_id="old", experiment="e", cycle=0, stage="day", koan_id="k",
                                             family="f", split="train", attempt=1, model="m", sample=0, passed=True)
    lancedb.connect(str(tmp_path)).create_table("episodes", schema=old).add(pa.Table.from_pylist([row], schema=old))
    store = EpisodeStore(tmp_path)
    store.add_koan([Episode("new", "e", 0, "day", "k2", "f", "train", 1, "m", flaky=True)])
    df = store.frame()
    assert df.select("run_id", "flaky", "passed").rows() == [("old", False, True), ("new", True, False)]
