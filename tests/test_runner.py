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


def test_shell_completion_is_hydras():
    """Hydra's own flags and their words pass sleepy's key check untouched."""
    rc, out, err = run_cli("-m", "sleepy", "-sc", "install=bash")
    assert rc == 0, err
    assert "hydra_bash_completion()" in out and "complete -o nospace -o default -F hydra_bash_completion" in out
    rc, out, err = run_cli("-m", "sleepy", "-sc", "query=bash", env_extra={"COMP_LINE": "sleepy model=",
                                                                            "COMP_POINT": "13"})
    assert rc == 0, err
    assert "model=tiny" in out.split() and "model=ollama" in out.split()


def test_hydras_flags_with_values_are_not_taken_for_config_keys():
    rc, out, err = run_cli("-m", "sleepy", "--cfg", "job", "--package", "agent", "agent.max_attempts=2")
    assert rc == 0, err
    assert "# @package agent" in out and "max_attempts: 2" in out
    rc, out, err = run_cli("-m", "sleepy", "--info", "searchpath")
    assert rc == 0 and "file://" in out, err
    rc, _, err = run_cli("-m", "sleepy", "-c", "job", "-p", "koans", "koans.familes=[x]")  # the overrides still are
    assert rc == 2 and "unknown config key 'koans.familes'" in err


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


def test_the_job_log_holds_the_runs_progress_and_summaries(tmp_path):
    """Hydra's job log (<hydra.run.dir>/__main__.log) gets what the run printed, through the `sleepy` logger."""
    rc, out, err = run_cli("-m", "sleepy", "stage=eval", "koans=borrow_checker", "koans.count=1", "agent.max_attempts=1",
                           "agent.max_tokens=16", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                           f"episodes.uri={tmp_path}/episodes", f"hydra.run.dir={tmp_path}/run")
    assert rc == 0, err[-3000:]
    log = (tmp_path / "run" / "__main__.log").read_text()
    assert "[sleepy][INFO] - eval 0: 1 koans attempted (0 kept from before), passed " in log
    assert "eval cycle 0, base model" in log and "eval cycle 0 by pack and subset" in log
    assert "eval cycle 0, base model" in out  # still printed, once
    assert out.count("eval cycle 0, base model") == 1 and "[sleepy]" not in out


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
def test_main_job_smoke_experiment_runs_offline_and_closes_the_loop(tmp_path):
    """The README's main job: eval 0, then 2 x [day -> night -> eval] on the tiny model, all in MLflow. Night 1
    memorises the reference fixes of the train koans day 1 failed, so day 2 passes them, and the run says what that
    does and does not show."""
    import re

    from mlflow.tracking import MlflowClient

    rc, out, err = run_cli("-m", "sleepy", "+experiment=smoke", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                           f"episodes.uri={tmp_path}/episodes", f"adapters_dir={tmp_path}/adapters",
                           f"hydra.run.dir={tmp_path}/run",
                           env_extra={"SLEEPY_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert rc == 0, err[-3000:]
    assert "experiment smoke" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    loop = re.search(r"The loop: night 1 trained on (\d+) failed train koans, and day 2 passed (\d+) of them", out)
    assert loop and int(loop.group(1)) == 2 and int(loop.group(2)) > 0, out[-3000:]
    assert "tiny random model memorising the train koans it was trained on" in out and "stay at chance" in out
    assert "2 new / 2" in out  # night 1's examples: new / all the nights' so far
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.info.status == "FINISHED"
    keys = ("eval/pass_rate", "day/pass_rate", "night/examples", "eval/persistent_failure_rate", "eval/mcnemar_p",
            "recall/pass_rate", "cl/bwt", "cl/forgetting", "cl/fwt")
    history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)} for key in keys}
    assert {key: sorted(h) for key, h in history.items()} == {
        "eval/pass_rate": [0, 1, 2], "day/pass_rate": [1, 2], "night/examples": [1, 2],
        "eval/persistent_failure_rate": [1, 2], "eval/mcnemar_p": [1, 2], "recall/pass_rate": [1, 2],
        "cl/bwt": [2], "cl/forgetting": [2], "cl/fwt": []}  # night 2 learned nothing new: no task 2 to transfer to
    assert history["day/pass_rate"][1] == 0 and history["day/pass_rate"][2] > 0  # the loop closed on the train koans
    assert history["recall/pass_rate"][1] > 0
    assert run.info.run_name == "experiment=smoke · cycles2"  # what differs, then the stage; no paths
    assert (tmp_path / "adapters" / run.info.run_id / "cycle1" / "adapter_model.safetensors").exists()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapters")}
    assert "adapters/cycle1" in artifacts
    log = (tmp_path / "run" / "__main__.log").read_text()
    assert "night 1: trained on 2 new examples (2 reference)" in log and "The loop: night 1" in log


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


def test_uwsh_with_temporary_directions_is_refused_at_start(tmp_path, cache):
    """uwsh's fixed basis would project trained temporary directions away (0.89 relative error before)."""
    err = night_refused(tmp_path, cache, "subspace=uwsh", "subspace.phi=1")
    assert "config key 'subspace.phi' is 1 with subspace.method=uwsh; valid: 0" in err


def test_a_subspace_without_its_k_rule_is_refused_at_start(tmp_path, cache):
    err = night_refused(tmp_path, cache, "subspace=share", "subspace.k=null")
    assert "'subspace.k' and 'subspace.explained_variance'" in err and "exactly one of them set" in err


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


@pytest.mark.slow
def test_a_non_editable_install_runs_anywhere_and_its_outputs_follow_the_working_directory(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "mlruns", "outputs", "multirun",
                                                             "__pycache__", "*.egg-info", "build", ".cache"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                        str(tmp_path / "site"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), SLEEPY_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "sleepy", "stage=day", "koans=lifetimes", "koans.count=1",
                        "agent.max_attempts=1", "agent.max_tokens=8"], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (elsewhere / "mlruns" / "mlflow.db").exists() and (elsewhere / "mlruns" / "episodes").is_dir()
    assert not (tmp_path / "site" / "mlruns").exists()
    r = subprocess.run([sys.executable, "-c", "import sleepy, sleepy.koans; print(sleepy.__file__, sleepy.koans.BUILTIN)"],
                       cwd=elsewhere, env=env, capture_output=True, text=True)
    site = tmp_path / "site" / "sleepy"
    assert r.stdout.split() == [str(site / "__init__.py"), str(site / "data" / "koans")]
