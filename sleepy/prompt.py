"""The one prompt contract: what the model is told, what it is shown, how its fix is read back, and how a fix is
written as an answer. The day and eval (sleepy/agent.py), the night's training examples (sleepy/night/dataset.py)
and the scripted test server (sleepy/testing/scripted_llm.py) all speak it, so what a night trains on is exactly
what a day asks.
"""

from __future__ import annotations

import functools
import re
import subprocess

SYSTEM = ("You are an expert Rust programmer. You fix Rust programs so that they compile (edition 2024) "
          "and pass their tests. Reply with the complete fixed program in one ```rust code block.")
DIAGNOSTICS_CHARS = 3000
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def chat(user: str) -> list[dict]:
    """The chat messages of one attempt: the system text, then the user prompt."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def answer(code: str) -> str:
    """A fix written the way the system text asks for it."""
    return f"```rust\n{code.rstrip()}\n```"


def user_prompt(koan, code: str, verdict, strategy: str = "plain", examples=(), history=()) -> str:
    """The user prompt for the next attempt at `koan`: its code, what the compiler and tests said, the tests; with
    strategy=explain the rustc explanation of the error codes, with memory the retrieved `examples` (diagnostics,
    fix), and the earlier failed attempts in `history` (code, diagnostics)."""
    parts = [f"Task: {koan.title}\n\nFix this Rust program:\n```rust\n{code.rstrip()}\n```",
             f"The compiler and tests say:\n```\n{describe(verdict)}\n```", task(koan)]
    if strategy == "explain":
        for error in verdict.error_codes[:2]:
            if text := explain(error):
                parts.append(f"About {error}:\n{text}")
    if strategy == "memory" and examples:
        shown = "\n\n".join(f"Errors:\n```\n{d[:800]}\n```\nFix:\n```rust\n{c.rstrip()}\n```" for d, c in examples)
        parts.append(f"Similar errors fixed before:\n\n{shown}")
    if history:
        tried = "\n\n".join(f"Attempt {i}:\n```rust\n{c.rstrip()}\n```\nfailed with:\n```\n{d}\n```"
                            for i, (c, d) in enumerate(history, 1))
        parts.append(f"Earlier attempts that did not work:\n\n{tried}")
    return "\n\n".join(parts)


def task(koan) -> str:
    """What counts as a pass, in the prompt: the appended tests, the file's own tests, or main running to its end."""
    if koan.required:  # koan.tests are the solution's: never shown
        return ("Fix the program and its own test module: these tests must still be there, run and pass: "
                + ", ".join(f"`{name}`" for name in koan.required) + ".")
    if koan.mode == "check":
        return "Your program must compile with no error (it is compiled only: not run, no tests)."
    if koan.tests:
        return f"Your program must pass these tests, which are appended to it:\n```rust\n{koan.tests.rstrip()}\n```"
    return "Your program must compile and run to the end of `main` without panicking."


def describe(verdict) -> str:
    """What the compiler or the tests said, as the prompt shows it."""
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


def extract_fix(reply: str) -> str:
    """The program in a reply: the longest rust (or untagged) fenced block anywhere, else the whole reply; a copy
    of the appended test module is dropped, since the sandbox appends its own."""
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
