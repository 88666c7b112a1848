"""What the judge compiles and how a run proves that the koan's tests passed.

A pass must be earned, so the program is never trusted with its own verdict:

- The fix is `include!`d into a crate whose root the judge writes. None of the fix's inner
  attributes reach the crate (`#![cfg(any())]` is an error there; lint levels are hoisted), and a
  dangling attribute at its end attaches to nothing.
- The root forbids unsafe code: no `#[no_mangle]` symbol that replaces `exit` or `write`, no
  `.init_array` constructor, no assembly, no reading of the process's own memory.
- The koan's tests call std's macros by path (`::std::assert_eq!`) and see the std prelude's names
  (`Some`, `String`, `u32`, ...) unless the koan's own solution defines them, so a fix cannot change
  what an assertion means.
- Each `#[test]` runs through a wrapper that, when the koan's test function returned normally (or
  panicked as `#[should_panic]` asks), writes a token drawn at random for this build. The verdict
  needs every token: a program that exits early, forges libtest's summary or rewrites its report has
  none, since the tokens exist only in a binary it can execute but not read, under a crate root file
  whose name it cannot guess at compile time.
- Run mode: the fix lives in `mod koan`, and `main` is ours: it calls the fix's `main` and writes a
  random marker after it returned. `exit(0)` from the middle of `main` leaves no marker.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from sleepy.rust_source import blank, module_span, test_functions, tokens

SOURCE = "koan.rs"  # the fix's file name, as diagnostics show it
HOISTED = ("allow", "warn", "deny", "forbid", "expect", "recursion_limit", "type_length_limit")
STD_MACROS = frozenset(
    "assert assert_eq assert_ne debug_assert debug_assert_eq debug_assert_ne panic unreachable unimplemented todo "
    "matches vec format format_args print println eprint eprintln write writeln dbg concat stringify".split())
PRELUDE = frozenset(
    "Copy Send Sized Sync Unpin Drop Fn FnMut FnOnce drop Box ToOwned Clone PartialEq PartialOrd Eq Ord AsRef "
    "AsMut Into From Default Iterator Extend IntoIterator DoubleEndedIterator ExactSizeIterator Option Some None "
    "Result Ok Err String ToString Vec TryFrom TryInto FromIterator".split())
PRIMITIVES = frozenset("bool char str i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize f32 f64".split())
TOKEN_LINE = re.compile(r"\n@sleepy:([0-9a-f]{32})\n")


@dataclass(frozen=True)
class Build:
    """The crate the judge compiles for one program, and what a run of it must print."""

    files: dict[str, str]  # file name in the work dir -> text
    root: str  # the crate root among files
    tokens: dict[str, str] = field(default_factory=dict)  # test name -> the token its wrapper writes on a pass
    required: tuple[str, ...] = ()  # the tests whose tokens a pass needs
    marker: str = ""  # run mode: written after the fix's main returned
    test_filter: str = ""  # libtest filter that selects the koan's tests

    def meta(self) -> dict:
        return {"tokens": self.tokens, "required": list(self.required), "marker": self.marker,
                "test_filter": self.test_filter}


def build(code: str, tests: str, mode: str, required: tuple[str, ...] = (), koan_names: frozenset[str] = frozenset(),
          nonce: str | None = None) -> Build:
    """The crate for `code` judged in `mode` against `tests` (a `#[cfg(test)] mod` text).

    required: tests of the code's own test module that must pass (whole-file koans, whose tests are
    part of the fix); koan_names: names the koan's solution defines, which its tests may use instead
    of std's."""
    nonce = nonce or secrets.token_hex(8)
    root = f"judge_{nonce}.rs"
    if mode == "check" and not tests.strip() and not required:
        return Build({SOURCE: code}, SOURCE)
    code, hoisted = hoist_inner_attributes(code)
    support = f"__sleepy_{nonce}"
    if mode == "run":
        marker = secrets.token_hex(16)
        text = (f"#![forbid(unsafe_code)]\n{hoisted}\n"
                f"mod koan {{ include!(\"{SOURCE}\"); #[allow(clippy::all)] pub(crate) fn __sleepy_main() "
                f"-> impl crate::{support}::Outcome {{ main() }} }}\n"
                f"fn main() {{ crate::{support}::returned(koan::__sleepy_main(), \"{marker}\"); }}\n"
                + _support(support))
        return Build({SOURCE: code, root: text}, root, marker=marker)
    if required:  # the fix's own test module is the tests; without one, no required test can run
        span = module_span(code, None)
        tests = code[span[0]:span[2]] + "\n" if span else "#[cfg(test)]\nmod tests {}\n"
        code = blank(code, span[0], span[2]) if span else code
    elif (name := module_name(tests)) and (copy := module_span(code, name, cfg_test=False)):
        code = blank(code, copy[0], copy[2])  # a copy of the koan's test module in the fix: the koan's own is used
    if not tests.strip():
        raise ValueError(f"{mode} mode needs the koan's tests (a #[cfg(test)] module)")
    pinned, test_tokens = pin_tests(tests, support, koan_names)
    text = f"#![forbid(unsafe_code)]\n{hoisted}\ninclude!(\"{SOURCE}\");\n{pinned}\n{_support(support)}"
    names = tuple(required) if required else tuple(n for n, t in test_tokens.items() if t)
    return Build({SOURCE: code, root: text}, root, {n: t for n, t in test_tokens.items() if t}, names,
                 test_filter=f"{module_name(tests)}::")


def hoist_inner_attributes(code: str) -> tuple[str, str]:
    """(code without its leading lint-level inner attributes, those attributes): an included file may hold
    no inner attribute, and lint levels are the fix's to choose. Inner doc comments become plain comments;
    any other inner attribute stays, and the compiler refuses it."""
    hoisted = []
    toks = tokens(code, keep_trivia=True)
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.kind == "space":
            i += 1
        elif t.kind == "comment":
            if t.text.startswith(("//!", "/*!")):
                code = code[:t.start + 2] + " " + code[t.start + 3:]
            i += 1
        elif t.text == "#" and i + 2 < len(toks) and toks[i + 1].text == "!" and toks[i + 2].text == "[":
            depth, j = 0, i + 2
            while j < len(toks):
                depth += {"[": 1, "]": -1}.get(toks[j].text, 0) if toks[j].kind == "punct" else 0
                if depth == 0:
                    break
                j += 1
            head = next((x.text for x in toks[i + 3:j] if x.kind == "ident"), "")
            if head in HOISTED:
                hoisted.append(" ".join(code[t.start:toks[j].end].split()))
                code = blank(code, t.start, toks[j].end)
            i = j + 1
        else:
            break
    return code, "\n".join(hoisted)


def module_name(tests: str) -> str:
    toks = tokens(tests)
    return next((toks[i + 1].text for i, t in enumerate(toks[:-1]) if t.text == "mod"), "")


def pin_tests(tests: str, support: str, koan_names: frozenset[str]) -> tuple[str, dict[str, str]]:
    """The test module with every #[test] wrapped to write a token on a pass, std macros called by path and
    std prelude names imported explicitly; and {test name: token ('' for an ignored test)}.
    Only text on existing lines changes, so a diagnostic in the tests keeps its line number."""
    own = koan_names | _defined_in(tests)
    inserts: list[tuple[int, str]] = []
    blanks: list[tuple[int, int]] = []
    renames: list[tuple[int, int, str]] = []
    found: dict[str, str] = {}
    for fn in test_functions(tests):
        token = "" if fn.ignored else secrets.token_hex(16)
        found[fn.name] = token
        kept = " ".join(" ".join(a.text.split()) for a in fn.attributes
                        if a.path not in ("test", "should_panic", "ignore"))
        if fn.expected_panic is None:
            body = f"crate::{support}::returned(__sleepy_{fn.name}(), \"{token}\")"
        else:
            body = f"crate::{support}::panicked(__sleepy_{fn.name}, {_rust_str(fn.expected_panic)}, \"{token}\")"
        ignore = "#[ignore] " if fn.ignored else ""
        inserts.append((min(a.start for a in fn.attributes),
                        f"#[test] {ignore}{kept} #[allow(clippy::all)] fn {fn.name}() {{ {body}; }} "))
        blanks += [(a.start, a.end) for a in fn.attributes if a.path in ("test", "should_panic", "ignore")]
        renames.append((fn.name_start, fn.name_start + len(fn.name), f"__sleepy_{fn.name}"))
    toks = tokens(tests)
    for i, t in enumerate(toks[:-2]):
        if (t.kind == "ident" and t.text in STD_MACROS and t.text not in own and toks[i + 1].text == "!"
                and toks[i + 2].text in ("(", "[", "{") and not (i > 0 and toks[i - 1].text == ":")):
            inserts.append((t.start, "::std::"))
    used = {t.text for t in toks if t.kind == "ident"}
    span = module_span(tests, None, cfg_test=False)
    if span:
        pins = [f"::std::prelude::rust_2024::{n}" for n in sorted((used & PRELUDE) - own)]
        pins += [f"::core::primitive::{n}" for n in sorted((used & PRIMITIVES) - own)]
        inserts.append((span[1] + 1, "".join(f" #[allow(unused_imports)] use {p};" for p in pins)))
    out = tests
    for start, end in blanks:
        out = blank(out, start, end)
    edits = [(s, s, text) for s, text in inserts] + renames
    for start, end, text in sorted(edits, key=lambda e: e[0], reverse=True):
        out = out[:start] + text + out[end:]
    return out, found


def _rust_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _defined_in(src: str) -> frozenset[str]:
    from sleepy.rust_source import defined_names

    return frozenset(defined_names(src))


def _support(name: str) -> str:
    """The module the wrappers call: what a test's outcome means, and how a pass is written down."""
    return f"""#[doc(hidden)]
#[allow(dead_code, clippy::all)]
mod {name} {{
    pub(crate) trait Outcome {{ fn succeeded(self); }}
    impl Outcome for () {{ fn succeeded(self) {{}} }}
    impl<E: ::core::fmt::Debug> Outcome for ::core::result::Result<(), E> {{
        fn succeeded(self) {{
            if let ::core::result::Result::Err(e) = self {{ ::std::panic!("Error: {{e:?}}"); }}
        }}
    }}
    pub(crate) fn seen(token: &str) {{
        use ::std::io::Write;
        let mut out = ::std::io::stdout().lock();
        let _ = out.write_all(::std::format!("\\n@sleepy:{{token}}\\n").as_bytes());
        let _ = out.flush();
    }}
    pub(crate) fn returned<T: Outcome>(outcome: T, token: &str) {{
        Outcome::succeeded(outcome);
        seen(token);
    }}
    pub(crate) fn panicked(test: fn(), expected: &str, token: &str) {{
        match ::std::panic::catch_unwind(test) {{
            ::core::result::Result::Ok(()) => ::std::panic!("the test did not panic, as #[should_panic] expects"),
            ::core::result::Result::Err(payload) => {{
                let message = payload.downcast_ref::<&str>().map(|s| ::std::string::ToString::to_string(s))
                    .or_else(|| payload.downcast_ref::<::std::string::String>().cloned()).unwrap_or_default();
                if !message.contains(expected) {{
                    ::std::panic!("the panic message {{message:?}} does not contain {{expected:?}}");
                }}
                seen(token);
            }}
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Outcome:
    """What one run of a built program showed."""

    passed: list[str]  # required tests seen to pass (their tokens were written)
    missing: list[str]  # required tests that did not
    marker_seen: bool
    output: str  # stdout with the tokens and the marker taken out


def read_run(build_meta: dict, stdout: str) -> Outcome:
    """Which of the build's tokens (and its marker) a run wrote; stdout without them."""
    written = set(TOKEN_LINE.findall(stdout))
    tokens_ = build_meta.get("tokens", {})
    required = build_meta.get("required", [])
    passed = [n for n in required if tokens_.get(n) in written]
    missing = [n for n in required if n not in passed]
    marker = build_meta.get("marker", "")
    clean = TOKEN_LINE.sub("", stdout)
    return Outcome(passed, missing, bool(marker) and marker in written, clean)
