"""The night's training set: verified targets for the day's failed train koans, plus replay.

For each koan the day failed, the sources in `night.targets` are tried in order until one gives a
program the sandbox passes: `self` (samples from the current model: rejection sampling),
`teacher` (a served model) and `reference` (the koan's solution). Every target is judged again
before it is kept. Each example is the day's first prompt for the koan and the fix as the model
would write it; the loss falls on the answer tokens only.

Eval-split koans never enter a training set: `build_examples` refuses them, whatever asks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sleepy.koans.model import Koan
from sleepy.models.base import SamplingParams, sample_seed
from sleepy.prompt import answer, chat, extract_fix

SOURCES = ("self", "teacher", "reference")


class EvalLeakError(RuntimeError):
    """An eval-split koan was about to be trained on."""


@dataclass(frozen=True)
class Example:
    koan_id: str
    source: str  # self | teacher | reference | replay
    messages: tuple  # the chat prompt: system + the day's user prompt
    response: str  # the assistant reply trained on


def guard_train_only(koans: list[Koan], eval_ids: set[str]) -> None:
    """Refuse any koan of the eval split (by its split, or by its id being an eval koan's)."""
    leaked = sorted(k.id for k in koans if k.split != "train" or k.id in eval_ids)
    if leaked:
        raise EvalLeakError(f"refusing to train on eval koans: {', '.join(leaked)}")


def failed_koans(day, koans_by_id: dict[str, Koan]) -> list[tuple[Koan, str]]:
    """(koan, its first day prompt) for every koan no attempt of the day passed."""
    import polars as pl

    outcome = (day.sort(["sample", "attempt"]).group_by("koan_id", maintain_order=True)
               .agg(pl.col("passed").any(), pl.col("prompt").first()))
    return [(koans_by_id[r["koan_id"]], r["prompt"]) for r in outcome.iter_rows(named=True) if not r["passed"]]


def earlier_successes(day, koans_by_id: dict[str, Koan], cycle: int, fraction: float, n_new: int,
                      seed: int) -> list[tuple[Koan, str, str]]:
    """Replay: the successes of this run's days before `cycle`, one per koan (its latest), as (koan, prompt, code);
    `fraction` x the night's new examples of them, drawn at random (seeded)."""
    import polars as pl

    if fraction <= 0:
        return []
    wins = day.filter(pl.col("passed") & (pl.col("cycle") < cycle)).sort(["koan_id", "cycle", "sample", "attempt"])
    latest = wins.group_by("koan_id", maintain_order=True).last()
    rows = [(koans_by_id[r["koan_id"]], r["prompt"], r["code"]) for r in latest.iter_rows(named=True)
            if r["koan_id"] in koans_by_id]
    random.Random(seed * 7919 + cycle).shuffle(rows)
    return rows[:max(1, round(fraction * max(1, n_new)))]


def build_examples(failed: list[tuple[Koan, str]], replay: list[tuple[Koan, str, str]], sources: list[str],
                   sandbox, eval_ids: set[str], backend=None, teacher=None, self_samples: int = 4,
                   temperature: float = 0.8, max_tokens: int = 1024, adapter: str | None = None,
                   seed: int = 0) -> tuple[list[Example], dict]:
    """Verified examples for the failed koans (first source that works, in order) and for replay. `seed` seeds the
    samples (with each koan's id, so a koan's samples do not depend on which other koans failed)."""
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise ValueError(f"night.targets: unknown source '{bad[0]}' (valid: {', '.join(SOURCES)})")
    guard_train_only([k for k, _ in failed] + [k for k, _, _ in replay], eval_ids)
    stats = {f"targets_{s}": 0 for s in SOURCES} | {"failed_koans": len(failed), "untargeted": 0, "replay": 0}
    chosen: dict[str, Example] = {}
    for source in sources:
        todo = [(k, p) for k, p in failed if k.id not in chosen]
        if not todo:
            break
        candidates = _candidates(source, todo, backend, teacher, self_samples, temperature, max_tokens, adapter, seed)
        verdicts = sandbox.judge_many([k.program(code) for k, _, code in candidates])
        for (koan, prompt, code), verdict in zip(candidates, verdicts, strict=True):
            if verdict.passed and koan.id not in chosen:
                chosen[koan.id] = Example(koan.id, source, tuple(chat(prompt)), answer(code))
                stats[f"targets_{source}"] += 1
    stats["untargeted"] = len(failed) - len(chosen)
    examples = [chosen[k.id] for k, _ in failed if k.id in chosen]
    replays = sandbox.judge_many([k.program(code) for k, _, code in replay])
    for (koan, prompt, code), verdict in zip(replay, replays, strict=True):
        if verdict.passed:
            examples.append(Example(koan.id, "replay", tuple(chat(prompt)), answer(code)))
            stats["replay"] += 1
    return examples, stats


def _candidates(source, todo, backend, teacher, samples, temperature, max_tokens, adapter, seed):
    """(koan, prompt, code) candidates of one source for the koans still without a target."""
    if source == "reference":
        return [(k, p, k.solution) for k, p in todo]
    model = backend if source == "self" else teacher
    if model is None:
        raise ValueError(f"night.targets asks for '{source}' targets but no {source} model is configured"
                         + (" (night.teacher)" if source == "teacher" else ""))
    n = samples if source == "self" else 1
    prompts = [chat(p) for k, p in todo for _ in range(n)]
    params = [SamplingParams(temperature, max_tokens, seed=sample_seed(seed, source, k.id, j)) for k, _ in todo
              for j in range(n)]
    gens = model.generate(prompts, params, adapter if source == "self" else None)
    out = []
    for i, g in enumerate(gens):
        koan, prompt = todo[i // n]
        if g.error is None and g.text.strip():
            out.append((koan, prompt, extract_fix(g.text)))
    return out


def encode(tokenizer, example: Example, max_length: int) -> dict | None:
    """input_ids and labels for one example: prompt tokens are labelled -100, so only the answer is learned.
    None when the example is longer than max_length."""
    messages = list(example.messages)
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    full_ids = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": example.response}],
                                             tokenize=True)
    prompt_ids, full_ids = _ids(prompt_ids), _ids(full_ids)
    if full_ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template renders the prompt differently with an answer appended")
    if len(full_ids) > max_length:
        return None
    return {"input_ids": full_ids, "labels": [-100] * len(prompt_ids) + full_ids[len(prompt_ids):]}


def _ids(rendered) -> list[int]:
    """apply_chat_template returns a list, or a BatchEncoding/dict holding input_ids, by version."""
    if hasattr(rendered, "keys"):
        rendered = rendered["input_ids"]
    return list(rendered)
