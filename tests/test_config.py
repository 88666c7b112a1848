"""Config: every experiment composes with Hydra's compose API, and bad settings are refused at compose time, all at
once, one line each naming the key and what is valid, before any run is created."""

from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from sleepy.config import check, register

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_checks_clean(experiment):
    cfg = compose(f"+experiment={experiment}")
    assert check(cfg) == []
    assert cfg.experiment_name == experiment  # an experiment names its MLflow experiment


def test_the_experiments_are_the_documented_ones():
    assert EXPERIMENTS == ["baseline", "lora", "memory", "replay", "share_lora", "smoke", "uwsh"]


BAD = [
    ("agent.max_attempts=0", "agent.max_attempts", ">= 1"),
    ("agent.max_attempts=-1", "agent.max_attempts", ">= 1"),
    ("agent.samples=0", "agent.samples", ">= 1"),
    ("koans.count=0", "koans.count", ">= 1 or null"),
    ("koans.count=-1", "koans.count", ">= 1 or null"),
    ("sandbox.limits.run_s=0", "sandbox.limits.run_s", "> 0"),
    ("sandbox.limits.run_s=-1", "sandbox.limits.run_s", "> 0"),
    ("sandbox.edition=2099", "sandbox.edition", "2015, 2018, 2021, 2024"),
    ("model.concurrency=0", "model.concurrency", ">= 1 or null"),
    ("model.timeout_s=0", "model.timeout_s", "> 0 or null"),
    ("model.timeout_base_s=-1", "model.timeout_base_s", "> 0"),
    ("model.min_tokens_per_s=0", "model.min_tokens_per_s", "> 0"),
    ("agent.max_tokens=0", "agent.max_tokens", ">= 1"),
    ("agent.prompt=clever", "agent.prompt", "plain, explain, memory"),
    ("night.targets=[self,oracle]", "night.targets", "self, teacher, reference"),
    ("subspace.explained_variance=1.5", "subspace.explained_variance", "<= 1"),
    ("lora.dropout=1.0", "lora.dropout", "< 1"),
]


@pytest.mark.parametrize("override,key,valid", BAD, ids=[b[0] for b in BAD])
def test_a_bad_setting_is_one_line_naming_the_key_and_what_is_valid(override, key, valid):
    errors = check(compose(override))
    assert len(errors) == 1, errors
    assert f"config key '{key}' is " in errors[0] and "valid: " in errors[0] and valid in errors[0]
    assert "\n" not in errors[0]


def test_every_bad_setting_is_reported_at_once():
    errors = check(compose("agent.max_attempts=0", "agent.samples=0", "model.concurrency=0", "sandbox.edition=2099",
                           "sandbox.limits.run_memory_mb=0"))
    assert sorted(e.split("'")[1] for e in errors) == ["agent.max_attempts", "agent.samples", "model.concurrency",
                                                       "sandbox.edition", "sandbox.limits.run_memory_mb"]


def test_the_rules_that_tie_keys_together():
    (error,) = check(compose("+experiment=uwsh", "subspace.phi=2"))
    assert "subspace.phi" in error and "uwsh" in error
    (error,) = check(compose("subspace=share", "subspace.k=null"))
    assert "subspace.k" in error and "subspace.explained_variance" in error
    (error,) = check(compose("subspace=share", "night.trainer=unsloth"))
    assert "night.trainer" in error and "peft" in error
    (error,) = check(compose("model.backend=litellm"))
    assert "model.provider" in error
    (error,) = check(compose("model=llamacpp", "model.stream=true"))
    assert "config key 'model.stream' is true with model.backend=llamacpp; valid: false" in error


def test_a_missing_mandatory_value_is_named():
    (error,) = check(compose("koans=rustlings"))
    assert "config key 'koans.pack' has no value" in error


@pytest.mark.parametrize("model", ["openai", "vllm", "ollama", "llamacpp"])
def test_served_models_size_concurrency_and_timeout_from_the_server_and_max_tokens(model):
    cfg = compose(f"model={model}", "model.name=m", "model.api_base=http://h/v1")
    assert check(cfg) == [] and cfg.model.concurrency is None and cfg.model.timeout_s is None
    assert cfg.model.min_tokens_per_s > 0 and cfg.model.stream is False


def test_edition_from_the_command_line_is_a_string():
    cfg = compose("sandbox.edition=2021")
    assert cfg.sandbox.edition == "2021" and check(cfg) == []


def test_bad_settings_stop_the_cli_before_any_run_or_store_exists(tmp_path):
    rc, _, err = run_cli("-m", "sleepy", "stage=eval", "agent.max_attempts=0", "agent.samples=0", "koans.count=-1",
                         "sandbox.limits.run_s=0", "sandbox.edition=2099", "model.concurrency=0", "agent.max_tokens=0",
                         f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"episodes.uri={tmp_path}/episodes",
                         f"hydra.run.dir={tmp_path}/run", timeout=120)
    assert rc == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    for key in ("agent.max_attempts", "agent.samples", "koans.count", "sandbox.limits.run_s", "sandbox.edition",
                "model.concurrency", "agent.max_tokens"):
        assert sum(f"'{key}'" in line for line in lines) == 1, (key, err)
    assert len(lines) == 7 and all(line.startswith("sleepy: error: config key") for line in lines)
    assert not Path(tmp_path / "mlflow.db").exists() and not Path(tmp_path / "episodes").exists()
