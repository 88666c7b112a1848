"""A peft LoRA directory: the files peft writes and `PeftModel.from_pretrained` loads, read as factors and written
from them. The night writes them; the models that serve an adapter (in process, or exported to GGUF) read them.

Factors are module name -> (A (r x d_in), B (d_out x r)); a LoRA adds delta W = (alpha / r) B A to each module.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

# module name -> (A (r x d_in), B (d_out x r))
Factors = dict[str, tuple["Tensor", "Tensor"]]

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
SUFFIX_A = ".lora_A.weight"
SUFFIX_B = ".lora_B.weight"


@contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh directory beside `path` to write into; when the block succeeds it replaces `path`, so a
    reader never finds a half-written directory there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


def read_adapter(path: str | Path) -> tuple[Factors, dict]:
    """Factors (float32) and adapter_config.json of a peft LoRA directory."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / CONFIG).read_text())
    tensors = load_file(str(path / WEIGHTS))
    names = {key[len(PREFIX) : -len(SUFFIX_A)] for key in tensors if key.startswith(PREFIX) and key.endswith(SUFFIX_A)}
    expected = {PREFIX + name + suffix for name in names for suffix in (SUFFIX_A, SUFFIX_B)}
    if set(tensors) != expected:
        raise ValueError(f"{path}: not a plain LoRA adapter: unexpected or unpaired {sorted(set(tensors) ^ expected)[:5]}")
    factors = {
        name: (tensors[PREFIX + name + SUFFIX_A].float(), tensors[PREFIX + name + SUFFIX_B].float()) for name in sorted(names)
    }
    return factors, config


def write_adapter(path: str | Path, factors: Factors, config: dict) -> Path:
    """Write `factors` as a peft LoRA directory that `PeftModel.from_pretrained(base, path)` loads.

    `config` holds the LoraConfig fields (lora_alpha, base_model_name_or_path, ...); r comes from the factors and
    target_modules, when absent, from their module names.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    ranks = {A.shape[0] for A, _ in factors.values()}
    if len(ranks) != 1:
        raise ValueError(f"factors of one adapter must share one rank, got {sorted(ranks)}")
    (r,) = ranks
    if config.get("r", r) != r:
        # lora_alpha scales by alpha / r: silently changing r would rescale the adapter
        raise ValueError(f"config says r={config['r']} but the factors have rank {r}")
    settings = {
        "task_type": "CAUSAL_LM",
        "inference_mode": True,
        "target_modules": sorted({name.rsplit(".", 1)[-1] for name in factors}),
        **config,
        "peft_type": "LORA",
        "r": r,
    }
    lora_config = LoraConfig.from_peft_type(**settings)
    tensors = {}
    for name, (A, B) in factors.items():
        tensors[PREFIX + name + SUFFIX_A] = A.contiguous()
        tensors[PREFIX + name + SUFFIX_B] = B.contiguous()
    with staged_dir(path) as tmp:
        lora_config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    return Path(path)
