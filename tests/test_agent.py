"""Prompt, fix extraction and strategies of the agent."""

from sleepy.agent import Chain, build_prompt, extract_fix
from sleepy.config import AgentConfig
from sleepy.koans import load_pack

KOAN = load_pack().select("borrow_checker", "train", count=1)[0]


def test_fix_is_the_longest_rust_block_anywhere_in_the_reply():
    reply = "Try this:\n```rust\nfn a() {}\n```\nor better:\n```rust\nfn main() { let x = 1; }\n```\nDone."
    assert extract_fix(reply) == "fn main() { let x = 1; }\n"


def test_fix_without_a_fence_is_the_whole_reply_and_a_cut_fence_still_counts():
    assert extract_fix("fn main() {}") == "fn main() {}\n"
    assert extract_fix("```rust\nfn main() { cut off") == "fn main() { cut off\n"


def test_an_echoed_copy_of_the_koan_tests_is_dropped():
    reply = f"```rust\nfn main() {{}}\n\n{KOAN.tests}```"
    assert extract_fix(reply) == "fn main() {}\n"


def chain(sandbox):
    return Chain(KOAN, 0, KOAN.code, sandbox.judge(KOAN.code, KOAN.tests))


def test_plain_prompt_holds_code_diagnostics_and_tests(sandbox):
    c = chain(sandbox)
    user = build_prompt(c, AgentConfig())[-1]["content"]
    assert KOAN.code.strip() in user and KOAN.tests.strip() in user
    assert c.verdict.errors[0].rendered.strip().splitlines()[0] in user
    assert "rustc --explain" not in user and "Earlier attempts" not in user


def test_explain_prompt_adds_the_rustc_explanation(sandbox):
    c = chain(sandbox)
    user = build_prompt(c, AgentConfig(prompt="explain"))[-1]["content"]
    code = c.verdict.error_codes[0]
    assert f"About {code}:" in user and "Erroneous code example" in user


def test_history_shows_earlier_failed_attempts(sandbox):
    c = chain(sandbox)
    c.history.append(("fn first_try() {}\n", "error[E0425]: cannot find function"))
    assert "fn first_try" in build_prompt(c, AgentConfig(history=True))[-1]["content"]
    assert "fn first_try" not in build_prompt(c, AgentConfig(history=False))[-1]["content"]


def test_memory_prompt_shows_retrieved_examples(sandbox):
    c = chain(sandbox)
    user = build_prompt(c, AgentConfig(prompt="memory"), [("error[E0382]: use of moved", "fn remembered() {}\n")])
    assert "Similar errors fixed before" in user[-1]["content"] and "fn remembered" in user[-1]["content"]
