"""The tiny model (sleepy/models/tiny.py) written as a float32 GGUF with the gguf package, for the llama.cpp tests.

llama.cpp's own convert_hf_to_gguf.py refuses the tiny tokenizer (it recognises a BPE pre-tokenizer by hashing a
known vocabulary's output), so this writes the same keys it writes for a Qwen2 model, with `tokenizer.ggml.pre =
qwen2`: the tiny tokenizer splits text with Qwen2's regex.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_tiny_gguf(hf_dir: str | Path, out: str | Path) -> Path:
    """`out`: the Qwen2 model at hf_dir (tiny's layout: untied output, no rope scaling) as a float32 GGUF."""
    import gguf
    from safetensors.numpy import load_file

    hf_dir, out = Path(hf_dir), Path(out)
    if out.exists():
        return out
    config = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    template = (hf_dir / "chat_template.jinja").read_text()
    vocab = tok["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [None] * max([*vocab.values(), *added.values(), config["vocab_size"] - 1]) + [None]
    for text, i in {**vocab, **added}.items():
        tokens[i] = text
    types = [gguf.TokenType.CONTROL if t in added else gguf.TokenType.NORMAL for t in tokens]
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    w = gguf.GGUFWriter(str(tmp), "qwen2")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("sleepy tiny")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_rope_freq_base(float(config["rope_parameters"]["rope_theta"]))
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(config["eos_token_id"])
    w.add_pad_token_id(config["pad_token_id"])
    w.add_add_bos_token(False)
    w.add_chat_template(template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config["num_hidden_layers"])
    weights = load_file(str(hf_dir / "model.safetensors"))
    for key in sorted(weights):
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ValueError(f"{hf_dir}: tensor {key} has no GGUF name")
        w.add_tensor(target, weights[key].astype("float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)
    return out
