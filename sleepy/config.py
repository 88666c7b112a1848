"""Structured-config schemas: every config group is validated against these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

from sleepy.sandbox.judge import SandboxLimits

STAGES = ("verify",)


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
class Config:
    koans: KoansConfig = field(default_factory=KoansConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    stage: str = "verify"
    seed: int = 0


CHOICES = {
    "stage": STAGES,
    "koans.split": (None, "train", "eval"),
    "sandbox.isolation": ("auto", "bwrap", "netns", "none"),
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
