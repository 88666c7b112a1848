"""In-process transformers backend: a causal LM with optional peft LoRA adapters, batched greedy or sampled decoding."""

from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sleepy.models.base import Generation, Messages, ModelLoadError, SamplingParams


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids downloads (read at call time, so a test or CLI can set it late)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


@contextmanager
def quiet_progress():
    """Hide transformers' progress bars for loading and saving weights: noise in the runner's output."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def load_error_message(path_or_name: str, offline: bool, cause: BaseException) -> str:
    """One message saying which model was looked for, where, why it failed and what to use instead."""
    local = Path(path_or_name).expanduser()
    first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if local.exists() or path_or_name.startswith((".", "/", "~")):
        where, reason = f"the local directory {local}", first_line if local.exists() else "it does not exist"
    else:
        from huggingface_hub import constants

        where, reason = f"the Hugging Face cache {constants.HF_HUB_CACHE}", first_line
    return (f"cannot load model '{path_or_name}' from {where}: {reason[:300].rstrip('.')}. "
            + ("HF_HUB_OFFLINE is set, so nothing can be downloaded. " if offline else "")
            + "Use model=tiny for offline runs, or set model.path to a local directory holding the weights.")


def placement(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """device and dtype names for "auto": the GPU in bfloat16 when there is one, else the CPU in float32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


def load_pretrained(path_or_name: str, device: str, dtype: str):
    """(model on `device`, tokenizer) from a local directory or the hub cache; a ModelLoadError that says where
    it looked and what to do otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = hub_offline()
    try:
        with quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(path_or_name, local_files_only=offline)
            model = AutoModelForCausalLM.from_pretrained(path_or_name, dtype=getattr(torch, dtype),
                                                         local_files_only=offline)
    except Exception as e:
        raise ModelLoadError(load_error_message(path_or_name, offline, e)) from e
    return model.to(device), tokenizer


class HFBackend:
    """A transformers causal LM loaded once; serves batches of chat prompts, with or without a LoRA adapter.

    SamplingParams set temperature, top_p and max_new_tokens per prompt; other decoding defaults the model ships in
    its generation_config (top_k, repetition_penalty) still apply, as they would on a serving stack.
    """

    def __init__(self, path_or_name: str, name: str | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 8, seed: int = 0):
        self.name = name or path_or_name
        self.path = path_or_name  # the base weights, which the night's trainer loads too
        self.device, dtype = placement(device, dtype)
        self.batch_size = batch_size
        self.seed = seed
        model, self.tokenizer = load_pretrained(path_or_name, self.device, dtype)
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model.eval()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {*(eos if isinstance(eos, list) else [eos]), self.tokenizer.eos_token_id} - {None}
        self.top_k = self.model.generation_config.top_k  # the model's own top-k still applies when sampling

    serves_adapters = True

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded LoRA adapters."""
        return list(getattr(self.model, "peft_config", {}))

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load a peft LoRA directory under `name`; a name already loaded is replaced."""
        from peft import PeftModel

        try:
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            else:
                if name in self.adapters:
                    with warnings.catch_warnings():  # peft warns when the active adapter goes; it is replaced next
                        warnings.simplefilter("ignore")
                        self.model.delete_adapter(name)
                self.model.load_adapter(str(path), adapter_name=name)
        except Exception as e:
            raise ModelLoadError(f"cannot load LoRA adapter '{name}' from {path}: {e}") from e
        self.model.eval()

    def _adapter_context(self, adapter: str | None):
        """Activate `adapter`, or switch all adapters off for the base model."""
        if adapter is None:
            return self.model.disable_adapter() if self.adapters else nullcontext()
        if adapter not in self.adapters:
            raise ValueError(f"unknown adapter '{adapter}' (loaded: {', '.join(self.adapters) or 'none'})")
        self.model.set_adapter(adapter)
        return nullcontext()

    def generate(self, prompts: list[Messages], params: SamplingParams | list[SamplingParams],
                 adapter: str | None = None) -> list[Generation]:
        """Replies in prompt order. A sampled prompt draws from its own generator, seeded by the backend's seed and
        its own, so its reply does not depend on what else is in the batch."""
        import torch

        params = params if isinstance(params, list) else [params] * len(prompts)
        texts = [self.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        groups: dict[int, list[int]] = {}  # one length budget per generate call; similar lengths together: less padding
        for i in sorted(range(len(texts)), key=lambda i: len(texts[i])):
            groups.setdefault(params[i].max_tokens, []).append(i)
        out: list[Generation | None] = [None] * len(texts)
        with self._adapter_context(adapter), torch.inference_mode():
            for indices in groups.values():
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start:start + self.batch_size]
                    for i, g in zip(batch, self._generate_batch([texts[i] for i in batch], [params[i] for i in batch]),
                                    strict=True):
                        out[i] = g
        return out

    def _generate_batch(self, texts: list[str], params: list[SamplingParams]) -> list[Generation]:
        from transformers import LogitsProcessorList

        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampler = SeededSampler(params, self.seed, self.top_k, self.device)
        began = time.perf_counter()
        ids = self.model.generate(**enc, max_new_tokens=params[0].max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  logits_processor=LogitsProcessorList([sampler]))
        latency = (time.perf_counter() - began) * 1000 / len(texts)
        new = ids[:, enc["input_ids"].shape[1]:].tolist()
        out = []
        for row, tokens in enumerate(new):
            n = next((k + 1 for k, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
            out.append(Generation(text=self.tokenizer.decode(tokens[:n], skip_special_tokens=True),
                                  tokens_in=int(enc["attention_mask"][row].sum()), tokens_out=n, latency_ms=latency))
        return out

    def close(self) -> None:
        """Free the model (and its GPU memory)."""
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class SeededSampler:
    """A logits processor that turns greedy decoding into per-row sampling: each sampled row's scores are warped
    (temperature, top-k, top-p) and get Gumbel noise from the row's own generator, so the argmax is a sample from
    the warped distribution whose randomness belongs to that row alone. Rows at temperature 0 stay greedy."""

    def __init__(self, params: list[SamplingParams], seed: int, top_k: int | None, device: str):
        import torch
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.rows = []
        for p in params:
            if p.temperature <= 0:
                self.rows.append(None)
                continue
            warpers = [TemperatureLogitsWarper(p.temperature)]
            if top_k:
                warpers.append(TopKLogitsWarper(top_k))
            if p.top_p < 1.0:
                warpers.append(TopPLogitsWarper(p.top_p))
            generator = torch.Generator(device=device).manual_seed(hash((seed, p.seed)) & 0xFFFF_FFFF)  # ints hash stably
            self.rows.append((warpers, generator))

    def __call__(self, input_ids, scores):
        import torch

        for i, row in enumerate(self.rows):
            if row is None:
                continue
            warpers, generator = row
            warped = scores[i:i + 1]
            for warp in warpers:
                warped = warp(input_ids[i:i + 1], warped)
            noise = torch.empty(warped.shape[-1], device=scores.device, dtype=torch.float32)
            noise.exponential_(generator=generator).clamp_min_(1e-20)
            scores[i] = (warped[0].float() - noise.log()).to(scores.dtype)  # argmax(log p - log E) ~ p (Gumbel-max)
        return scores
