"""The offline `tiny` model: a randomly initialised, scaled-down Qwen2 with a BPE tokenizer trained on the koans.

Its replies are noise, but it loads, tokenizes, generates and takes LoRA adapters exactly like the real default
model, so the whole pipeline runs without a download or a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from sleepy.models.hf import HFBackend, quiet_progress

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHAT_SAMPLES = [
    "<|im_start|>system\nYou are a Rust expert. Fix the program so that it compiles and its tests pass.<|im_end|>\n",
    "<|im_start|>user\nThe compiler says:\nerror[E0382]: borrow of moved value\n```rust\nfn main() {}\n```<|im_end|>\n",
    "<|im_start|>assistant\nHere is the fixed program:\n```rust\nfn main() {}\n```<|im_end|>\n<|endoftext|>",
]
# Qwen2's pre-tokenization: AutoTokenizer rebuilds a Qwen2Tokenizer (this split, NFC) for a qwen2 model from our
# vocab and merges, so training must split the same way for the loaded tokenizer to be the trained one.
SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
VOCAB_SIZE = 3000
MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=4096, tie_word_embeddings=False)
EMBED_STD = 0.25  # see _build: lets a LoRA make confident predictions
FORMAT = 4  # bump when the build recipe changes, so stale caches are not reused


def default_cache_dir() -> Path:
    from sleepy.cache import cache_root

    return cache_root() / "tiny"


def corpus(koans=None) -> list[str]:
    """Tokenizer training texts: every koan's title, code, solution and tests (builtin pack by default), plus chat turns."""
    if koans is None:
        from sleepy.koans import load_pack

        koans = load_pack().koans
    return [s for k in koans for s in (k.title, k.code, k.solution, k.tests)] + CHAT_SAMPLES


def build_tiny(cache_dir: Path | None = None, seed: int = 0, koans=None) -> Path:
    """The directory of the tiny model for `seed` and this corpus; built on first use, then reused."""
    texts = corpus(koans)
    digest = hashlib.sha256(json.dumps([FORMAT, SPLIT_REGEX, VOCAB_SIZE, MODEL, EMBED_STD, texts]).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    final = root / f"seed{seed}-{digest}"
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=root))
    try:
        _build(tmp, texts, seed)
        try:
            os.rename(tmp, final)  # atomic: readers see no directory or a complete one
        except OSError:
            if not (final / "config.json").exists():  # not a concurrent builder's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build(out: Path, texts: list[str], seed: int) -> None:
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=CHAT_TEMPLATE, padding_side="left")
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(vocab_size=len(tokenizer), eos_token_id=eos, pad_token_id=pad, bos_token_id=None, **MODEL)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    # The final RMSNorm fixes the hidden state's scale, so with the usual 0.02-std embeddings no logit can exceed ~1
    # and no adapter can ever fit its targets: larger embeddings give a real model's logit range. Untied, or the
    # random model would only ever repeat its last token (its hidden state is mostly that token's embedding).
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, EMBED_STD)
        model.lm_head.weight.normal_(0.0, EMBED_STD)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    with quiet_progress():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_backend(seed: int = 0, batch_size: int = 8, cache_dir: Path | None = None, device: str = "cpu") -> HFBackend:
    """An HFBackend named "tiny" on the tiny model for `seed`, built first if needed.

    CPU by default: the model is too small to gain from a GPU, and CPU float32 gives the same texts on every machine.
    """
    return HFBackend(str(build_tiny(cache_dir, seed)), name="tiny", device=device, batch_size=batch_size, seed=seed)
