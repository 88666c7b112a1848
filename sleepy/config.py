"""Structured-config schemas: every config group is validated against these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

from sleepy.sandbox.judge import SandboxLimits

STAGES = ("verify", "day", "eval", "cycle")


@dataclass
class KoansConfig:
    pack: str | None = None  # None: builtin; a name (builtin, rustc_errors, forged) or a TOML pack / rustlings checkout
    packs: list[str] | None = None  # several packs at once (names or paths), instead of `pack`
    external_split: str = "eval"  # the split of packs without their own (rustlings, rustc_errors): held out by default
    families: list[str] | None = None  # None: every family of the pack
    split: str | None = None  # train | eval | None (both)
    count: int | None = None  # at most this many koans per family


@dataclass
class SandboxConfig:
    edition: str = "2024"
    isolation: str = "auto"  # auto | bwrap | netns | none
    jobs: int | None = None  # None: one per core
    cache: bool = True  # compile results (deterministic); run outcomes are never cached
    runs: int = 1  # test runs per judgement: a pass needs every run to pass; runs that disagree mark it flaky
    limits: SandboxLimits = field(default_factory=SandboxLimits)


@dataclass
class ModelConfig:
    backend: str = "tiny"  # tiny | hf | litellm | llamacpp
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
    dtype: str = "auto"  # hf/tiny: auto | float32 | bfloat16 | float16; llamacpp: the night's dequantized weights
    gguf: str | None = None  # llamacpp: a GGUF file, or a model fetched by `sleepy-models get NAME` (its name)
    threads: int = 1  # llamacpp: generation threads (more than the free cores thrash llama.cpp's spin barriers)
    threads_batch: int | None = None  # llamacpp: prompt-processing threads; None: threads
    n_ctx: int = 8192  # llamacpp: context size in tokens (prompt + reply)


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
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])
    mode: str = "new"  # new: a fresh adapter on every night's examples so far; continue: keep training the last one


@dataclass
class TeacherConfig:
    provider: str | None = None  # openai | ollama | vllm: a served model for `teacher` targets
    name: str | None = None
    api_base: str | None = None
    api_key: str | None = None


@dataclass
class NightConfig:
    enabled: bool = True  # false: no training (e.g. the memory experiment)
    targets: list[str] = field(default_factory=lambda: ["self", "reference"])  # tried in this order per koan
    self_samples: int = 4  # self: samples drawn per failed koan (rejection sampling)
    self_temperature: float = 0.8
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    replay: float = 0.0  # earlier successes mixed in, as a fraction of the night's new examples
    steps: int = 100
    lr: float = 2e-4
    batch_size: int = 4
    max_length: int = 4096
    trainer: str = "peft"  # peft (CPU or GPU) | unsloth (the gpu extra, CUDA only) | auto: unsloth when it can


@dataclass
class SubspaceConfig:
    method: str = "none"  # none: plain LoRA | share: bases that follow the tasks | uwsh: a fixed basis from `source`
    k: int | None = 16  # basis columns per module and side (or null and explained_variance)
    explained_variance: float | None = None  # the smallest k that keeps this share of the adapters' variance
    phi: int = 0  # share: temporary directions per side trained with the coefficients, folded in by the merge
    route: str = "mean"  # mean: one task per night, averaged coefficients | family: one task per koan family
    source: str | None = None  # uwsh: a directory searched for peft LoRA adapters; None: earlier runs' (adapters_dir)


@dataclass
class Config:
    koans: KoansConfig = field(default_factory=KoansConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    episodes: EpisodesConfig = field(default_factory=EpisodesConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    night: NightConfig = field(default_factory=NightConfig)
    subspace: SubspaceConfig = field(default_factory=SubspaceConfig)
    stage: str = "verify"
    cycles: int = 2  # stage=cycle: day/night/eval rounds after the cycle-0 baseline eval
    adapters_dir: str | None = None  # where nights save adapters (<dir>/<run id>/cycle<N>); None: mlruns/adapters
    seed: int = 0
    cycle: int = 0
    run_id: str | None = None  # an MLflow run id to resume; None: a new run
    experiment_name: str = "sleepy"


CHOICES = {
    "stage": STAGES,
    "koans.split": (None, "train", "eval"),
    "koans.external_split": ("eval", "train"),
    "sandbox.isolation": ("auto", "bwrap", "netns", "none"),
    "model.backend": ("tiny", "hf", "litellm", "llamacpp"),
    "model.provider": (None, "openai", "ollama", "vllm"),
    "agent.prompt": ("plain", "explain", "memory"),
    "lora.mode": ("new", "continue"),
    "night.trainer": ("peft", "unsloth", "auto"),
    "subspace.method": ("none", "share", "uwsh"),
    "subspace.route": ("mean", "family"),
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


def check_override_keys(args: list[str], groups: set[str]) -> str | None:
    """The first command-line override whose key is not in the schema, as an error naming the valid keys."""
    import dataclasses

    for arg in args:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        key = arg.split("=", 1)[0]
        if key in groups or "/" in key:
            continue
        node, path = Config, []
        for part in key.split("."):
            fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else None
            if fields is None:
                break
            if part not in fields:
                where = ".".join(path) or "the top level"
                return (f"unknown config key '{key}': '{part}' is not a key of {where} "
                        f"(valid: {', '.join(sorted(fields))})")
            path.append(part)
            kind = fields[part].default_factory if fields[part].default_factory is not dataclasses.MISSING else None
            node = kind if isinstance(kind, type) else None
    return None
