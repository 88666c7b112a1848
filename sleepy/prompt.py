"""The one prompt contract: what the model is told, what it is shown, how its fix is read back, and how a fix is
written as an answer. The day and eval (sleepy/agent.py), the night's training examples (sleepy/night/dataset.py)
and the scripted test server (sleepy/testing/scripted_llm.py) all speak it, so what a night trains on is exactly
what a day asks.
"""

from __future__ import annotations

import functools
import html
import re
import subprocess

from sleepy.rust_source import RustSourceError, split_module

SYSTEM = ("You are an expert Rust programmer. You fix Rust programs so that they compile (edition 2024) "
          "and pass their tests. Reply with the complete fixed program in one ```rust code block.")
DIAGNOSTICS_CHARS = 3000


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
        text = f"(no program: the model did not answer: {verdict.output.strip()})"
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
    """The program in a reply: of its code blocks (fenced with ``` or ~~~ of any length, inside a ````markdown
    wrapper too, else <pre><code>, else indented by four spaces) the longest complete rust (or untagged) one, else
    the longest rust one, else the longest block, else the whole reply. A copy of the appended test module is
    dropped, since the sandbox appends its own."""
    found = code_blocks(reply)
    rust = [body for lang, body in found if lang in ("rust", "rs", "")]
    complete = [body for body in rust if _complete(body)]
    code = max(complete or rust or [body for _, body in found] or [reply], key=len)
    return strip_test_module(code.strip() + "\n", "koan_tests")


_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*([\w+#.-]*)")
_RUST_LINE = re.compile(r"(fn|pub|use|mod|struct|enum|impl|trait|type|const|static|let|macro_rules!|extern)\b|[#}/]")
_PRE = re.compile(r"<pre[^>]*>\s*(?:<code[^>]*>)?(.*?)(?:</code>\s*)?</pre>", re.S | re.I)
_WRAPPERS = ("markdown", "md")


def code_blocks(reply: str) -> list[tuple[str, str]]:
    """(language, body) of each code block in a reply; a markdown block's own blocks in its place."""
    lines = reply.split("\n")
    out, i = [], 0
    while i < len(lines):
        if not (m := _OPEN.match(lines[i])) or (m.group(1)[0] == "`" and "`" in lines[i][m.end():]):
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower().lstrip(".")
        end = _closing(lines, i + 1, fence, rust=lang in ("rust", "rs", ""))
        body = "\n".join(lines[i + 1:end])
        out.extend(code_blocks(body) or [(lang, body)] if lang in _WRAPPERS else [(lang, body)])
        i = end + 1
    if not out:
        out = [("", html.unescape(body)) for body in _PRE.findall(reply)]
    if not out and (indented := _indented(lines)):
        out = [("", indented)]
    return out


def _closing(lines: list[str], start: int, fence: str, rust: bool) -> int:
    """The line that closes a block opened with `fence` (a fence of its character, at least as long, alone on its
    line), or len(lines) for a reply cut off inside it. In a rust block a fence line inside a string literal or
    a comment does not close it, unless nothing later does."""
    candidates = [j for j in range(start, len(lines)) if re.fullmatch(
        rf" {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", lines[j])]
    for j in candidates:
        if not rust or _lexes("\n".join(lines[start:j])):
            return j
    return candidates[0] if candidates else len(lines)


def _lexes(src: str) -> bool:
    from sleepy.rust_source import RustSourceError, tokens

    try:
        tokens(src)
    except RustSourceError:
        return False
    return True


def _complete(src: str) -> bool:
    """Rust that lexes and whose brackets all close: a whole program rather than a fragment cut off."""
    from sleepy.rust_source import RustSourceError, tokens

    try:
        toks = tokens(src)
    except RustSourceError:
        return False
    depth = 0
    for t in toks:
        if t.kind == "punct" and t.text in "([{":
            depth += 1
        elif t.kind == "punct" and t.text in ")]}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0 and bool(toks)


def _indented(lines: list[str]) -> str:
    """The longest run of lines indented by four spaces or a tab (blank lines inside it kept), dedented; none
    when the unindented lines are Rust themselves (an unfenced program, whose bodies are indented)."""
    if any(_RUST_LINE.match(line) for line in lines if line.strip() and not line[0].isspace()):
        return ""
    best, run = [], []
    for line in [*lines, "end"]:
        if line.startswith(("    ", "\t")) or (run and not line.strip()):
            run.append(line[4:] if line.startswith("    ") else line[1:])
        else:
            while run and not run[-1].strip():
                run.pop()
            best, run = max(best, run, key=len), []
    return "\n".join(best)


def strip_test_module(code: str, name: str) -> str:
    if f"mod {name}" not in code:
        return code
    try:
        stripped, _ = split_module(code, name)
    except RustSourceError:  # an unbalanced module is judged as it is
        return code
    return stripped
