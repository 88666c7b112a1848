"""The one interface every model backend serves: a batch of chat prompts in, texts and token counts out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

Messages = list[dict[str, str]]  # [{"role": "system" | "user" | "assistant", "content": "..."}]


def sample_seed(*parts) -> int:
    """A stable 32-bit seed for one sample (e.g. the run's seed, a koan, a sample, an attempt): the same parts give
    the same sample, whatever else is in the batch."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.2
    max_tokens: int = 1024
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Generation:
    """One reply. `error` is set (and text is empty) when the model failed after its retries."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    error: str | None = None
    truncated: bool = False  # cut to agent.max_reply_chars by the agent


class ModelServerError(RuntimeError):
    """Too many of a stage's model calls failed: the stage stops rather than read as a 0% result."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what was looked for and what to use instead."""


class Backend(Protocol):
    """What a run asks of a model: replies, and for a night, the base weights and serving of LoRA adapters."""

    name: str  # the model's name as recorded with every episode
    path: str | None  # the local base weights a night trains on (None: the backend has none)
    serves_adapters: bool  # whether load_adapter works, so that a night's adapter can be served back
    adapters: list[str]  # the names of the loaded adapters

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load the peft LoRA directory at `path` under `name`; a name already loaded is replaced."""
        ...

    def generate(self, prompts: list[Messages], params: SamplingParams | list[SamplingParams],
                 adapter: str | None = None) -> list[Generation]:
        """One reply per prompt, in order. params: one for all, or one per prompt; each prompt's seed decides its
        own sample, whatever else is in the batch. adapter: the name of a loaded LoRA adapter, or None for the
        base model."""
        ...

    def close(self) -> None: ...
