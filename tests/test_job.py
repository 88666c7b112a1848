"""The run context (sleepy/job.py) in process: baselines only from this run or a named one, memory scoped to the run,
pre-flight checks before any run or model call, signals handed back; composed with Hydra's compose API."""

import signal

import pytest
from conftest import ROOT

from sleepy.config import register
from sleepy.experiment import run
from sleepy.job import Job
from sleepy.koans import load_pack
from sleepy.testing.scripted_llm import Script, ScriptedLLMServer, Step

PACK = load_pack()
K1, K2, K3 = PACK.select("type_mismatch", "eval", count=3)


def fix(code):
    return Step(reply=f"```rust\n{code}\n```")


def compose(tmp_path, *overrides, server=None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    model = [f"model.api_base={server.url}/v1", "model=openai", "model.name=scripted", "model.retries=0"] if server else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[
            "stage=eval", "koans=type_mismatch", "koans.count=3", "agent.max_attempts=2", "experiment_name=job",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"episodes.uri={tmp_path}/episodes",
            f"adapters_dir={tmp_path}/adapters", *model, *overrides])


def mlflow_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("job")
    return [] if exp is None else client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


CYCLE0 = {K1.title: [fix(K1.solution)], K2.title: [fix(K2.code)], K3.title: [fix(K3.code), fix(K3.solution)]}
CYCLE1 = {K1.title: [fix(K1.code)], K2.title: [fix(K2.code)], K3.title: [fix(K3.solution)]}


def two_runs(tmp_path, *second):
    """Run A attempts the eval koans at cycle 0; run B (fresh) at cycle 1. B's run."""
    with ScriptedLLMServer(Script(CYCLE0)) as server:
        run(compose(tmp_path, "cycle=0", server=server))
    with ScriptedLLMServer(Script(CYCLE1)) as server:
        run(compose(tmp_path, "cycle=1", *second, server=server))
    return mlflow_runs(tmp_path)


def test_a_fresh_run_borrows_no_earlier_cycle_from_another_run(tmp_path):
    """Before: run B's cycle-1 metrics compared against run A's cycle 0 (the latest run of the experiment)."""
    _, b = two_runs(tmp_path)
    metrics = b.data.metrics
    assert metrics["eval/pass_rate"] == pytest.approx(1 / 3)
    for key in ("repeat_error_rate", "persistent_failure_rate", "regressions", "mcnemar_p"):
        assert f"eval/{key}" not in metrics


def test_a_named_baseline_run_is_compared_with_and_logged(tmp_path):
    a_id = two_runs(tmp_path)[0].info.run_id
    with ScriptedLLMServer(Script(CYCLE1)) as server:
        run(compose(tmp_path, "cycle=1", f"baseline_run_id={a_id}", server=server))
    c = mlflow_runs(tmp_path)[-1]
    assert c.data.metrics["eval/repeat_error_rate"] == 1.0  # K2 failed at A's cycle 0 and fails again, same error
    assert c.data.metrics["eval/regressions"] == 1.0 and c.data.metrics["eval/mcnemar_p"] == 1.0
    assert c.data.params["baseline_run_id"] == a_id == c.data.tags["sleepy.baseline_run_id"]


def test_a_baseline_run_of_other_koans_is_left_out_with_a_warning(tmp_path, capsys):
    a_id = two_runs(tmp_path)[0].info.run_id
    with ScriptedLLMServer(Script(CYCLE1)) as server:
        run(compose(tmp_path, "cycle=1", "koans.count=2", f"baseline_run_id={a_id}", server=server))
    assert "eval/mcnemar_p" not in mlflow_runs(tmp_path)[-1].data.metrics
    assert f"baseline_run_id={a_id} attempted other eval koans" in capsys.readouterr().err


def test_a_baseline_run_the_store_does_not_hold_is_refused_before_the_run(tmp_path):
    with pytest.raises(ValueError, match="baseline_run_id=nope: the episode store .* holds no episode"):
        with Job(compose(tmp_path, "baseline_run_id=nope")):
            pass
    assert mlflow_runs(tmp_path) == []


def test_memory_recalls_this_runs_earlier_days_and_no_other_runs(tmp_path):
    a, b = PACK.select("borrow_checker", "train", count=2)
    memory = ("stage=day", "koans=borrow_checker", "koans.count=2", "agent.prompt=memory")
    with ScriptedLLMServer(Script({a.title: [fix(a.code), fix(a.solution)], b.title: [fix(b.solution)]})) as server:
        run(compose(tmp_path, *memory, "cycle=1", server=server))  # run A fixes a at its second attempt
    a_id = mlflow_runs(tmp_path)[0].info.run_id
    shown = a.solution.strip().splitlines()[0]

    def prompts(*overrides):
        with ScriptedLLMServer(Script({a.title: [fix(a.code)], b.title: [fix(b.solution)]})) as server:
            run(compose(tmp_path, *memory, *overrides, server=server))
            return [e["body"]["messages"][-1]["content"] for e in server.log]

    fresh = prompts("cycle=2")  # a fresh run: another run's fixes are not its memory
    assert fresh and not any("Similar errors fixed before" in p for p in fresh)
    own = prompts("cycle=2", f"run_id={a_id}")  # run A's own day 2 remembers its day 1
    assert any("Similar errors fixed before" in p and shown in p for p in own)
    named = prompts("cycle=3", f"memory.source={a_id}")  # a fresh run that names A as its memory
    assert any(shown in p for p in named)
    last = mlflow_runs(tmp_path)[-1]
    assert last.data.tags["sleepy.memory.source"] == a_id
    inputs = {(i.dataset.name, tuple((t.key, t.value) for t in i.tags)) for i in last.inputs.dataset_inputs}
    assert (f"episodes/{a_id}", (("mlflow.data.context", "memory"),)) in inputs  # A's episodes are an input


def test_the_full_text_index_is_built_only_for_the_memory_strategy(tmp_path):
    import lancedb

    with ScriptedLLMServer(Script({K1.title: [fix(K1.code)]})) as server:
        run(compose(tmp_path, "koans.count=1", "stage=day", "koans=borrow_checker", server=server))
        assert lancedb.connect(tmp_path / "episodes").open_table("episodes").list_indices() == []
        run(compose(tmp_path, "koans.count=1", "stage=day", "koans=borrow_checker", "agent.prompt=memory",
                    server=server))
    assert [i.columns for i in lancedb.connect(tmp_path / "episodes").open_table("episodes").list_indices()] == \
        [["diagnostics"]]


def test_the_sigterm_handler_is_handed_back(tmp_path):
    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with Job(compose(tmp_path)) as job:
            assert signal.getsignal(signal.SIGTERM) is not mine  # a SIGTERM now ends the run as KILLED
            assert job.status == "FAILED"
        assert signal.getsignal(signal.SIGTERM) is mine
        assert mlflow_runs(tmp_path)[0].info.status == "FINISHED"
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_episode_store_that_cannot_be_written_is_refused_before_the_run(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError) as err:
        Job(compose(tmp_path, f"episodes.uri={tmp_path}/file/episodes")).__enter__()
    assert str(err.value).startswith("episodes.uri: cannot write to") and "\n" not in str(err.value)
    assert not (tmp_path / "mlflow.db").exists()


def test_an_mlflow_store_that_cannot_be_written_is_refused_before_the_run(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match="^tracking.uri: cannot write to"):
        Job(compose(tmp_path, f"tracking.uri=sqlite:///{tmp_path}/file/mlflow.db")).__enter__()


@pytest.mark.parametrize("override", ["sandbox.limits.run_memory_mb=1", "sandbox.limits.compile_memory_mb=1",
])
def test_sandbox_settings_that_fail_a_koans_own_solution_are_refused_before_any_model_call(tmp_path, override):
    with ScriptedLLMServer(Script({K1.title: [fix(K1.solution)]})) as server:
        with pytest.raises(ValueError, match="sandbox pre-flight: the solution of koan"):
            Job(compose(tmp_path, override, server=server)).__enter__()
        assert server.log == []
    assert mlflow_runs(tmp_path) == []


def test_the_run_name_says_what_runs():
    from types import SimpleNamespace

    from sleepy.tracking import run_name

    assert run_name(SimpleNamespace(stage="cycle", cycle=0, cycles=3)) == "cycles3"
    assert run_name(SimpleNamespace(stage="eval", cycle=2, cycles=3)) == "eval2"


def test_history_reads_this_runs_cycles_first_and_the_baseline_runs_only_where_this_run_has_none(tmp_path):
    from sleepy.episodes import Episode, EpisodeStore
    from sleepy.history import History

    store = EpisodeStore(tmp_path / "episodes")
    for run_id, cycles in (("mine", (1, 2)), ("base", (0, 1)), ("other", (0,))):
        for cycle in cycles:
            store.add_koan([Episode(run_id=run_id, experiment="x", cycle=cycle, stage="eval", koan_id=k.id,
                                    family=k.family, split="eval", attempt=1, model="m") for k in (K1, K2)])
    koans = {"eval": [K1, K2]}
    mine = History(store, "mine", "base", koans.get, max_attempts=1)
    assert set(mine.earlier("eval", 1)["run_id"]) == {"mine"}
    assert set(mine.earlier("eval", 0)["run_id"]) == {"base"}  # this run has no cycle 0: the named baseline's
    assert set(mine.baseline("eval", 2)["cycle"]) == {1} and set(mine.baseline("eval", 2)["run_id"]) == {"mine"}
    assert set(mine.baseline("eval", 1)["cycle"]) == {0} and set(mine.baseline("eval", 1)["run_id"]) == {"base"}
    alone = History(store, "mine", None, koans.get, max_attempts=1)
    assert alone.earlier("eval", 0) is None and alone.baseline("eval", 1) is None  # never "other", never "base"
    fewer = History(store, "mine", "base", {"eval": [K1]}.get, max_attempts=1)
    assert fewer.earlier("eval", 0) is None  # the baseline attempted other koans
