"""Structured-config schemas: every config group is validated against these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

from sleepy.sandbox.judge import SandboxLimits

STAGES = ("verify", "day", "eval")


@dataclass
class KoansConfig:
    pack: str | None = None  # None: the builtin pack; else a TOML pack or a rustlings checkout
    families: list[str] | None = None  # None: every family of the pack
    split: str | None = None  # train | eval | None (both)
    count: int | None = None  # at most this many koans per family


@dataclass
class SandboxConfig:
    edition: str = "2024"
    isolation: str = "auto"  # auto | bwrap | netns | none
    jobs: int | None = None  # None: one per core
    cache: bool = True
    limits: SandboxLimits = field(default_factory=SandboxLimits)


@dataclass
class ModelConfig:
    backend: str = "tiny"  # tiny | hf | litellm
    name: str = "tiny"  # recorded with every episode; the served model's name for litellm
    provider: str | None = None  # litellm: openai | ollama | vllm
    path: str | None = None  # hf: a local directory or a hub id (offline: must be in the local cache)
    api_base: str | None = None
    api_key: str | None = None
    concurrency: int = 8  # litellm: requests in flight
    timeout_s: float = 120.0  # litellm: per call
    retries: int = 3  # litellm: retries with exponential backoff
    cache_dir: str | None = None  # litellm: replay identical requests from this directory
    batch_size: int = 8  # hf/tiny: prompts per generate call
    device: str = "auto"  # hf/tiny: auto | cpu | cuda
    dtype: str = "auto"  # hf/tiny: auto | float32 | bfloat16 | float16


@dataclass
class AgentConfig:
    max_attempts: int = 3
    temperature: float = 0.2
    max_tokens: int = 1024
    samples: int = 1  # > 1: independent attempt chains per koan, for pass@k
    history: bool = False  # show earlier failed attempts in the prompt
    prompt: str = "plain"  # plain | explain | memory
    memory_k: int = 3  # memory: successful past episodes shown


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: sqlite:///<repo>/mlruns/mlflow.db
    artifact_root: str | None = None  # None: <repo>/mlruns/artifacts for the local store


@dataclass
class EpisodesConfig:
    uri: str | None = None  # LanceDB directory; None: <repo>/mlruns/episodes


@dataclass
class Config:
    koans: KoansConfig = field(default_factory=KoansConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    episodes: EpisodesConfig = field(default_factory=EpisodesConfig)
    stage: str = "verify"
    seed: int = 0
    cycle: int = 0
    run_id: str | None = None  # an MLflow run id to resume; None: a new run
    experiment_name: str = "sleepy"


CHOICES = {
    "stage": STAGES,
    "koans.split": (None, "train", "eval"),
    "sandbox.isolation": ("auto", "bwrap", "netns", "none"),
    "model.backend": ("tiny", "hf", "litellm"),
    "model.provider": (None, "openai", "ollama", "vllm"),
    "agent.prompt": ("plain", "explain", "memory"),
}


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="sleepy_schema", node=Config)


def check_choices(cfg) -> None:
    """Raise ValueError naming the key and the valid options when a value is not one of them."""
    from omegaconf import OmegaConf

    for key, valid in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in valid:
            shown = ", ".join("null" if v is None else str(v) for v in valid)
            raise ValueError(f"config key '{key}' is {value!r}; valid: {shown}")
