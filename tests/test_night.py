"""The night's training set: verified targets in order, replay, the loss mask, and no eval koan ever."""

import pytest

from sleepy.koans import load_pack
from sleepy.night.dataset import EvalLeakError, Example, build_examples, earlier_successes, encode
from sleepy.prompt import answer
from sleepy.testing.scripted_llm import Script, ScriptedLLMServer, Step

PACK = load_pack()
TRAIN = PACK.select("borrow_checker", "train", count=3)
EVAL_IDS = {k.id for k in PACK.koans if k.split == "eval"}


def failed(koans):
    return [(k, f"Task: {k.title}\nFix this:\n{k.code}") for k in koans]


def test_reference_targets_are_verified_solutions(sandbox):
    examples, stats = build_examples(failed(TRAIN), [], ["reference"], sandbox, EVAL_IDS)
    assert [e.koan_id for e in examples] == [k.id for k in TRAIN]
    assert all(e.source == "reference" and e.response == answer(k.solution) for e, k in zip(examples, TRAIN, strict=True))
    assert stats["targets_reference"] == 3 and stats["untargeted"] == 0
    assert examples[0].messages[0]["role"] == "system" and examples[0].messages[1]["content"].startswith("Task:")


def test_sources_are_tried_in_order_and_wrong_targets_rejected(sandbox):
    from sleepy.models.litellm_backend import LiteLLMBackend

    a, b, c = TRAIN
    script = Script({a.title: [Step(reply=answer(a.solution))], b.title: [Step(reply=answer(b.code))],
                     c.title: [Step(reply="no code here")]})
    with ScriptedLLMServer(script) as server:
        model = LiteLLMBackend("scripted", "openai", server.url + "/v1")
        examples, stats = build_examples(failed(TRAIN), [], ["self", "reference"], sandbox, EVAL_IDS,
                                         backend=model, self_samples=2)
    assert [(e.koan_id, e.source) for e in examples] == [(a.id, "self"), (b.id, "reference"), (c.id, "reference")]
    assert (stats["targets_self"], stats["targets_reference"]) == (1, 2)


def test_a_broken_reference_is_not_trained_on(sandbox):
    from dataclasses import replace

    broken = replace(TRAIN[0], solution=TRAIN[0].code)
    examples, stats = build_examples(failed([broken]), [], ["reference"], sandbox, EVAL_IDS)
    assert examples == [] and stats["untargeted"] == 1


def test_replay_examples_are_rejudged(sandbox):
    a, b, _ = TRAIN
    replay = [(a, "prompt a", a.solution), (b, "prompt b", b.code)]
    examples, stats = build_examples([], replay, ["reference"], sandbox, EVAL_IDS)
    assert [(e.koan_id, e.source) for e in examples] == [(a.id, "replay")] and stats["replay"] == 1


def test_replay_takes_each_earlier_success_once_and_nothing_of_today():
    """Before: replay took the day's successes of cycles <= c (today's included), every passed attempt of a koan."""
    import polars as pl

    a, b, c = TRAIN
    day = pl.DataFrame([{"koan_id": k.id, "cycle": cycle, "sample": 0, "attempt": 1, "passed": passed,
                         "prompt": f"prompt {k.id} {cycle}", "code": f"code {k.id} {cycle}"}
                        for k, cycle, passed in [(a, 1, True), (a, 2, True), (b, 1, False), (b, 3, True), (c, 2, True)]])
    replay = earlier_successes(day, {k.id: k for k in TRAIN}, cycle=3, fraction=1.0, n_new=10, seed=0)
    assert sorted((k.id, p, code) for k, p, code in replay) == [(a.id, f"prompt {a.id} 2", f"code {a.id} 2"),
                                                               (c.id, f"prompt {c.id} 2", f"code {c.id} 2")]
    assert len(earlier_successes(day, {k.id: k for k in TRAIN}, cycle=3, fraction=0.5, n_new=2, seed=0)) == 1
    assert earlier_successes(day, {k.id: k for k in TRAIN}, cycle=3, fraction=0.0, n_new=2, seed=0) == []


def test_eval_koans_never_enter_a_training_set(sandbox):
    eval_koan = PACK.select("borrow_checker", "eval", count=1)[0]
    with pytest.raises(EvalLeakError, match=eval_koan.id):
        build_examples(failed([eval_koan]), [], ["reference"], sandbox, EVAL_IDS)
    from dataclasses import replace

    disguised = replace(eval_koan, split="train")  # an eval koan relabelled is still refused by its id
    with pytest.raises(EvalLeakError):
        build_examples([], [(disguised, "p", disguised.solution)], ["reference"], sandbox, EVAL_IDS)


def test_unknown_source_is_refused(sandbox):
    with pytest.raises(ValueError, match="unknown source 'oracle'"):
        build_examples(failed(TRAIN), [], ["oracle"], sandbox, EVAL_IDS)


def test_prompt_tokens_carry_label_minus_100():
    from transformers import AutoTokenizer

    from sleepy.models.tiny import build_tiny

    tok = AutoTokenizer.from_pretrained(str(build_tiny()))
    ex = Example("k", "reference", ({"role": "system", "content": "sys"}, {"role": "user", "content": "fix it"}),
                 answer("fn main() {}"))
    enc = encode(tok, ex, 4096)
    prompt = tok.apply_chat_template(list(ex.messages), add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    n = len(prompt)
    assert enc["input_ids"][:n] == prompt and enc["labels"][:n] == [-100] * n
    answer_ids = enc["labels"][n:]
    assert -100 not in answer_ids and answer_ids == enc["input_ids"][n:]
    assert tok.decode(answer_ids).startswith("```rust\nfn main() {}\n```<|im_end|>")
    assert encode(tok, ex, n) is None  # too long: dropped, not truncated into a wrong example
