"""The prompt contract (sleepy/prompt.py): what the model is shown per strategy, and how its fix is read back."""

import pytest

from sleepy.koans import load_pack
from sleepy.prompt import answer, chat, extract_fix, user_prompt

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


def test_an_answer_reads_back_as_the_fix_it_holds():
    assert extract_fix(answer(KOAN.solution)) == KOAN.solution.strip() + "\n"


def test_the_chat_is_the_system_text_then_the_user_prompt():
    messages = chat("fix it")
    assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"] == "fix it"
    assert "```rust" in messages[0]["content"]  # the system text asks for the answer format extract_fix reads


def broken(sandbox):
    return sandbox.judge(KOAN.code, KOAN.tests)


def test_plain_prompt_holds_code_diagnostics_and_tests(sandbox):
    verdict = broken(sandbox)
    user = user_prompt(KOAN, KOAN.code, verdict)
    assert KOAN.code.strip() in user and KOAN.tests.strip() in user
    assert verdict.errors[0].rendered.strip().splitlines()[0] in user
    assert "About E" not in user and "Earlier attempts" not in user


def test_explain_prompt_adds_the_rustc_explanation(sandbox):
    verdict = broken(sandbox)
    user = user_prompt(KOAN, KOAN.code, verdict, "explain")
    assert f"About {verdict.error_codes[0]}:" in user and "Erroneous code example" in user


def test_history_shows_earlier_failed_attempts(sandbox):
    history = [("fn first_try() {}\n", "error[E0425]: cannot find function")]
    assert "fn first_try" in user_prompt(KOAN, KOAN.code, broken(sandbox), history=history)
    assert "fn first_try" not in user_prompt(KOAN, KOAN.code, broken(sandbox))


def test_memory_prompt_shows_retrieved_examples(sandbox):
    user = user_prompt(KOAN, KOAN.code, broken(sandbox), "memory", [("error[E0382]: use of moved", "fn remembered() {}\n")])
    assert "Similar errors fixed before" in user and "fn remembered" in user


def _forms(program: str) -> dict[str, str]:
    import html

    indented = "\n".join("    " + line if line.strip() else "" for line in program.splitlines())
    return {
        "backticks": f"Here is the fix:\n```rust\n{program}\n```\nIt compiles now.",
        "tildes": f"Here is the fix:\n~~~rust\n{program}\n~~~\n",
        "long fence": f"`````rs\n{program}\n`````",
        "indented": f"The fixed program:\n\n{indented}\n\nThat's all.",
        "html": f"<p>Fixed:</p>\n<pre><code class=\"language-rust\">{html.escape(program)}</code></pre>",
        "markdown wrapper": f"````markdown\nThe fix:\n```rust\n{program}\n```\n````",
        "untagged": f"```\n{program}\n```",
    }


@pytest.mark.parametrize("form", list(_forms("")))
def test_every_code_block_form_reads_back_as_the_program_and_passes(form, sandbox):
    reply = _forms(KOAN.solution.rstrip())[form]
    fix = extract_fix(reply)
    assert fix == KOAN.solution.strip() + "\n"
    assert sandbox.judge_program(KOAN.program(fix)).passed


def test_a_fence_inside_a_string_literal_or_a_doc_comment_does_not_end_the_block():
    inline = 'fn main() {\n    let s = "```";\n    println!("{s}");\n}'
    multiline = 'fn main() {\n    let s = "a\n```\nb";\n    println!("{s}");\n}'
    doc = '/// Use it like this:\n/// ```\n/// let x = f();\n/// ```\nfn f() -> i32 {\n    1\n}\n\nfn main() {}'
    for program in (inline, multiline, doc):
        assert extract_fix(f"Fix:\n```rust\n{program}\n```\nDone.") == program + "\n"


def test_a_complete_program_wins_over_a_longer_fragment_and_unfenced_code_is_whole():
    fragment = "impl Stack {\n    fn push(&mut self, x: i32) {\n        self.items.push(x);\n        // and more, cut"
    program = "fn main() {\n    let v = vec![1];\n}"
    assert extract_fix(f"```rust\n{fragment}\n```\nWhole:\n```rust\n{program}\n```") == program + "\n"
    assert extract_fix(program) == program + "\n"  # no fence: its indented body is not taken for a block
