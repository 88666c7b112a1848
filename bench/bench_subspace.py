"""Share on Qwen2.5-Coder-1.5B's shapes: trainable parameters against LoRA, and the time of a merge.

    .venv/bin/python bench/bench_subspace.py [--layers 1] [--repeat 3]

Parameter counts come from the model's config alone. A merge (reconstruct every task, rebuild the bases, re-project
every task) is timed on random rank-16 adapters over `--layers` layers' 7 projections and scaled to all 28 layers;
its baseline is the same merge done as an SVD of the whole stack of T * r columns.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from sleepy.night.subspace import PROJECTIONS, Subspace, param_counts, projection_shapes

# Qwen2.5-Coder-1.5B(-Instruct) config.json, the fields that fix the projection shapes
CONFIG = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
}
R = 16
K = 16


def random_adapter(shapes: dict[str, tuple[int, int]], gen: torch.Generator) -> dict:
    return {
        name: (torch.randn(R, d_in, generator=gen) / d_in**0.5, torch.randn(d_out, R, generator=gen) / R**0.5)
        for name, (d_in, d_out) in shapes.items()
    }


def time_merge(sub: Subspace, new: dict, repeat: int, whole_stack: bool) -> float:
    """Median seconds of merging `new` into a copy of `sub`."""
    times = []
    for _ in range(repeat):
        target = copy.deepcopy(sub)
        start = time.perf_counter()
        if whole_stack:
            Subspace.fit([target.reconstruct(t) for t in target.tasks] + [new], "share", k=K)
        else:
            target.merge(new)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=1, help="layers to time; the merge time is scaled to all 28")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    layers = CONFIG["num_hidden_layers"]

    print(f"trainable parameters, Qwen2.5-Coder-1.5B ({layers} layers; {', '.join(PROJECTIONS)}), r={R}:")
    lora = param_counts(CONFIG, PROJECTIONS, r=R, k=K)["lora"]
    print(f"  LoRA r={R}: {lora:,}")
    for k in (8, 16, 32):
        for phi in (0, 1, 2):
            share = param_counts(CONFIG, PROJECTIONS, r=R, k=k, phi=phi)["share"]
            print(f"  Share k={k} phi={phi}: {share:,} ({share / lora:.4f}x LoRA, {lora / share:.0f}x fewer)")

    shape = projection_shapes(CONFIG)
    shapes = {f"model.layers.{i}.{p}": shape[p] for i in range(args.layers) for p in PROJECTIONS}
    scale = layers / args.layers
    print(
        f"Share merge, k={K}, r={R}, random adapters, {args.layers} layer(s) x 7 projections timed, x{scale:g} for "
        f"{layers} layers, median of {args.repeat} ({torch.get_num_threads()} torch threads):"
    )
    gen = torch.Generator().manual_seed(0)
    for tasks in (10, 50):
        sub = Subspace.fit([random_adapter(shapes, gen) for _ in range(tasks - 1)], "share", k=K)
        new = random_adapter(shapes, gen)
        merge = time_merge(sub, new, args.repeat, whole_stack=False)
        whole = time_merge(sub, new, args.repeat, whole_stack=True)
        print(
            f"  {tasks} tasks: {merge * scale:.2f} s for {layers} layers ({merge:.3f} s timed); "
            f"SVD of the whole stack {whole * scale:.1f} s ({whole:.3f} s timed), {whole / merge:.1f}x the time"
        )


if __name__ == "__main__":
    main()
