"""The agent: the attempt loop (a model backend and the sandbox), speaking the prompt contract of sleepy/prompt.py.

Attempt k is the k-th model call for a koan; steps to green is the attempt whose code passes.
The unsolved koans of a group advance together, one attempt per round: their prompts go to the backend
as one batch (served concurrently or batched on the GPU) and their fixes to the sandbox in parallel. A
koan's attempts are handed to `on_done` as soon as it passes or runs out of attempts, so an
interrupted stage keeps every koan it finished. A local model takes all the koans as one group (its
batches); a served one takes twice the requests it answers at once, group after group, so that on a
slow server (one request at a time, minutes each) a stop loses at most a few koans' unfinished
attempts, not a round over every koan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from sleepy.config import AgentConfig
from sleepy.episodes import Episode
from sleepy.koans.model import Koan
from sleepy.models.base import Generation, ModelServerError, SamplingParams, sample_seed
from sleepy.prompt import chat, describe, extract_fix, user_prompt
from sleepy.sandbox import Verdict


@dataclass
class StageContext:
    """Who is attempting: recorded with every episode."""

    run_id: str
    experiment: str
    cycle: int
    stage: str
    model: str
    adapter: str | None = None
    seed: int = 0


@dataclass
class Chain:
    """One sample's sequence of attempts at one koan."""

    koan: Koan
    sample: int
    code: str
    verdict: Verdict
    history: list[tuple[str, str]] = field(default_factory=list)  # (code, diagnostics) of failed attempts
    episodes: list[Episode] = field(default_factory=list)
    done: bool = False
    adapter: str | None = None  # the LoRA adapter its prompts go to (None: the base model)


def attempt_koans(koans: list[Koan], backend, sandbox, settings: AgentConfig, ctx: StageContext,
                  on_done: Callable[[Koan, list[Episode]], None],
                  memory: Callable[[str], list[tuple[str, str]]] | None = None,
                  router: Callable[[Verdict], str | None] | None = None) -> None:
    """Attempt every koan up to max_attempts times (per sample); on_done(koan, episodes) per koan.
    router: the adapter for a koan from the verdict on its broken code (else every koan gets ctx.adapter)."""
    calls = ModelCalls(backend, ctx, settings.max_model_error_rate)
    served = getattr(backend, "concurrency", None)  # requests a served model answers at once; None: a local model
    size = max(1, 2 * served // settings.samples) if served else max(1, len(koans))  # koans, of samples chains
    for start in range(0, len(koans), size):
        _attempt_group(koans[start:start + size], backend, sandbox, settings, ctx, on_done, memory, router, calls)


def _attempt_group(koans: list[Koan], backend, sandbox, settings: AgentConfig, ctx: StageContext, on_done, memory,
                   router, calls: ModelCalls) -> None:
    """The rounds of one group of koans, until each passed or ran out of attempts."""
    first = sandbox.judge_many([k.program() for k in koans])
    chains = [Chain(k, s, k.code, v, adapter=router(v) if router else ctx.adapter)
              for k, v in zip(koans, first, strict=True) for s in range(settings.samples)]
    pending = {k.id: settings.samples for k in koans}
    for attempt in range(1, settings.max_attempts + 1):
        active = [c for c in chains if not c.done]
        if not active:
            break
        prompts = [chat(user_prompt(c.koan, c.code, c.verdict, settings.prompt,
                                    memory(describe(c.verdict)) if memory else (),
                                    c.history if settings.history else ())) for c in active]
        params = [SamplingParams(settings.temperature, settings.max_tokens,
                                 seed=sample_seed(ctx.seed, c.koan.id, c.sample, attempt)) for c in active]
        gens = [_capped(g, settings.max_reply_chars) for g in _generate(backend, prompts, params,
                                                                         [c.adapter for c in active])]
        calls.count(gens)
        fixes = [extract_fix(g.text) if g.error is None else "" for g in gens]
        judged = [i for i, g in enumerate(gens) if g.error is None]
        verdicts = dict(zip(judged, sandbox.judge_many(
            [c.koan.program(fixes[i]) for i, c in enumerate(active) if i in judged]),
            strict=True))
        for i, chain in enumerate(active):
            v = verdicts.get(i) or Verdict(compiled=False, tests_passed=False, reason="model_error",
                                           isolation=sandbox.isolation, output=gens[i].error or "")
            chain.episodes.append(_episode(ctx, chain, attempt, prompts[i], gens[i], fixes[i], v, settings, params[i]))
            if v.passed or attempt == settings.max_attempts:
                chain.done = True
                pending[chain.koan.id] -= 1
                if pending[chain.koan.id] == 0:
                    on_done(chain.koan, [e for c in chains if c.koan.id == chain.koan.id for e in c.episodes])
            elif v.reason != "model_error":
                chain.history.append((fixes[i], describe(v)))
                chain.code, chain.verdict = fixes[i], v
        calls.check()  # after the round's finished koans are handed over: a stop keeps them


class ModelCalls:
    """A stage's model calls and failures; check() stops the stage above the failure rate it allows."""

    def __init__(self, backend, ctx: StageContext, max_error_rate: float):
        self.server = getattr(backend, "api_base", None) or getattr(backend, "name", "the model")
        self.ctx, self.max_error_rate = ctx, max_error_rate
        self.calls = self.errors = 0
        self.first = ""

    def count(self, gens: list[Generation]) -> None:
        self.calls += len(gens)
        for g in gens:
            if g.error is not None:
                self.errors += 1
                self.first = self.first or g.error

    def check(self) -> None:
        if self.errors > self.max_error_rate * self.calls:
            raise ModelServerError(
                f"the model server {self.server} failed {self.errors} of {self.calls} calls in {self.ctx.stage} "
                f"cycle {self.ctx.cycle} (first: {self.first[:200]}); more than agent.max_model_error_rate="
                f"{self.max_error_rate:g}, so the stage stopped")


def _capped(gen: Generation, limit: int) -> Generation:
    """A reply of at most `limit` characters; a longer one is cut and marked truncated."""
    if len(gen.text) <= limit:
        return gen
    return replace(gen, text=gen.text[:limit], truncated=True)


def _generate(backend, prompts: list, params: list[SamplingParams], adapters: list[str | None]) -> list[Generation]:
    """One backend call per adapter (a batch shares one), the replies back in prompt order."""
    out: list[Generation | None] = [None] * len(prompts)
    for adapter in dict.fromkeys(adapters):
        idx = [i for i, a in enumerate(adapters) if a == adapter]
        for i, g in zip(idx, backend.generate([prompts[i] for i in idx], [params[i] for i in idx], adapter),
                        strict=True):
            out[i] = g
    return out


def _episode(ctx: StageContext, chain: Chain, attempt: int, prompt, gen: Generation, code: str, v: Verdict,
             settings: AgentConfig, params: SamplingParams) -> Episode:
    k = chain.koan
    return Episode(
        run_id=ctx.run_id, experiment=ctx.experiment, cycle=ctx.cycle, stage=ctx.stage, koan_id=k.id,
        family=k.family, split=k.split, attempt=attempt, model=ctx.model, adapter=chain.adapter or "",
        sample=chain.sample, prompt=prompt[-1]["content"], response=gen.text, truncated=gen.truncated, code=code,
        compiled=v.compiled,
        tests_passed=v.tests_passed, passed=v.passed, reason=v.reason, flaky=v.flaky, error_codes=v.error_codes,
        signature=v.signature if v.reason != "model_error" else f"model_error: {(gen.error or '')[:300]}",
        diagnostics=describe(v) if not v.passed else "", tokens_in=gen.tokens_in, tokens_out=gen.tokens_out,
        latency_ms=gen.latency_ms, judge_ms=v.wall_ms, seed=ctx.seed, temperature=settings.temperature)
