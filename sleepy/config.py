"""Structured-config schemas: every config group is checked against these dataclasses.

A field's type says what it may hold (`Literal[...]`: one of those values), its metadata says what it is
(`help`) and the range a number must lie in (`ge`, `gt`, `le`, `lt`). `check(cfg)` reports every bad value of a
composed config at once, one line each naming the key and what is valid, before anything runs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Literal

from sleepy.sandbox.judge import SandboxLimits

EDITIONS = ("2015", "2018", "2021", "2024")
RANGE = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def knob(default=None, help: str = "", *, factory=None, **bounds):
    """A config field: its default (or a factory for a mutable one), what it is, and its range (ge/gt/le/lt=...)."""
    metadata = {"help": help, **bounds}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class KoansConfig:
    # every option of the koans group sets it (null: the builtin pack); koans=rustlings leaves it to the user
    pack: str | None = knob("???", "a pack name (builtin, rustc_errors, forged), a TOML pack directory or a rustlings "
                            "checkout; null: the builtin pack")
    packs: list[str] | None = knob(None, "several packs at once (names or paths), instead of `pack`")
    external_split: Literal["eval", "train"] = knob(
        "eval", "the split of packs without their own (rustlings, rustc_errors): held out by default")
    families: list[str] | None = knob(None, "the families to select; null: every family of the pack")
    split: Literal["train", "eval"] | None = knob(None, "verify: only this split; null: both")
    count: int | None = knob(None, "at most this many koans per family; null: all", ge=1)


@dataclass
class SandboxConfig:
    edition: Literal["2015", "2018", "2021", "2024"] = knob("2024", "the Rust edition programs are compiled with")
    isolation: Literal["auto", "bwrap", "netns", "none"] = knob("auto", "auto: bwrap, else a network namespace, else none")
    jobs: int | None = knob(None, "programs judged at once; null: cores + 2", ge=1)
    cache: bool = knob(True, "reuse compile results cached by content hash (run outcomes are never cached)")
    runs: int = knob(1, "test runs per judgement: a pass needs every run to pass; runs that disagree mark it flaky",
                     ge=1)
    limits: SandboxLimits = knob(help="time, memory, process and output limits (each > 0)", factory=SandboxLimits)


@dataclass
class ModelConfig:
    backend: Literal["tiny", "hf", "litellm", "llamacpp"] = knob(
        "tiny", "tiny (offline) | hf (in process) | litellm (served) | llamacpp (a GGUF on a llama.cpp server)")
    name: str = knob("tiny", "recorded with every episode; the served model's name for litellm")
    provider: Literal["openai", "ollama", "vllm"] | None = knob(None, "litellm: the server's protocol")
    path: str | None = knob(None, "hf: a local directory or a hub id in the local cache; the night's base weights")
    api_base: str | None = knob(None, "litellm: the server's address; llamacpp: a server already running there")
    api_key: str | None = knob(None, "litellm: the key, if the server wants one")
    concurrency: int | None = knob(None, "litellm/llamacpp: requests in flight; null: what the server says it serves "
                                         "at once (llama.cpp /props), else a default per provider", ge=1)
    timeout_s: float | None = knob(None, "litellm/llamacpp: seconds per call; null: timeout_base_s + max_tokens / "
                                         "min_tokens_per_s", gt=0)
    timeout_base_s: float = knob(60.0, "litellm/llamacpp: a call's time before its first token (queue, prompt)", gt=0)
    min_tokens_per_s: float = knob(4.0, "litellm/llamacpp: the slowest generation that is not a timeout", gt=0)
    stream: bool = knob(False, "litellm: stream replies, so a server that stops an abandoned request only while "
                               "streaming (transformers serve) stops it; token counts: the server's, else litellm's count")
    retries: int = knob(3, "litellm/llamacpp: retries with exponential backoff (never after a timeout)", ge=0)
    cache_dir: str | None = knob(None, "litellm: replay identical requests from this directory")
    batch_size: int = knob(8, "hf/tiny: prompts per generate call", ge=1)
    device: str = knob("auto", "hf/tiny: auto | cpu | cuda[:N]")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = knob(
        "auto", "hf/tiny: the weights' dtype; llamacpp: the night's dequantized weights")
    gguf: str | None = knob(None, "llamacpp: a GGUF file, or a model fetched by `sleepy-models get NAME` (its name)")
    threads: int = knob(1, "llamacpp: generation threads (more than the free cores thrash llama.cpp's spin "
                           "barriers)", ge=1)
    threads_batch: int | None = knob(None, "llamacpp: prompt-processing threads; null: threads", ge=1)
    n_ctx: int = knob(8192, "llamacpp: context size in tokens (prompt + reply)", ge=256)


@dataclass
class AgentConfig:
    max_attempts: int = knob(3, "model calls per koan (and sample)", ge=1)
    temperature: float = knob(0.2, "sampling temperature; 0: greedy", ge=0)
    max_tokens: int = knob(1024, "tokens per reply", ge=1)
    samples: int = knob(1, "independent attempt chains per koan, for pass@k", ge=1)
    max_reply_chars: int = knob(65536, "a longer reply is cut to this many characters before it is judged or stored "
                                       "(the episode says so)", ge=1)
    max_model_error_rate: float = knob(
        0.2, "a stage stops, and the run is FAILED, once more than this share of its model calls failed", ge=0, le=1)
    history: bool = knob(False, "show earlier failed attempts in the prompt")
    prompt: Literal["plain", "explain", "memory"] = knob(
        "plain", "plain | explain (adds rustc --explain) | memory (similar earlier fixes of this run)")


@dataclass
class MemoryConfig:
    k: int = knob(3, "memory: earlier fixes shown per prompt", ge=1)
    source: str | None = knob(None, "memory: an MLflow run id whose fixes are recalled too; null: this run's only")


@dataclass
class TrackingConfig:
    uri: str = knob("sqlite:///mlruns/mlflow.db", "the MLflow store; a relative sqlite path follows the working directory")
    artifact_root: str | None = knob(None, "where artifacts go; null: beside the sqlite store (mlruns/artifacts)")
    system_metrics_s: float = knob(10.0, "seconds between samples of MLflow's system metrics (CPU, memory, disk, "
                                   "network: system/* in the run; needs psutil); 0: none", ge=0)


@dataclass
class EpisodesConfig:
    uri: str = knob("mlruns/episodes", "the LanceDB directory of the episode store")


@dataclass
class LoraConfig:
    r: int = knob(8, "LoRA rank", ge=1)
    alpha: int = knob(16, "LoRA alpha (the update is scaled by alpha / r)", gt=0)
    dropout: float = knob(0.0, "LoRA dropout", ge=0, lt=1)
    target_modules: list[str] = knob(help="the linear layers that get LoRA factors", factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    mode: Literal["new", "continue"] = knob(
        "new", "new: a fresh adapter on every night's examples so far | continue: keep training the last one")


@dataclass
class TeacherConfig:
    provider: Literal["openai", "ollama", "vllm"] | None = knob(None, "a served model for `teacher` targets")
    name: str | None = knob(None, "the teacher's model name")
    api_base: str | None = knob(None, "the teacher's address")
    api_key: str | None = knob(None, "the teacher's key")


@dataclass
class NightConfig:
    enabled: bool = knob(True, "false: no training (e.g. the memory experiment)")
    targets: list[Literal["self", "teacher", "reference"]] = knob(
        help="target sources, tried in this order per failed koan", factory=lambda: ["self", "reference"])
    self_samples: int = knob(4, "self: samples drawn per failed koan (rejection sampling)", ge=1)
    self_temperature: float = knob(0.8, "self: sampling temperature", ge=0)
    teacher: TeacherConfig = knob(help="the served model of `teacher` targets", factory=TeacherConfig)
    replay: float = knob(0.0, "earlier successes mixed in, as a fraction of the night's new examples", ge=0)
    steps: int = knob(100, "optimizer steps", ge=1)
    lr: float = knob(2e-4, "learning rate", gt=0)
    batch_size: int = knob(4, "examples per step", ge=1)
    max_length: int = knob(4096, "tokens per example; longer examples are dropped", ge=1)
    trainer: Literal["peft", "unsloth", "auto"] = knob(
        "peft", "peft (CPU or GPU) | unsloth (the gpu extra, CUDA only) | auto: unsloth when it can")


@dataclass
class SubspaceConfig:
    method: Literal["none", "share", "uwsh"] = knob(
        "none", "none: plain LoRA | share: bases that follow the tasks | uwsh: a fixed basis from `source`")
    k: int | None = knob(16, "basis columns per module and side (or null and explained_variance)", ge=1)
    explained_variance: float | None = knob(None, "the smallest k that keeps this share of the variance", gt=0, le=1)
    phi: int = knob(0, "share: temporary directions per side trained with the coefficients", ge=0)
    route: Literal["mean", "family"] = knob(
        "mean", "mean: one task per night serves every koan | family: one task per koan family, routed by error code")
    source: str | None = knob(None, "uwsh: a directory searched for peft LoRA adapters; null: adapters_dir")


@dataclass
class Config:
    koans: KoansConfig = knob(factory=KoansConfig)
    sandbox: SandboxConfig = knob(factory=SandboxConfig)
    model: ModelConfig = knob(factory=ModelConfig)
    agent: AgentConfig = knob(factory=AgentConfig)
    memory: MemoryConfig = knob(factory=MemoryConfig)
    tracking: TrackingConfig = knob(factory=TrackingConfig)
    episodes: EpisodesConfig = knob(factory=EpisodesConfig)
    lora: LoraConfig = knob(factory=LoraConfig)
    night: NightConfig = knob(factory=NightConfig)
    subspace: SubspaceConfig = knob(factory=SubspaceConfig)
    stage: Literal["verify", "day", "eval", "cycle"] = knob("verify", "verify | day | eval | cycle")
    cycles: int = knob(2, "stage=cycle: day/night/eval rounds after the cycle-0 eval", ge=1)
    cycle: int = knob(0, "stage=day|eval: the cycle to attempt", ge=0)
    seed: int = knob(0, "seeds the model's sampling and the night's training")
    run_id: str | None = knob(None, "an MLflow run id to resume; null: a new run")
    baseline_run_id: str | None = knob(
        None, "an MLflow run whose episodes stand in for the earlier cycles this run lacks (same koans)")
    experiment_name: str = knob("sleepy", "the MLflow experiment")
    adapters_dir: str = knob("mlruns/adapters", "where nights save adapters: <dir>/<run id>/cycle<N>")


class ConfigError(ValueError):
    """Bad settings: one line per error."""


def register() -> None:
    """Put the schema in Hydra's config store as `sleepy_schema` (conf/config.yaml lists it in its defaults)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="sleepy_schema", node=omegaconf_schema(Config))


def validate(cfg) -> None:
    """Raise ConfigError listing every bad value of `cfg`, one line each."""
    if errors := check(cfg):
        raise ConfigError("\n".join(errors))


def check(cfg) -> list[str]:
    """Every bad value of a composed config, one line each naming the key and what is valid: choices, ranges, and
    the rules that tie keys together."""
    errors: list[str] = []
    _check_node(Config, cfg, "", errors)
    return errors + _rules(cfg)


def _check_node(schema, node, prefix: str, errors: list[str]) -> None:
    from omegaconf import OmegaConf

    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key, kind = prefix + f.name, hints[f.name]
        if OmegaConf.is_missing(node, f.name):
            errors.append(f"config key '{key}' has no value; valid: {f.metadata.get('help', 'a value')}")
            continue
        value = node[f.name]
        if dataclasses.is_dataclass(kind):
            _check_node(kind, value, key + ".", errors)
        elif (valid := _invalid(kind, value, f.metadata)) is not None:
            errors.append(f"config key '{key}' is {_show(value)}; valid: {valid}")


def _invalid(kind, value, metadata) -> str | None:
    """What is valid for a field of type `kind`, when `value` is not; None when it is."""
    if typing.get_origin(kind) is list and value is not None:
        item = typing.get_args(kind)[0]
        bad = [v for v in value if _invalid(item, v, metadata) is not None]
        return f"a list of {_invalid(item, bad[0], metadata)}" if bad else None
    if (choices := literal_values(kind)) is not None:
        return None if value in choices else ", ".join("null" if c is None else str(c) for c in choices)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    bounds = [(op, metadata[name]) for name, op in RANGE.items() if name in metadata]
    ok = all({">=": value >= b, ">": value > b, "<=": value <= b, "<": value < b}[op] for op, b in bounds)
    if ok:
        return None
    allowed = " and ".join(f"{op} {b}" for op, b in bounds)
    return f"{allowed}{' or null' if _optional(kind) else ''} ({metadata['help']})"


def _rules(cfg) -> list[str]:
    """The rules that tie keys together (checked once each key holds a valid value)."""
    errors = []
    s = cfg.subspace
    if s.method != "none" and (s.k is None) == (s.explained_variance is None):
        errors.append(f"config keys 'subspace.k' and 'subspace.explained_variance' are {_show(s.k)} and "
                      f"{_show(s.explained_variance)}; valid: exactly one of them set, e.g. subspace.k=null "
                      "subspace.explained_variance=0.9")
    if s.method == "uwsh" and s.phi > 0:
        errors.append(f"config key 'subspace.phi' is {s.phi} with subspace.method=uwsh; valid: 0 (a fixed basis keeps no "
                      "temporary directions: training them would be projected away)")
    if s.method != "none" and cfg.night.trainer == "unsloth":
        errors.append(f"config key 'night.trainer' is 'unsloth' with subspace.method={s.method}; valid: peft, auto "
                      "(subspace nights train coefficients through peft's forward)")
    for name, value in cfg.sandbox.limits.items():
        if not isinstance(value, int | float) or value <= 0:
            errors.append(f"config key 'sandbox.limits.{name}' is {_show(value)}; valid: > 0")
    if cfg.model.backend == "llamacpp" and cfg.model.stream:
        errors.append("config key 'model.stream' is true with model.backend=llamacpp; valid: false (llama-cpp-python's "
                      "server gets stuck when a streamed reply is abandoned at its timeout)")
    if cfg.model.backend == "litellm" and cfg.model.provider is None:
        errors.append("config key 'model.provider' is null with model.backend=litellm; valid: openai, ollama, vllm")
    return errors


def literal_values(kind) -> tuple | None:
    """The values a `Literal[...]` (or an optional one) allows; None for any other type."""
    if typing.get_origin(kind) is Literal:
        return typing.get_args(kind)
    if _optional(kind):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(inner) == 1 and (values := literal_values(inner[0])) is not None:
            return (*values, None)
    return None


def _optional(kind) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)


def _show(value) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def omegaconf_schema(schema):
    """`schema` as OmegaConf 2.3 can hold it: each `Literal` replaced by the type of its values (OmegaConf has no
    Literal), so OmegaConf still checks and converts types and keys while `check` checks the values."""
    hints = typing.get_type_hints(schema)
    fields = []
    for f in dataclasses.fields(schema):
        kind = _plain(hints[f.name])
        if dataclasses.is_dataclass(kind):
            fields.append((f.name, kind, field(default_factory=kind)))
        elif f.default_factory is not dataclasses.MISSING:
            fields.append((f.name, kind, field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, kind, field(default=f.default)))
    return dataclasses.make_dataclass(schema.__name__, fields)


def _plain(kind):
    if dataclasses.is_dataclass(kind):
        return omegaconf_schema(kind)
    if typing.get_origin(kind) is list:
        return list[_plain(typing.get_args(kind)[0])]
    if (values := literal_values(kind)) is not None:
        (value_type,) = {type(v) for v in values if v is not None}
        return value_type | None if None in values else value_type
    return kind


def check_override_keys(args: list[str], groups: set[str]) -> str | None:
    """The first command-line override whose key is not in the schema, as an error naming the valid keys."""
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
