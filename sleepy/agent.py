"""The agent: prompt, fix extraction and the attempt loop (a model backend and the sandbox).

Attempt k is the k-th model call for a koan; steps to green is the attempt whose code passes.
All unsolved koans advance together, one attempt per round: their prompts go to the backend as one
batch (served concurrently or batched on the GPU) and their fixes to the sandbox in parallel. A
koan's attempts are handed to `on_done` as soon as it passes or runs out of attempts, so an
interrupted stage keeps every koan it finished.
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from sleepy.config import AgentConfig
from sleepy.episodes import Episode
from sleepy.koans.model import Koan
from sleepy.models.base import Generation, SamplingParams
from sleepy.sandbox import Verdict

STRATEGIES = ("plain", "explain", "memory")
SYSTEM = ("You are an expert Rust programmer. You fix Rust programs so that they compile (edition 2024) "
          "and pass their tests. Reply with the complete fixed program in one ```rust code block.")
DIAGNOSTICS_CHARS = 3000
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


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


def extract_fix(reply: str) -> str:
    """The program in a reply: the longest rust (or untagged) fenced block anywhere, else the whole
    reply; a copy of the appended test module is dropped, since the sandbox appends its own."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(reply)]
    rust = [b for lang, b in blocks if lang in ("rust", "rs", "")]
    code = max(rust or [b for _, b in blocks] or [reply], key=len)
    return strip_test_module(code.strip() + "\n", "koan_tests")


def strip_test_module(code: str, name: str) -> str:
    from sleepy.koans.rustlings import split_tests

    if f"mod {name}" not in code:
        return code
    try:
        stripped, _ = split_tests(code, name)
    except Exception:  # noqa: BLE001 - an unbalanced module is judged as it is
        return code
    return stripped


def describe(verdict: Verdict) -> str:
    """What the compiler or the tests said, for the prompt."""
    if verdict.errors:
        text = "\n".join(d.rendered.rstrip() for d in verdict.errors)
    elif verdict.reason == "model_error":
        text = "(no program: the model did not answer)"
    elif verdict.reason == "incomplete":
        text = f"incomplete: the program exited before every test (or main) ran to its end:\n{verdict.output.strip()}"
    else:
        text = f"{verdict.reason}:\n{verdict.output.strip()}"
    return text[:DIAGNOSTICS_CHARS]


@functools.cache
def explain(code: str) -> str:
    """`rustc --explain CODE`, shortened to its first paragraphs."""
    try:
        out = subprocess.run(["rustc", "--explain", code], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip()[:1500]


def task(k: Koan) -> str:
    """What counts as a pass, in the prompt: the appended tests, the file's own tests, or main running to its end."""
    if k.required:  # k.tests are the solution's: never shown
        return ("Fix the program and its own test module: these tests must still be there, run and pass: "
                + ", ".join(f"`{name}`" for name in k.required) + ".")
    if k.mode == "check":
        return "Your program must compile with no error (it is compiled only: not run, no tests)."
    if k.tests:
        return f"Your program must pass these tests, which are appended to it:\n```rust\n{k.tests.rstrip()}\n```"
    return "Your program must compile and run to the end of `main` without panicking."


def build_prompt(chain: Chain, settings: AgentConfig, examples: list[tuple[str, str]] = ()) -> list[dict]:
    """The chat prompt for the next attempt: code, diagnostics, the koan's tests; more by strategy."""
    k = chain.koan
    parts = [f"Task: {k.title}\n\nFix this Rust program:\n```rust\n{chain.code.rstrip()}\n```",
             f"The compiler and tests say:\n```\n{describe(chain.verdict)}\n```", task(k)]
    if settings.prompt == "explain":
        for code in chain.verdict.error_codes[:2]:
            if text := explain(code):
                parts.append(f"About {code}:\n{text}")
    if settings.prompt == "memory" and examples:
        shown = "\n\n".join(f"Errors:\n```\n{d[:800]}\n```\nFix:\n```rust\n{c.rstrip()}\n```" for d, c in examples)
        parts.append(f"Similar errors fixed before:\n\n{shown}")
    if settings.history and chain.history:
        tried = "\n\n".join(f"Attempt {i}:\n```rust\n{c.rstrip()}\n```\nfailed with:\n```\n{d}\n```"
                            for i, (c, d) in enumerate(chain.history, 1))
        parts.append(f"Earlier attempts that did not work:\n\n{tried}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def _seed(base: int, koan_id: str, sample: int, attempt: int) -> int:
    digest = hashlib.sha256(f"{base}/{koan_id}/{sample}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def attempt_koans(koans: list[Koan], backend, sandbox, settings: AgentConfig, ctx: StageContext,
                  on_done: Callable[[Koan, list[Episode]], None],
                  memory: Callable[[str], list[tuple[str, str]]] | None = None,
                  on_round: Callable[[int, int], None] | None = None,
                  router: Callable[[Verdict], str | None] | None = None) -> None:
    """Attempt every koan up to max_attempts times (per sample); on_done(koan, episodes) per koan.
    router: the adapter for a koan from the verdict on its broken code (else every koan gets ctx.adapter)."""
    if settings.prompt not in STRATEGIES:
        raise ValueError(f"agent.prompt must be one of {', '.join(STRATEGIES)}; got {settings.prompt!r}")
    first = sandbox.judge_many([k.program() for k in koans])
    chains = [Chain(k, s, k.code, v, adapter=router(v) if router else ctx.adapter)
              for k, v in zip(koans, first, strict=True) for s in range(settings.samples)]
    pending = {k.id: settings.samples for k in koans}
    for attempt in range(1, settings.max_attempts + 1):
        active = [c for c in chains if not c.done]
        if not active:
            break
        prompts = [build_prompt(c, settings, memory(describe(c.verdict)) if memory else []) for c in active]
        params = [SamplingParams(settings.temperature, settings.max_tokens, seed=_seed(ctx.seed, c.koan.id, c.sample,
                                                                                     attempt)) for c in active]
        gens = _generate(backend, prompts, params, [c.adapter for c in active])
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
        if on_round:
            on_round(attempt, len(active))


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
        sample=chain.sample, prompt=prompt[-1]["content"], response=gen.text, code=code, compiled=v.compiled,
        tests_passed=v.tests_passed, passed=v.passed, reason=v.reason, flaky=v.flaky, error_codes=v.error_codes,
        signature=v.signature if v.reason != "model_error" else f"model_error: {(gen.error or '')[:80]}",
        diagnostics=describe(v) if not v.passed else "", tokens_in=gen.tokens_in, tokens_out=gen.tokens_out,
        latency_ms=gen.latency_ms, judge_ms=v.wall_ms, seed=ctx.seed, temperature=settings.temperature)
