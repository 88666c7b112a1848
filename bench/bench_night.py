"""Night training throughput against a bare transformers + peft loop, same tiny model, data and session.

    .venv/bin/python bench/bench_night.py [--steps 40] [--repeat 3]

Both train a fresh LoRA (r=16 on every linear layer) on the reference fixes of 4 train koans,
batch size 4, from the same base weights; tokens/s counts the non-padding tokens of each batch.
A third arm trains a Share task (k=16, phi=1 coefficients on a basis seeded by one LoRA) through the
same loop, to show what computing the factors from the basis costs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from sleepy.koans import load_pack
from sleepy.models.tiny import build_tiny
from sleepy.night.dataset import Example, encode
from sleepy.night.trainer import load_base, train, wrap_lora
from sleepy.prompt import answer, chat

LORA = SimpleNamespace(r=16, alpha=32, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"])


def bare(path: str, encoded: list[dict], steps: int, batch: int) -> float:
    """The textbook loop: peft model, AdamW, forward/backward/step on padded batches; returns tokens/s."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(
        r=LORA.r, lora_alpha=LORA.alpha, target_modules=LORA.target_modules, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    tokens, start = 0, time.perf_counter()
    for step in range(steps):
        chunk = [encoded[(step * batch + i) % len(encoded)] for i in range(batch)]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.tensor([e["input_ids"] + [0] * (width - len(e["input_ids"])) for e in chunk])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in chunk])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in chunk])
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
        tokens += int(mask.sum())
    return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    path = str(build_tiny())
    koans = load_pack().select("borrow_checker", "train", count=4)
    _, tokenizer = load_base(path, "cpu")
    examples = [Example(k.id, "reference", tuple(chat(f"Task: {k.title}\n{k.code}\n{k.tests}")), answer(k.solution))
                for k in koans]
    encoded = [encode(tokenizer, e, 4096) for e in examples]
    ours, theirs, shared = [], [], []
    for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
        theirs.append(bare(path, encoded, args.steps, 4))
        model, _ = load_base(path, "cpu")
        ours.append(train(wrap_lora(model, LORA), tokenizer, encoded, steps=args.steps, lr=5e-3,
                          batch_size=4).tokens_per_s)
        shared.append(share_task(path, tokenizer, encoded, args.steps))
    o, t, sh = statistics.median(ours), statistics.median(theirs), statistics.median(shared)
    print(f"night training, tiny model, {len(encoded)} examples, {args.steps} steps x {args.repeat}, "
          f"{torch.get_num_threads()} threads: sleepy {o:.0f} tokens/s, bare peft loop {t:.0f} tokens/s, ratio {o / t:.3f}")
    print(f"  Share task (k=16, phi=1): {sh:.0f} tokens/s, {sh / o:.3f}x the plain LoRA night")


def share_task(path: str, tokenizer, encoded: list[dict], steps: int) -> float:
    """tokens/s of training Share coefficients (k=16, phi=1) on the basis of one random LoRA."""
    from sleepy.night.coefficients import attach, factors, fresh, lora_layers
    from sleepy.night.subspace import Subspace

    model, _ = load_base(path, "cpu")
    peft = wrap_lora(model, LORA)
    with torch.no_grad():
        for layer in lora_layers(peft).values():
            layer.lora_B["default"].weight.normal_(std=0.02)
    sub = Subspace.fit([factors(peft)], "share", k=16)
    attach(peft, sub, fresh(sub, LORA.r, torch.Generator().manual_seed(0)), phi=1)
    return train(peft, tokenizer, encoded, steps=steps, lr=5e-3, batch_size=4).tokens_per_s


if __name__ == "__main__":
    main()
