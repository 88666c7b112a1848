"""The one interface every model backend serves: a batch of chat prompts in, texts and token counts out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

Messages = list[dict[str, str]]  # [{"role": "system" | "user" | "assistant", "content": "..."}]


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


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what was looked for and what to use instead."""


class Backend(Protocol):
    name: str  # the model's name as recorded with every episode

    def generate(self, prompts: list[Messages], params: SamplingParams | list[SamplingParams],
                 adapter: str | None = None) -> list[Generation]:
        """One reply per prompt, in order. params: one for all, or one per prompt (each its own seed, so
        samples of one koan differ); a batched backend may seed the batch with the first.
        adapter: the name of a loaded LoRA adapter, or None for the base model."""
        ...

    def close(self) -> None: ...
