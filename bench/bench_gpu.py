"""GPU figures on the real architecture: night training tokens/s (peft loop against unsloth) and hf batched
generation tokens/s, on a Qwen2.5-Coder-1.5B-shaped model with random weights built on the spot.

    .venv/bin/python bench/bench_gpu.py                      # on a CUDA machine (unsloth arm needs the gpu extra)
    .venv/bin/python bench/bench_gpu.py --shape tiny --steps 3 --batches 1,4 --new-tokens 16   # the code path on CPU

Nothing is downloaded: the model is Qwen2.5-Coder-1.5B's config with random weights and the tiny model's koan
tokenizer (its ids are a subset of the vocabulary). Training examples are the reference fixes of train koans in
the day prompt, as a night sees them; generation decodes a fixed number of new tokens per prompt (EOS off), so
tokens/s compares batch sizes fairly. Each arm runs in its own subprocess (unsloth patches transformers at import).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

QWEN_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
                 vocab_size=151936, rms_norm_eps=1e-6)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096, vocab_size=3000)
LORA = SimpleNamespace(r=16, alpha=32, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                     "up_proj", "down_proj"])


def build(shape: str, out: Path) -> str:
    """A random model of the shape, saved with the tiny model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from sleepy.models.tiny import build_tiny

    tiny = build_tiny()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(0)
    config = Qwen2Config(**(QWEN_1_5B if shape == "qwen1.5b" else TINY), bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).to(torch.bfloat16 if torch.cuda.is_available() else torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def examples(path: str, n: int) -> list[dict]:
    from transformers import AutoTokenizer

    from sleepy.koans import load_pack
    from sleepy.night.dataset import Example, encode
    from sleepy.prompt import answer, chat

    tokenizer = AutoTokenizer.from_pretrained(path)
    koans = load_pack().select(split="train")[:n]
    return [encode(tokenizer, Example(k.id, "reference", tuple(chat(
        f"Task: {k.title}\nFix this Rust program:\n```rust\n{k.code}```\n{k.tests}")), answer(k.solution)), 4096)
        for k in koans]


def train_arm(path: str, trainer: str, steps: int, batch: int) -> dict:
    """tokens/s of `steps` LoRA steps with sleepy's loop, the model loaded and wrapped by `trainer`."""
    from sleepy.night.trainer import load_base, train, wrap_lora

    if trainer == "unsloth":
        from sleepy.night.trainer import import_unsloth

        import_unsloth()
    model, tokenizer = load_base(path, trainer=trainer)
    peft = wrap_lora(model, LORA, None, trainer)
    data = examples(path, 16)
    train(peft, tokenizer, data, steps=2, lr=1e-4, batch_size=batch)  # warm-up: kernels, allocator
    r = train(peft, tokenizer, data, steps=steps, lr=1e-4, batch_size=batch)
    return {"arm": f"train/{trainer}", "tokens_per_s": r.tokens_per_s, "steps": r.steps, "seconds": r.seconds}


def generate_arm(path: str, batches: list[int], new_tokens: int) -> list[dict]:
    """tokens/s of HFBackend.generate at each batch size, fixed new tokens per prompt."""
    import torch

    from sleepy.koans import load_pack
    from sleepy.models.base import SamplingParams
    from sleepy.models.hf import HFBackend
    from sleepy.prompt import chat, user_prompt
    from sleepy.sandbox import Verdict

    backend = HFBackend(path, batch_size=max(batches))
    backend.model.generation_config.eos_token_id = None  # decode exactly new_tokens per prompt
    koans = load_pack().select(split="train")
    prompts = [chat(user_prompt(k, k.code, Verdict(compiled=False, tests_passed=False, reason="compile_error",
                                                   isolation="none"))) for k in koans]
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens)
    out = []
    for b in batches:
        backend.batch_size = b
        batch = (prompts * (b // len(prompts) + 1))[:b]
        backend.generate(batch[:1], params)  # warm-up
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        gens = backend.generate(batch, params)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        tokens = sum(g.tokens_out for g in gens)
        out.append({"arm": f"generate/batch{b}", "tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=("qwen1.5b", "tiny"), default="qwen1.5b")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:  # a child: one arm, JSON on the last line
        if args.arm == "generate":
            result = generate_arm(args.path, [int(b) for b in args.batches.split(",")], args.new_tokens)
        else:
            result = [train_arm(args.path, args.arm, args.steps, args.batch)]
        print(json.dumps(result))
        return

    import torch

    from sleepy.night.trainer import unsloth_available

    with tempfile.TemporaryDirectory() as d:
        path = build(args.shape, Path(d) / "model")
        arms = ["peft", "generate"] + (["unsloth"] if unsloth_available() else [])
        results = []
        for arm in arms:
            r = subprocess.run([sys.executable, __file__, "--arm", arm, "--path", path, "--steps", str(args.steps),
                                "--batch", str(args.batch), "--batches", args.batches, "--new-tokens",
                                str(args.new_tokens)], capture_output=True, text=True)
            if r.returncode:
                print(f"{arm}: failed\n{r.stderr[-3000:]}", file=sys.stderr)
                continue
            results += json.loads(r.stdout.strip().splitlines()[-1])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"{args.shape} shapes, random weights, {device}, LoRA r={LORA.r} on 7 projections, "
          f"batch {args.batch}, {args.steps} steps; generation {args.new_tokens} new tokens per prompt")
    by = {r["arm"]: r for r in results}
    for r in results:
        print(f"  {r['arm']}: {r['tokens_per_s']:.0f} tokens/s")
    if "train/unsloth" in by:
        print(f"  unsloth / peft training: {by['train/unsloth']['tokens_per_s'] / by['train/peft']['tokens_per_s']:.2f}x")
    if not unsloth_available():
        print("  (no unsloth arm: needs a CUDA GPU and pip install -e '.[gpu]')")


if __name__ == "__main__":
    main()
