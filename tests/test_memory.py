"""The memory strategy recalls this run's earlier fixes (or, named, another run's), loaded once per stage."""

from sleepy.episodes import Episode, EpisodeStore
from sleepy.memory import Memory

DIAGNOSTICS = "error[E0382]: borrow of moved value: `v`"


def fixed(run_id, koan, cycle, stage="day", split="train"):
    """A koan that failed once with DIAGNOSTICS, then passed with code naming its run, koan and cycle."""
    common = dict(run_id=run_id, experiment="x", cycle=cycle, stage=stage, koan_id=koan, family="borrow_checker",
                  split=split, model="m")
    return [Episode(**common, attempt=1, diagnostics=DIAGNOSTICS, signature="E0382"),
            Episode(**common, attempt=2, passed=True, code=f"// fix {run_id} {koan} {cycle}\n")]


def store_with(tmp_path, *koans):
    store = EpisodeStore(tmp_path / "episodes")
    for episodes in koans:
        store.add_koan(episodes)
    return store


def recalled(memory):
    return sorted(code for _, code in memory(DIAGNOSTICS))


def test_only_this_runs_earlier_days_are_recalled(tmp_path):
    store = store_with(tmp_path, fixed("mine", "a", 1), fixed("mine", "b", 2), fixed("other", "c", 1),
                       fixed("mine", "d", 1, stage="eval", split="eval"))
    assert recalled(Memory(store, "mine", before=2, k=5)) == ["// fix mine a 1\n"]
    assert recalled(Memory(store, "mine", before=3, k=5)) == ["// fix mine a 1\n", "// fix mine b 2\n"]
    assert recalled(Memory(store, "fresh", before=5, k=5)) == []  # a new run remembers nothing of others


def test_a_named_source_run_is_recalled_too(tmp_path):
    store = store_with(tmp_path, fixed("mine", "a", 1), fixed("other", "c", 4), fixed("third", "e", 1))
    assert recalled(Memory(store, "mine", before=2, k=5, source="other")) == ["// fix mine a 1\n", "// fix other c 4\n"]


def test_at_most_k_fixes_and_each_once(tmp_path):
    store = store_with(tmp_path, *(fixed("mine", koan, 1) for koan in "abcd"))
    fixes = Memory(store, "mine", before=2, k=3)(DIAGNOSTICS)
    assert len(fixes) == 3 and len({code for _, code in fixes}) == 3
    assert all(diagnostics == DIAGNOSTICS for diagnostics, _ in fixes)


def test_the_fixes_are_loaded_once_per_stage(tmp_path):
    store = store_with(tmp_path, fixed("mine", "a", 1))
    memory = Memory(store, "mine", before=3, k=5)
    store.add_koan(fixed("mine", "b", 2))  # written after the stage began: not this stage's memory
    assert recalled(memory) == ["// fix mine a 1\n"]
