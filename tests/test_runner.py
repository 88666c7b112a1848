"""python -m sleepy: Hydra composes conf/ with the koans and sandbox groups."""

import pytest
from conftest import run_cli


def test_help_lists_the_config_groups():
    rc, out, _ = run_cli("-m", "sleepy", "--help")
    assert rc == 0
    assert "koans: all, borrow_checker" in out and "sandbox: default" in out


def test_cfg_job_prints_the_composed_config():
    rc, out, _ = run_cli("-m", "sleepy", "--cfg", "job", "koans=lifetimes", "koans.split=eval")
    assert rc == 0
    assert "families:\n  - lifetimes" in out and "split: eval" in out and "isolation: auto" in out


def test_a_mistyped_key_is_named():
    rc, _, err = run_cli("-m", "sleepy", "koans.familes=[x]")
    assert rc == 2 and "unknown config key 'koans.familes'" in err
    assert "valid: count, external_split, families, pack, packs, split" in err


def test_a_bad_choice_names_the_key_and_the_valid_options():
    rc, _, err = run_cli("-m", "sleepy", "sandbox.isolation=docker")
    assert rc == 2 and "sandbox.isolation" in err and "bwrap" in err and "Traceback" not in err


def test_verify_stage_judges_the_selected_koans(tmp_path):
    rc, out, err = run_cli("-m", "sleepy", "koans=type_mismatch", "koans.split=eval", "koans.count=2",
                           f"hydra.run.dir={tmp_path}/run")
    assert rc == 0, err
    assert "2/2 koans verified" in out


def test_unknown_family_in_config_is_a_clear_error(tmp_path):
    rc, _, err = run_cli("-m", "sleepy", "koans.families=[borrowing]", f"hydra.run.dir={tmp_path}/run")
    assert rc == 2 and "unknown family 'borrowing'" in err and "Traceback" not in err


@pytest.mark.slow
def test_verify_stage_judges_every_builtin_koan_from_a_cold_cache(tmp_path, builtin):
    """`python -m sleepy` alone: every builtin koan judged afresh, exit 0."""
    rc, out, err = run_cli("-m", "sleepy", f"hydra.run.dir={tmp_path}/run",
                           env_extra={"SLEEPY_CACHE_DIR": str(tmp_path / "cache")}, timeout=900)
    assert rc == 0, err
    n = len(builtin.koans)
    assert f"{n}/{n} koans verified, 0 failed, 0 skipped (isolation: " in out
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()


@pytest.mark.slow
def test_main_job_smoke_experiment_runs_offline(tmp_path):
    """The README's main job: eval 0, then 2 x [day -> night -> eval] on the tiny model, all in MLflow."""
    from mlflow.tracking import MlflowClient

    rc, out, err = run_cli("-m", "sleepy", "+experiment=smoke", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                           f"episodes.uri={tmp_path}/episodes", f"adapters_dir={tmp_path}/adapters",
                           f"hydra.run.dir={tmp_path}/run",
                           env_extra={"SLEEPY_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert rc == 0, err[-3000:]
    assert "experiment smoke" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.info.status == "FINISHED"
    steps = {key: sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
             for key in ("eval/pass_rate", "day/pass_rate", "night/examples")}
    assert steps == {"eval/pass_rate": [0, 1, 2], "day/pass_rate": [1, 2], "night/examples": [1, 2]}
    assert (tmp_path / "adapters" / run.info.run_id / "cycle2" / "adapter_model.safetensors").exists()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapters")}
    assert artifacts == {"adapters/cycle1", "adapters/cycle2"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def night_refused(tmp_path, cache, *overrides):
    """Run a cycle that must be refused before any koan is attempted; its stderr."""
    rc, _, err = run_cli("-m", "sleepy", "stage=cycle", *overrides, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                         f"episodes.uri={tmp_path}/episodes", f"adapters_dir={tmp_path}/adapters",
                         f"hydra.run.dir={tmp_path}/run", env_extra={"SLEEPY_CACHE_DIR": str(cache)})
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    from sleepy.episodes import EpisodeStore

    assert EpisodeStore(tmp_path / "episodes").frame().height == 0  # refused before the first koan
    return err


def test_a_bad_subspace_choice_names_the_valid_ones():
    rc, _, err = run_cli("-m", "sleepy", "subspace.method=lora")
    assert rc == 2 and "subspace.method" in err and "none, share, uwsh" in err
    rc, _, err = run_cli("-m", "sleepy", "+experiment=share_lora", "subspace.route=koan")
    assert rc == 2 and "subspace.route" in err and "mean, family" in err


def test_a_subspace_without_its_k_rule_is_refused_at_start(tmp_path, cache):
    err = night_refused(tmp_path, cache, "subspace=share", "subspace.k=null")
    assert "exactly one of subspace.k and subspace.explained_variance" in err


def test_uwsh_without_source_adapters_is_refused_at_start(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    err = night_refused(tmp_path, cache, "subspace=uwsh", f"subspace.source={tmp_path}/empty")
    assert f"subspace.source={tmp_path}/empty: no peft LoRA adapter there" in err


def test_unsloth_without_a_gpu_is_refused_at_start(tmp_path, cache):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    err = night_refused(tmp_path, cache, "night.trainer=unsloth")
    assert "night.trainer=unsloth needs a CUDA GPU" in err
