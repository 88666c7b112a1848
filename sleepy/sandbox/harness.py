"""What the judge compiles and how a run proves that the koan's tests passed.

A pass must be earned, so the program is never trusted with its own verdict:

- The fix is `include!`d into a crate whose root the judge writes. None of the fix's inner
  attributes reach the crate (`#![cfg(any())]` is an error there; lint levels are hoisted), and a
  dangling attribute at its end attaches to nothing.
- The root forbids unsafe code: no `#[no_mangle]` symbol that replaces `exit` or `write`, no
  `.init_array` constructor, no assembly.
- The koan's tests see only what the koan's own solution gives them: instead of `use super::*`
  they import, by name, the items the solution defines (and its traits, whose methods the fix may
  not extend) and the solution's std imports by absolute path. So a fix's extra trait cannot take
  over a std method the tests call, a fix's `mod std` or `struct String` cannot stand in for std's,
  std's macros are called by path (`::std::assert_eq!`) and `assert!` takes a `bool`.
- Each `#[test]` runs through a wrapper that, when the koan's test function returned (or panicked as
  `#[should_panic]` asks), writes a token drawn at random for this build. A pass needs each test's
  token inside libtest's own report line for that test, and no other token anywhere: a program that
  exits early, forges libtest's summary or prints tokens it found has none in the right places
  (decoys sit beside the real tokens in the binary, which the program may execute but not read).
- Run mode: the fix lives in `mod koan`, and `main` is ours: it calls the fix's `main` and writes a
  random marker after it returned. The judge also compares what it printed with the solution's output.
- Whole-file koans (the fix edits its own tests, as in rustlings): the fix's test module must keep the
  required tests and pass them, and the fix must also pass the solution's tests.
- Clippy koans: a fix may not silence a lint the solution does not.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from sleepy.rust_source import (
    RustSourceError,
    TopLevel,
    attribute_at,
    blank,
    module_span,
    test_functions,
    tokens,
    top_level,
)

SOURCE = "koan.rs"  # the fix's file name, as diagnostics show it
REFERENCE_MODULE = "sleepy_reference_tests"  # whole-file koans: the solution's tests, beside the fix's own
HOISTED = ("allow", "warn", "deny", "forbid", "expect", "recursion_limit", "type_length_limit")
STD_MACROS = frozenset(
    "assert assert_eq assert_ne debug_assert debug_assert_eq debug_assert_ne panic unreachable unimplemented todo "
    "matches vec format format_args print println eprint eprintln write writeln dbg concat stringify".split())
BOOL_ASSERTS = frozenset(("assert", "debug_assert"))
CRATES = frozenset(("std", "core", "alloc"))
DECOYS = 16
TOKEN_LINE = re.compile(r"\n@sleepy:([0-9a-f]{32})\n")
PASSED_LINE = re.compile(r"^test (\S+) \.\.\. \n@sleepy:([0-9a-f]{32})\nok$", re.M)


@dataclass(frozen=True)
class Api:
    """What a koan's reference solution gives its tests: its top-level names, traits and std imports."""

    items: dict = field(default_factory=dict)  # name -> kind
    traits: dict = field(default_factory=dict)  # trait -> method names
    imports: tuple[str, ...] = ()  # the solution's std imports, as absolute paths `::std::x::Y` (or `... as Z`)
    names: frozenset[str] = frozenset()  # every name the tests may take from the fix
    silenced: frozenset[str] = frozenset()  # the lint-silencing attributes the solution itself has

    @classmethod
    def of(cls, solution: str) -> Api:
        try:
            top = top_level(solution)
        except RustSourceError:
            return cls()
        imports, names = [], {n for n, kind in top.items.items() if kind != "macro"}
        for u in top.uses:
            if u.path and u.path[0].lstrip(":") in CRATES:
                path = "::" + "::".join(u.path)
                imports.append(path if u.name in ("*", u.path[-1]) else f"{path} as {u.name}")
            elif u.name == "*" and u.path[:-1] and u.path[-2] in top.variants:  # `use Enum::*`
                names.update(top.variants[u.path[-2]])
            elif u.name != "*":
                names.add(u.name)
        return cls(top.items, top.traits, tuple(imports), frozenset(names), frozenset(silencing(solution)))

    def key(self) -> list:
        return [sorted(self.items.items()), sorted((k, sorted(v)) for k, v in self.traits.items()), list(self.imports),
                sorted(self.names), sorted(self.silenced)]


@dataclass(frozen=True)
class Build:
    """The crate the judge compiles for one program, and what a run of it must print."""

    files: dict[str, str]  # file name in the work dir -> text
    root: str  # the crate root among files
    tokens: dict[str, str] = field(default_factory=dict)  # "module::test" -> the token its wrapper writes on a pass
    required: tuple[str, ...] = ()  # the tests ("module::test") whose tokens a pass needs
    marker: str = ""  # run mode: written after the fix's main returned
    filters: tuple[str, ...] = ()  # libtest filters that select the tests
    refused: str = ""  # why the fix is refused before it is compiled

    def meta(self) -> dict:
        return {"tokens": self.tokens, "required": list(self.required), "marker": self.marker,
                "filters": list(self.filters), "root": self.root}


def build(code: str, tests: str, mode: str, required: tuple[str, ...] = (), api: Api | None = None,
          clippy: bool = False, nonce: str | None = None) -> Build:
    """The crate for `code` judged in `mode` against `tests` (a `#[cfg(test)] mod` text).

    required: whole-file koans, the tests the code's own test module must keep (and `tests` are the
    solution's); api: what the koan's solution gives its tests (None: a program judged without a koan,
    whose tests keep their own imports)."""
    nonce = nonce or secrets.token_hex(8)
    root = f"judge_{nonce}.rs"
    if mode == "check" and not tests.strip() and not required:
        return Build({SOURCE: code}, SOURCE)
    if refused := refusal(code, api, clippy):
        return Build({SOURCE: code}, SOURCE, refused=refused)
    code, hoisted = hoist_inner_attributes(code)
    support = f"__sleepy_{nonce}"
    header = f"#![forbid(unsafe_code)]\n{hoisted}\n"
    if mode == "run":
        marker = secrets.token_hex(16)
        text = (header + f"mod koan {{ include!(\"{SOURCE}\"); #[allow(clippy::all)] pub(crate) fn __sleepy_main() "
                f"-> impl crate::{support}::Outcome {{ main() }} }}\n"
                f"fn main() {{ crate::{support}::returned(koan::__sleepy_main(), \"{marker}\"); }}\n"
                + _support(support))
        return Build({SOURCE: code, root: text}, root, marker=marker)
    if not tests.strip():
        raise ValueError(f"{mode} mode needs the koan's tests (a #[cfg(test)] module)")
    modules: list[tuple[str, str, tuple[str, ...] | None]] = []  # (module text, its name, required names or all)
    if required:  # the fix's own test module: taken out of the fix, judged with the required names
        span = _module(code, None)
        own = code[span[0]:span[2]] + "\n" if span else "#[cfg(test)]\nmod tests {}\n"
        code = blank(code, span[0], span[2]) if span else code
        modules.append((own, module_name(own), required))
        reference = _rename_module(tests, REFERENCE_MODULE)
        modules.append((reference, REFERENCE_MODULE, None))
    else:
        name = module_name(tests)
        if name and (copy := _module(code, name, cfg_test=False)):
            code = blank(code, copy[0], copy[2])  # a copy of the koan's test module in the fix: the koan's own is used
        modules.append((tests, name, None))
    texts, all_tokens, needed = [], {}, []
    for text, name, names in modules:
        pinned, found = pin_tests(text, support, api)
        texts.append(pinned)
        all_tokens.update({f"{name}::{n}": t for n, t in found.items() if t})
        needed += [f"{name}::{n}" for n in (names if names is not None else [n for n, t in found.items() if t])]
    text = header + f"include!(\"{SOURCE}\");\n" + "\n".join(texts) + "\n" + _support(support)
    return Build({SOURCE: code, root: text}, root, all_tokens, tuple(needed),
                 filters=tuple(f"{name}::" for _, name, _ in modules))


def refusal(code: str, api: Api | None, clippy: bool) -> str:
    """Why a fix is refused before compiling ('' when it is not): it extends the koan's traits with methods
    (which would take over std methods the tests call), or silences a lint in a clippy koan."""
    if api is None:
        return ""
    try:
        top = top_level(code)
        silenced = silencing(code) if clippy else set()
    except RustSourceError:
        return ""  # the compiler will say what is wrong with it
    for name, methods in top.traits.items():
        if name in api.names and name not in api.traits:
            return f"`{name}` is a trait in the fix but not in the koan"
        extra = sorted(methods - api.traits.get(name, methods))
        if extra:
            return f"the fix adds methods to the koan's trait `{name}`: {', '.join(extra)}"
    extra = sorted(silenced - api.silenced)
    if extra:
        return f"a clippy koan is fixed, not silenced: {extra[0]}"
    return ""


def silencing(code: str) -> set[str]:
    """The attributes in code that lower a lint level (allow, expect, warn) for clippy or warnings."""
    toks = tokens(code)
    found = set()
    for i in range(len(toks)):
        if toks[i].text == "#" and (attr := attribute_at(code, toks, i)):
            a = attr[0]
            words = set(re.findall(r"\w+", a.text))
            if words & {"allow", "expect", "warn"} and words & {"clippy", "warnings"}:
                found.add(" ".join(a.text.replace("#!", "#").split()))
    return found


def _module(code: str, name: str | None, cfg_test: bool = True):
    try:
        return module_span(code, name, cfg_test)
    except RustSourceError:
        return None


def _rename_module(tests: str, new: str) -> str:
    toks = tokens(tests)
    i = next(i for i, t in enumerate(toks[:-1]) if t.text == "mod")
    return tests[:toks[i + 1].start] + new + tests[toks[i + 1].end:]


def hoist_inner_attributes(code: str) -> tuple[str, str]:
    """(code without its leading lint-level inner attributes, those attributes): an included file may hold
    no inner attribute, and lint levels are the fix's to choose. Inner doc comments become plain comments;
    any other inner attribute stays, and the compiler refuses it."""
    hoisted = []
    try:
        toks = tokens(code, keep_trivia=True)
    except RustSourceError:
        return code, ""  # the compiler will say what is wrong with it
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
            if j >= len(toks):
                break
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


def pin_tests(tests: str, support: str, api: Api | None) -> tuple[str, dict[str, str]]:
    """The test module with every #[test] wrapped to write a token on a pass, std macros and crates named by
    absolute path, `assert!` given a bool, and (with an api) `use super::*` replaced by the names the koan
    gives; and {test name: token ('' for an ignored test)}.
    Only text on existing lines changes, so a diagnostic in the tests keeps its line number."""
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
            body = f"crate::{support}::panicked(__sleepy_{fn.name}, {fn.expected_panic}, \"{token}\")"
        ignore = "#[ignore] " if fn.ignored else ""
        inserts.append((min(a.start for a in fn.attributes),
                        f"#[test] {ignore}{kept} #[allow(clippy::all)] fn {fn.name}() {{ {body}; }} "))
        blanks += [(a.start, a.end) for a in fn.attributes if a.path in ("test", "should_panic", "ignore")]
        renames.append((fn.name_start, fn.name_start + len(fn.name), f"__sleepy_{fn.name}"))
    toks = tokens(tests)
    own_macros = {n for n, kind in api.items.items() if kind == "macro"} if api else set()
    for i, t in enumerate(toks[:-2]):
        after_path = i > 0 and toks[i - 1].text in (":", ".")
        if (t.kind == "ident" and t.text in STD_MACROS and t.text not in own_macros and toks[i + 1].text == "!"
                and toks[i + 2].text in ("(", "[", "{") and not after_path):
            inserts.append((t.start, "::std::"))
            if t.text in BOOL_ASSERTS:  # `assert!(x)` needs x: bool, not a type whose `!` the fix defines
                end = _argument_end(toks, i + 2)
                inserts += [(toks[i + 3].start, "{ let __sleepy_b: bool = "), (toks[end].start, "; __sleepy_b }")]
        elif t.kind == "ident" and t.text in CRATES and toks[i + 1].text == ":" and toks[i + 2].text == ":" \
                and not after_path:
            inserts.append((t.start, "::"))
    if api is not None:
        inserts += _explicit_imports(tests, toks, api)
    out = tests
    for start, end in blanks:
        out = blank(out, start, end)
    edits = [(s, s, text) for s, text in inserts] + renames
    # from the end backwards; of two edits at one place, the one made first ends up first
    for _, (start, end, text) in sorted(enumerate(edits), key=lambda e: (e[1][0], e[0]), reverse=True):
        out = out[:start] + text + out[end:]
    return out, found


def _argument_end(toks, open_index: int) -> int:
    """Index of the token ending the first argument of the macro call whose bracket is toks[open_index]."""
    depth = 0
    for j in range(open_index + 1, len(toks)):
        t = toks[j].text
        if t in ("(", "[", "{"):
            depth += 1
        elif t in (")", "]", "}"):
            if depth == 0:
                return j
            depth -= 1
        elif t == "," and depth == 0:
            return j
    raise RustSourceError("unclosed assert! call in the tests")


def _explicit_imports(tests: str, toks, api: Api) -> list[tuple[int, str]]:
    """`use super::*;` of the test module, replaced (on its line) by the names the koan gives the tests."""
    span = module_span(tests, None, cfg_test=False)
    if span is None:
        return []
    body = tests[span[1] + 1:span[2] - 1]
    mine: TopLevel = top_level(body)
    taken = set(mine.items) | {u.name for u in mine.uses}
    used = {t.text for t in toks if t.kind == "ident"}
    names = sorted(((api.names & used) | set(api.traits)) - taken)
    imports = [f"super::{n}" for n in names] + [p for p in api.imports if p.rsplit(" ", 1)[-1].split("::")[-1] not in taken]
    text = " ".join(f"#[allow(unused_imports)] use {p};" for p in imports)
    out = []
    for i in range(len(toks) - 4):
        if [t.text for t in toks[i:i + 6]] == ["use", "super", ":", ":", "*", ";"] and \
                span[1] < toks[i].start < span[2]:
            out.append((toks[i].start, text + " /* "))
            out.append((toks[i + 5].end, " */"))
            break
    return out


def _support(name: str) -> str:
    """The module the wrappers call: what a test's outcome means, and how a pass is written down."""
    decoys = ", ".join(f'"{secrets.token_hex(16)}"' for _ in range(DECOYS))
    return f"""#[doc(hidden)]
#[allow(dead_code, clippy::all)]
mod {name} {{
    static DECOYS: [&str; {DECOYS}] = [{decoys}];
    pub(crate) trait Outcome {{ fn succeeded(self); }}
    impl Outcome for () {{ fn succeeded(self) {{}} }}
    impl<E: ::core::fmt::Debug> Outcome for ::core::result::Result<(), E> {{
        fn succeeded(self) {{
            if let ::core::result::Result::Err(e) = self {{ ::std::panic!("Error: {{e:?}}"); }}
        }}
    }}
    pub(crate) fn seen(token: &str) {{
        use ::std::io::Write;
        ::std::hint::black_box(&DECOYS);
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

    passed: list[str]  # required tests seen to pass (their tokens written in their own report line)
    missing: list[str]  # required tests that did not
    marker_seen: bool
    forged: bool  # a token-shaped line that no wrapper wrote in its place
    output: str  # stdout with the tokens and the marker taken out


def read_run(meta: dict, stdout: str) -> Outcome:
    """Which required tests a run proved, whether main returned, and whether it printed tokens of its own."""
    tokens_ = meta.get("tokens", {})
    proved = {name for name, token in PASSED_LINE.findall(stdout) if tokens_.get(name) == token}
    required = meta.get("required", [])
    marker = meta.get("marker", "")
    written = TOKEN_LINE.findall(stdout)
    marker_seen = bool(marker) and stdout.endswith(f"\n@sleepy:{marker}\n")
    forged = len(written) != len(proved) + marker_seen
    clean = TOKEN_LINE.sub("", stdout)
    return Outcome([n for n in required if n in proved], [n for n in required if n not in proved], marker_seen, forged,
                   clean)
