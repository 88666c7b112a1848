"""llama.cpp throughput on a GGUF model through the managed backend: generation and prompt tokens/s at 1 and 2
threads, quiet and with the judge (rustc) busy beside it; optionally the hf backend on the same weights and prompts.

    .venv/bin/python bench/bench_llamacpp.py [--gguf qwen2.5-coder-1.5b-q4km] [--prompts 2] [--max-tokens 64]
                                             [--repeat 1] [--hf]

Prompts are the day prompts of eval koans (code, diagnostics, tests; about 950 tokens), decoded greedily. Token
counts and times come from llama.cpp's own per-request timings in the server's log, so HTTP and litellm are not
counted. Every figure is also given as a ratio to the baseline (1 thread, quiet) measured in the same run; the
conditions are interleaved so drift in the machine's load hits them alike.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROMPT_RE = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
EVAL_RE = re.compile(r"\s eval time =\s*([\d.]+) ms /\s*(\d+) runs")


def day_prompts(n: int) -> list[list[dict]]:
    """The first-attempt day prompt of n eval koans from different families."""
    from sleepy.koans import load_pack
    from sleepy.prompt import chat, user_prompt
    from sleepy.sandbox import Sandbox

    pack = load_pack()
    families = sorted({k.family for k in pack.koans})
    koans = [pack.select(family=f, split="eval", count=1)[0] for f in families][:n]
    verdicts = Sandbox().judge_many([k.program() for k in koans])
    return [chat(user_prompt(k, k.code, v)) for k, v in zip(koans, verdicts, strict=True)]


def judge_forever(stop) -> None:
    """The judge beside the server: rustc on every builtin koan's solution, one at a time, uncached, until `stop`."""
    from sleepy.koans import load_pack
    from sleepy.sandbox import Sandbox

    koans = load_pack().koans
    sandbox = Sandbox(use_cache=False, jobs=1)
    i = 0
    while not stop.is_set():
        sandbox.judge_many([koans[i % len(koans)].program(koans[i % len(koans)].solution)])
        i += 1


def timed(backend, prompt, max_tokens: int) -> tuple[float, float, int, int]:
    """(prompt tokens/s, generation tokens/s, prompt tokens, generated tokens) of one request, from the log."""
    from sleepy.models.base import SamplingParams

    before = backend.log_path.stat().st_size
    (gen,) = backend.generate([prompt], SamplingParams(temperature=0, max_tokens=max_tokens))
    if gen.error:
        raise RuntimeError(gen.error)
    with open(backend.log_path, errors="replace") as f:
        f.seek(before)
        new = f.read()
    (p_ms, p_n), (e_ms, e_n) = PROMPT_RE.findall(new)[-1], EVAL_RE.findall(new)[-1]
    return int(p_n) / float(p_ms) * 1000, int(e_n) / float(e_ms) * 1000, int(p_n), int(e_n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default="qwen2.5-coder-1.5b-q4km", help="a GGUF file or a fetched model's name")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--hf", action="store_true", help="also the hf backend on the dequantized weights (bfloat16)")
    args = ap.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from sleepy.models.llamacpp import LlamaCppBackend

    prompts = day_prompts(args.prompts)
    logs = Path(tempfile.mkdtemp(prefix="bench-llamacpp-"))
    threads = [int(t) for t in args.threads.split(",")]
    backends = {}
    for t in threads:
        start = time.perf_counter()
        backends[t] = LlamaCppBackend(f"bench-{t}", args.gguf, threads=t, log_dir=logs / f"t{t}")
        print(f"server with {t} thread(s) started in {time.perf_counter() - start:.1f} s")
    for b in backends.values():  # warm: page cache, first-request allocations
        timed(b, prompts[0], 8)
    results: dict[tuple[int, str], list[tuple[float, float, int, int]]] = {}
    ctx = multiprocessing.get_context("spawn")
    try:
        for _ in range(args.repeat):
            for load in ("quiet", "rustc"):
                stop = ctx.Event()
                judge = ctx.Process(target=judge_forever, args=(stop,)) if load == "rustc" else None
                if judge:
                    judge.start()
                    time.sleep(3)  # let it reach steady state
                try:
                    for t, b in backends.items():
                        for p in prompts:
                            b.generate([[{"role": "user", "content": "hi"}]], _reset())  # no prompt-prefix reuse
                            results.setdefault((t, load), []).append(timed(b, p, args.max_tokens))
                            print(f"  threads={t} {load}: prompt {results[t, load][-1][0]:.1f} tokens/s, "
                                  f"generation {results[t, load][-1][1]:.2f} tokens/s, load avg {os.getloadavg()[0]:.1f}",
                                  flush=True)
                finally:
                    if judge:
                        stop.set()
                        judge.join()
    finally:
        for b in backends.values():
            b.close()
    base = results[threads[0], "quiet"]
    base_p, base_g = statistics.median(r[0] for r in base), statistics.median(r[1] for r in base)
    print(f"\nllama.cpp, {args.gguf}, {len(prompts)} day prompts (median {statistics.median(r[2] for r in base):.0f} "
          f"prompt tokens), greedy, up to {args.max_tokens} tokens, {args.repeat} repeat(s), {os.cpu_count()} cores:")
    for (t, load), rows in results.items():
        p, g = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
        print(f"  threads={t} {load:5}: prompt {p:6.1f} tokens/s ({p / base_p:.2f}x), generation {g:6.2f} tokens/s "
              f"({g / base_g:.2f}x)")
    if args.hf:
        hf_ratio(args, prompts, base_g, base_p)


def _reset():
    from sleepy.models.base import SamplingParams

    return SamplingParams(temperature=0, max_tokens=1)


def hf_ratio(args, prompts, base_g: float, base_p: float) -> None:
    """The hf backend (transformers, bfloat16, all cores) on the same weights, dequantized, and prompts."""
    import torch

    from sleepy.models.base import SamplingParams
    from sleepy.models.gguf_model import dequantized_dir
    from sleepy.models.hf import HFBackend
    from sleepy.models.llamacpp import resolve_gguf

    path = dequantized_dir(resolve_gguf(args.gguf), "bfloat16")
    hf = HFBackend(str(path), device="cpu", dtype="bfloat16", batch_size=1)
    rates, prefill = [], []
    for p in prompts:
        one = hf.generate([p], SamplingParams(temperature=0, max_tokens=1))[0]  # prompt processing (+1 token)
        gen = hf.generate([p], SamplingParams(temperature=0, max_tokens=args.max_tokens))[0]
        prefill.append(one.tokens_in / (one.latency_ms / 1000))
        rates.append((gen.tokens_out - 1) / ((gen.latency_ms - one.latency_ms) / 1000))
    g, p = statistics.median(rates), statistics.median(prefill)
    print(f"  hf backend (transformers bfloat16, {torch.get_num_threads()} threads) quiet: prompt {p:6.1f} tokens/s "
          f"({p / base_p:.2f}x), generation {g:6.2f} tokens/s ({g / base_g:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
