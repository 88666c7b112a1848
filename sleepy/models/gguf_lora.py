"""A peft LoRA directory as a GGUF LoRA adapter: what llama.cpp loads with --lora and Ollama with ADAPTER.

    peft:  W x + (alpha / r) B A x, tensors base_model.model.<module>.lora_{A,B}.weight, A (r x d_in), B (d_out x r)
    GGUF:  general.type = adapter, adapter.type = lora, adapter.lora.alpha, tensors <gguf name>.weight.lora_{a,b}
           with the same shapes (llama.cpp scales by alpha / r, as peft does)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
from pathlib import Path

from sleepy.models.gguf_model import GgufModel, need_gguf

ADAPTER_FILE = "adapter.gguf"
MODELFILE = "Modelfile"


def export_lora(adapter_dir: str | Path, base: GgufModel, out: str | Path | None = None) -> Path:
    """Write the peft LoRA at adapter_dir as a GGUF LoRA for `base` (default: adapter_dir/adapter.gguf); reused
    when it is newer than the adapter's weights."""
    from sleepy.lora import WEIGHTS, read_adapter

    adapter_dir = Path(adapter_dir)
    out = Path(out) if out else adapter_dir / ADAPTER_FILE
    weights = adapter_dir / WEIGHTS
    if out.exists() and weights.exists() and out.stat().st_mtime_ns >= weights.stat().st_mtime_ns:
        return out
    gguf = need_gguf()
    try:
        factors, config = read_adapter(adapter_dir)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot export the LoRA adapter at {adapter_dir} to GGUF: {e}") from None
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{adapter_dir}: per-module ranks or alphas (rank_pattern/alpha_pattern) have no GGUF LoRA "
                         "equivalent: one alpha per adapter")
    r = int(config["r"])
    # llama.cpp scales by alpha / r; rsLoRA scales by alpha / sqrt(r), i.e. by (alpha sqrt(r)) / r
    alpha = float(config["lora_alpha"]) * (math.sqrt(r) if config.get("use_rslora") else 1.0)
    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(base.architecture)
    if arch is None:
        raise ValueError(f"{base.path}: architecture {base.architecture!r} is unknown to the gguf package")
    names = gguf.get_tensor_name_map(arch, base.blocks)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with _quiet_writer():
        writer = gguf.GGUFWriter(str(tmp), base.architecture)
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            writer.add_name(f"{adapter_dir.name} (LoRA for {base.name})")
            for module, (A, B) in factors.items():
                target = names.get_name(module + ".weight", try_suffixes=(".weight",))
                if target is None or target.startswith(("token_embd", "output.")):
                    raise ValueError(f"{adapter_dir}: LoRA module {module} has no GGUF LoRA equivalent for "
                                     f"{base.architecture} (adapt the attention and MLP projections only)")
                writer.add_tensor(target + ".lora_a", A.float().contiguous().numpy())
                writer.add_tensor(target + ".lora_b", B.float().contiguous().numpy())
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    os.replace(tmp, out)
    return out


@contextlib.contextmanager
def _quiet_writer():
    """The gguf writer's INFO lines (its byte order, the temporary file's name) kept out of a job's log; its
    logger's level is restored afterwards, whatever happens."""
    quiet = logging.getLogger("gguf.gguf_writer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        yield
    finally:
        quiet.setLevel(level)


def write_modelfile(adapter_gguf: str | Path, base_gguf: str | Path) -> Path:
    """An Ollama Modelfile next to the GGUF adapter: the base model with the adapter on top."""
    adapter_gguf = Path(adapter_gguf).resolve()
    path = adapter_gguf.with_name(MODELFILE)
    path.write_text(f"FROM {Path(base_gguf).resolve()}\nADAPTER {adapter_gguf}\n")
    return path


def ollama_command(modelfile: str | Path, name: str) -> str:
    """The command that registers the adapted model with Ollama."""
    return f"ollama create {shlex.quote(name)} -f {shlex.quote(str(modelfile))}"
