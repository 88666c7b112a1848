"""LoRA training: a plain loop you can read top to bottom, on the CPU or the GPU.

    load base -> wrap in LoRA (new, or continue the last adapter) -> AdamW over shuffled batches,
    loss on answer tokens only -> (night/fit.py) save a standard peft LoRA directory, or read a subspace task back

`night.trainer` picks who loads and wraps the model: peft (transformers + peft, CPU or GPU) or unsloth
(the `gpu` extra: its patched kernels, CUDA only); the loop is the same. `auto` takes unsloth when a GPU
and the package are there, else peft.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass


@dataclass
class TrainResult:
    examples: int
    steps: int
    tokens: int
    seconds: float
    loss_first: float
    loss_last: float
    trainable_params: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def unsloth_available() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None


def resolve_trainer(name: str) -> str:
    """peft | unsloth for night.trainer = peft | unsloth | auto; unsloth without a GPU or the package is refused."""
    if name == "auto":
        return "unsloth" if unsloth_available() else "peft"
    if name == "unsloth" and not unsloth_available():
        import torch

        why = "no CUDA GPU is visible" if not torch.cuda.is_available() else "the unsloth package is not installed"
        raise ValueError(f"night.trainer=unsloth needs a CUDA GPU and the gpu extra (pip install -e '.[gpu]'): {why}; "
                         "use night.trainer=peft or auto")
    return name


def import_unsloth() -> None:
    """unsloth patches transformers and peft when imported, so it must come first: call before they load."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import unsloth  # noqa: F401


def load_base(path: str, device: str = "auto", dtype: str = "auto", trainer: str = "peft", max_length: int = 4096):
    """The base model and tokenizer for training (the same weights the backend serves)."""
    from sleepy.models.hf import load_pretrained, placement

    device, dtype = placement(device, dtype)
    if trainer == "unsloth":
        import torch

        import_unsloth()
        from unsloth import FastLanguageModel

        return FastLanguageModel.from_pretrained(model_name=path, max_seq_length=max_length,
                                                 dtype=getattr(torch, dtype), load_in_4bit=False)
    return load_pretrained(path, device, dtype)


def wrap_lora(model, lora, init_adapter: str | None = None, trainer: str = "peft", seed: int = 0):
    """A trainable peft model: a fresh LoRA from `lora` settings, or the adapter at init_adapter to continue."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter:
        return PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    if trainer == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(model, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                target_modules=list(lora.target_modules), bias="none",
                                                use_gradient_checkpointing=False, random_state=seed)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, config)


def batches(encoded: list[dict], batch_size: int, pad_id: int, rng: random.Random):
    """Shuffled, right-padded batches (input_ids, attention_mask, labels) as lists."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        chunk = [encoded[j] for j in order[i:i + batch_size]]
        width = max(len(e["input_ids"]) for e in chunk)
        yield ([e["input_ids"] + [pad_id] * (width - len(e["input_ids"])) for e in chunk],
               [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in chunk],
               [e["labels"] + [-100] * (width - len(e["labels"])) for e in chunk])


def train(model, tokenizer, encoded: list[dict], *, steps: int, lr: float, batch_size: int,
          seed: int = 0, on_step=None) -> TrainResult:
    """Train `model` (a peft model) for `steps` optimizer steps over `encoded`; the caller saves the adapter
    (peft's save_pretrained) or reads the trained factors back (a subspace task)."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    losses, tokens, step = [], 0, 0
    start = time.perf_counter()
    while step < steps:
        for ids, mask, labels in batches(encoded, batch_size, pad, rng):
            ids, mask, labels = (torch.tensor(x, device=device) for x in (ids, mask, labels))
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            tokens += int(mask.sum())
            step += 1
            if on_step:
                on_step(step, losses[-1])
            if step >= steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.eval()
    trainable = sum(p.numel() for p in params)
    return TrainResult(len(encoded), step, tokens, seconds, losses[0] if losses else math.nan,
                       losses[-1] if losses else math.nan, trainable)
