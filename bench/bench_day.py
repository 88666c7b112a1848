"""Day-stage efficiency against the scripted server: wall time of the attempt loop against the ideal.

    .venv/bin/python bench/bench_day.py [--latency 0.5] [--concurrency 8]

Every train koan gets a wrong fix (its broken code) at attempt 1 and its solution at attempt 2, so
the stage makes 2 calls per koan. Ideal = latency x calls / concurrency + judging, where judging is
the time the same sandbox takes to judge the distinct programs of the stage, measured alone just
before (fresh verdict caches both times). Efficiency = ideal / actual.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sleepy.agent import StageContext, attempt_koans
from sleepy.config import AgentConfig
from sleepy.episodes import EpisodeStore
from sleepy.koans import load_pack
from sleepy.models.base import SamplingParams
from sleepy.models.litellm_backend import LiteLLMBackend
from sleepy.sandbox import Program, Sandbox
from sleepy.testing.scripted_llm import Script, ScriptedLLMServer, Step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    koans = load_pack().select(split="train")
    script = Script({k.title: [Step(reply=f"```rust\n{k.code}\n```"), Step(reply=f"```rust\n{k.solution}\n```")]
                     for k in koans})
    with tempfile.TemporaryDirectory() as d:
        judge_only = Sandbox(cache_dir=Path(d) / "c1")
        programs = [Program(c, k.tests) for k in koans for c in (k.code, k.solution)]
        start = time.perf_counter()
        judge_only.judge_many(programs)
        judging = time.perf_counter() - start

        store = EpisodeStore(Path(d) / "episodes")
        sandbox = Sandbox(cache_dir=Path(d) / "c2")
        calls = 0
        with ScriptedLLMServer(script, latency_s=args.latency) as server:
            backend = LiteLLMBackend("scripted", "openai", server.url + "/v1", "none", concurrency=args.concurrency)
            backend.generate([[{"role": "user", "content": "warm up"}]], SamplingParams())  # import litellm outside the clock
            ctx = StageContext("bench", "bench", 0, "day", "scripted")
            start = time.perf_counter()
            attempt_koans(koans, backend, sandbox, AgentConfig(max_attempts=3), ctx,
                          lambda koan, episodes: store.add_koan(episodes))
            actual = time.perf_counter() - start
            calls = len(server.log) - 1
        passed = store.frame()["passed"].sum()
    ideal = args.latency * calls / args.concurrency + judging
    print(f"day stage: {len(koans)} train koans, {calls} calls, {passed} passed; latency {args.latency} s, "
          f"concurrency {args.concurrency}, jobs {sandbox.jobs}")
    print(f"ideal {ideal:.2f} s (calls {args.latency * calls / args.concurrency:.2f} s + judging {judging:.2f} s), "
          f"actual {actual:.2f} s, efficiency {ideal / actual:.3f}")


if __name__ == "__main__":
    main()
