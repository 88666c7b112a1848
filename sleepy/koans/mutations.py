"""The forge's catalogue: mutations that inject a compile error of one family into a correct program.

Each mutation reads the program's tokens (`rust_source.tokens`, with brackets matched) and yields its
sites, each a list of edits (start, end, replacement) of the source text; it does not know whether the
result fails to compile, or how: the forge judges every mutant and keeps those that fail with codes of
the mutation's family alone. So a mutation may be generous with its sites; a precise one only saves
compile time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sleepy.rust_source import RustSourceError, tokens

Edit = tuple[int, int, str]  # replace text[start:end] with the string


@dataclass(frozen=True)
class Mutation:
    name: str
    family: str
    what: str
    sites: Callable[[Code], Iterator[list[Edit]]]


CATALOGUE: list[Mutation] = []


def mutation(family: str, what: str, name: str | None = None):
    """Register a site finder as a mutation of `family` (its name: the function's, or `name`)."""
    def register(sites):
        CATALOGUE.append(Mutation(name or sites.__name__, family, what, sites))
        return sites
    return register


def apply(text: str, edits: list[Edit]) -> str:
    """text with the edits made (they must not overlap)."""
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def mutants(text: str, catalogue: list[Mutation] | None = None) -> Iterator[tuple[Mutation, str, int]]:
    """(mutation, mutated text, offset of its first edit) for every site of every mutation in the program."""
    try:
        code = Code(text)
    except RustSourceError:
        return
    for m in catalogue or CATALOGUE:
        for edits in m.sites(code):
            if edits:
                yield m, apply(text, edits), min(e[0] for e in edits)


# -- reading tokens -----------------------------------------------------------------------------------
_KEYWORDS_BEFORE_EXPR = frozenset("return in match if while let else break yield".split())
_OPERAND_END = frozenset(")]?")


class Code:
    """A program's tokens with its brackets matched, and the questions the mutations ask of them."""

    def __init__(self, text: str):
        self.text = text
        self.toks = tokens(text)
        self.close: dict[int, int] = {}
        stack: list[int] = []
        for i, t in enumerate(self.toks):
            if t.kind != "punct":
                continue
            if t.text in "([{":
                stack.append(i)
            elif t.text in ")]}" and stack:
                self.close[stack.pop()] = i

    def __len__(self) -> int:
        return len(self.toks)

    def at(self, i: int) -> str:
        return self.toks[i].text if 0 <= i < len(self.toks) else ""

    def joined(self, i: int) -> bool:
        """toks[i] and toks[i + 1] touch (`->`, `=>`, `&&`, `::`)."""
        return i + 1 < len(self.toks) and self.toks[i].end == self.toks[i + 1].start

    def arrow(self, i: int) -> bool:
        """toks[i] is the `>` of `->` or `=>`."""
        return self.at(i) == ">" and self.at(i - 1) in ("-", "=") and self.joined(i - 1)

    def unary_position(self, i: int) -> bool:
        """toks[i] starts an operand (a prefix `&`, `*` or a closure), judging by the token before it."""
        if i == 0:
            return True
        prev = self.toks[i - 1]
        if prev.kind in ("number", "string", "char", "lifetime"):
            return False
        if prev.kind == "ident":
            return prev.text in _KEYWORDS_BEFORE_EXPR
        if prev.text in _OPERAND_END or prev.text in (":", "<", "}") or (prev.text == ">" and self.at(i - 2) == "-"):
            return False
        return True

    def span(self, i: int, j: int, new: str = "") -> Edit:
        """Replace tokens i..j (inclusive) and what lies between them."""
        return self.toks[i].start, self.toks[j].end, new

    def cut(self, indices) -> list[Edit]:
        """Delete the tokens at these indices: one edit per run of consecutive tokens."""
        edits, run = [], []
        for i in sorted(set(indices)):
            if run and i != run[-1] + 1:
                edits.append(self.span(run[0], run[-1]))
                run = []
            run.append(i)
        if run:
            edits.append(self.span(run[0], run[-1]))
        return edits

    def calls(self, names) -> Iterator[tuple[int, int]]:
        """(index of the `.`, index of the closing `)`) of every method call `.name(...)` with name in names."""
        for i in range(len(self.toks) - 2):
            if self.at(i) == "." and self.at(i + 1) in names and self.at(i + 2) == "(" and i + 2 in self.close:
                yield i, self.close[i + 2]

    def level(self, start: int, end: int | None = None, skip: str = "([{"):
        """(index, depth in angle brackets) of the tokens from start, each bracket group opening with one of `skip`
        passed over whole (its opening token given)."""
        depth, j, end = 0, start, len(self.toks) if end is None else end
        while j < end:
            t = self.at(j)
            if t == "<":
                depth += 1
            elif t == ">" and not self.arrow(j):
                depth -= 1
            yield j, depth
            j = self.close[j] + 1 if t in skip and j in self.close else j + 1

    def angle_close(self, i: int) -> int | None:
        """Index of the `>` closing the `<` at i (arrows inside it skipped)."""
        for j, depth in self.level(i, skip="(["):
            if self.at(j) in ("{", ";"):
                return None
            if depth == 0 and self.at(j) == ">":
                return j
        return None

    def split(self, start: int, end: int, sep: str) -> list[tuple[int, int]]:
        """Index ranges [a, b) between `sep` tokens at depth 0 (brackets and angles) in [start, end)."""
        parts, a = [], start
        for j, depth in self.level(start, end):
            if depth == 0 and self.at(j) == sep:
                parts.append((a, j))
                a = j + 1
        if a < end:
            parts.append((a, end))
        return parts

    def generics(self) -> Iterator[tuple[int, int, int]]:
        """(keyword index, `<` index, `>` index) of every generic parameter list of an item."""
        for i, t in enumerate(self.toks):
            if t.kind != "ident":
                continue
            if t.text == "impl" and self.at(i + 1) == "<":
                j = i + 1
            elif t.text in ("fn", "struct", "enum", "trait", "type", "union") and self.at(i + 2) == "<":
                j = i + 2
            else:
                continue
            close = self.angle_close(j)
            if close is not None:
                yield i, j, close

    def body(self, i: int) -> int | None:
        """Index of the `{` of the item starting at i (its body), None for an item without one."""
        for j, _ in self.level(i, skip="(["):
            if self.at(j) in ("{", ";"):
                return j if self.at(j) == "{" else None
        return None

    def items(self, keyword: str) -> Iterator[tuple[int, int]]:
        """(keyword index, body `{` index) of every `keyword Name ... { ... }` (a fn, a struct with named fields)."""
        for i, t in enumerate(self.toks[:-1]):
            if t.text == keyword and self.toks[i + 1].kind == "ident" and (body := self.body(i)) is not None:
                yield i, body

    def statements(self, open_: int) -> list[tuple[int, int, bool]]:
        """(first, last, ends with `;`) of each statement of the block opening at open_."""
        out, j, first = [], open_ + 1, open_ + 1
        end = self.close.get(open_, open_)
        while j < end:
            t = self.at(j)
            if t == "{" and j in self.close:
                k = self.close[j]
                blocky = self.at(first) in ("if", "for", "while", "loop", "match", "unsafe", "fn", "impl", "{")
                if blocky and self.at(k + 1) not in ("else", ".", "?", ";"):
                    out.append((first, k, False))
                    j = first = k + 1
                    continue
                j = k + 1
                continue
            if t in ("(", "[") and j in self.close:
                j = self.close[j] + 1
                continue
            if t == ";":
                out.append((first, j, True))
                first = j + 1
            j += 1
        return out


def _removed_calls(code: Code, names, need_question: bool = False) -> Iterator[list[Edit]]:
    for dot, close in code.calls(names):
        if not need_question or code.at(close + 1) == "?":
            yield [code.span(dot, close)]


def _before_item(code: Code, i: int) -> int:
    """The first token of the item whose keyword is at i: its attributes and `pub` included."""
    while i > 0 and code.at(i - 1) in ("pub", "unsafe"):
        i -= 1
    while i > 0 and code.at(i - 1) == "]":
        open_ = next((k for k, c in code.close.items() if c == i - 1), None)
        if open_ is None or code.at(open_ - 1) != "#":
            break
        i = open_ - 1
    return i


# -- borrow_checker ---------------------------------------------------------------------------------
@mutation("borrow_checker", "drop a `.clone()`: the value moves instead")
def drop_clone(code: Code):
    yield from _removed_calls(code, ("clone",))


def _prefix_borrows(code: Code):
    for i, t in enumerate(code.toks):
        if t.text == "&" and code.unary_position(i) and not (code.at(i + 1) == "&" and code.joined(i)) \
                and not (code.at(i - 1) == "&" and code.joined(i - 1)):
            nxt = code.toks[i + 1] if i + 1 < len(code) else None
            if nxt is not None and nxt.kind == "ident" and nxt.text not in ("mut", "str", "dyn", "impl"):
                yield [code.span(i, i)]


@mutation("borrow_checker", "move where a borrow was: drop a prefix `&`")
def borrow_to_move(code: Code):
    yield from _prefix_borrows(code)


@mutation("borrow_checker", "make a closure take what it uses by move")
def add_move(code: Code):
    for i, t in enumerate(code.toks):
        if t.text == "|" and code.unary_position(i) and code.at(i - 1) != "move" \
                and not (code.at(i - 1) == "|" and code.joined(i - 1)):
            yield [(t.start, t.start, "move ")]


@mutation("borrow_checker", "drop `mut` from a binding")
def drop_mut(code: Code):
    for i, t in enumerate(code.toks):
        if t.text == "mut" and code.at(i - 1) in ("let", "(", ",", "|") and code.toks[i + 1].kind == "ident":
            yield [(t.start, code.toks[i + 1].start, "")]


def _mut_borrows(code: Code):
    for i, t in enumerate(code.toks):
        if t.text == "&" and code.at(i + 1) == "mut":
            yield [(code.toks[i + 1].start, code.toks[i + 2].start, "")]


@mutation("borrow_checker", "overlapping or missing `&mut`: a `&mut` becomes `&`")
def weaken_mut_borrow(code: Code):
    yield from _mut_borrows(code)


@mutation("borrow_checker", "iterate by value where it iterated by reference: `.iter()` becomes `.into_iter()`")
def into_iter(code: Code):
    for dot, _ in code.calls(("iter",)):
        yield [code.span(dot + 1, dot + 1, "into_iter")]


@mutation("borrow_checker", "drop `.as_ref()`, `.as_mut()` or `.as_deref()`: the value moves out of a borrow")
def drop_as_ref(code: Code):
    yield from _removed_calls(code, ("as_ref", "as_mut", "as_deref", "as_deref_mut", "by_ref"))


@mutation("borrow_checker", "use after move: swap two statements")
def swap_statements(code: Code):
    for open_ in sorted(i for i, c in code.close.items() if code.at(i) == "{"):
        stmts = code.statements(open_)
        for (a0, a1, a_semi), (b0, b1, b_semi) in zip(stmts, stmts[1:], strict=False):
            if not (a_semi and b_semi) or code.at(a0) in _ITEMS or code.at(b0) in _ITEMS:
                continue
            bound = _let_names(code, a0, a1)
            if any(code.at(k) in bound for k in range(b0, b1)):
                continue  # the second uses what the first binds: a name error, not a borrow error
            first = code.text[code.toks[a0].start:code.toks[a1].end]
            second = code.text[code.toks[b0].start:code.toks[b1].end]
            gap = code.text[code.toks[a1].end:code.toks[b0].start]
            yield [(code.toks[a0].start, code.toks[b1].end, second + gap + first)]


_ITEMS = frozenset("use fn struct enum type const static mod impl trait pub".split())


def _let_names(code: Code, a: int, b: int) -> set[str]:
    if code.at(a) != "let":
        return set()
    end = next((k for k in range(a, b) if code.at(k) in ("=", ":")), b)
    return {code.at(k) for k in range(a + 1, end) if code.toks[k].kind == "ident" and code.at(k) not in ("mut", "ref")}


# -- lifetimes ------------------------------------------------------------------------------------------
@mutation("lifetimes", "drop a lifetime parameter from an item's signature, and its uses there")
def drop_lifetimes(code: Code):
    for kw, lt, gt in code.generics():
        params = code.split(lt + 1, gt, ",")
        lifetimes = [(a, b) for a, b in params if code.toks[a].kind == "lifetime"]
        if not lifetimes:
            continue
        end = _signature_end(code, kw)
        for a, b in lifetimes:
            name = code.at(a)
            cut = set(range(a, b))
            if len(params) == 1:
                cut = set(range(lt, gt + 1))
            else:
                cut |= {b} if b < gt else {a - 1}
            cut |= _lifetime_uses(code, name, gt + 1, end)
            yield code.cut(cut)


def _signature_end(code: Code, kw: int) -> int:
    """The end of the part of an item that names its lifetimes: a fn's or impl's header, a type's whole body."""
    body = code.body(kw)
    if body is None:
        return next((j for j in range(kw, len(code)) if code.at(j) == ";"), len(code))
    return code.close.get(body, body) if code.at(kw) in ("struct", "enum", "union") else body


def _lifetime_uses(code: Code, name: str, start: int, end: int) -> set[int]:
    cut: set[int] = set()
    for j in range(start, end):
        if code.at(j) != name:
            continue
        prev, nxt = code.at(j - 1), code.at(j + 1)
        if prev == "&":
            cut.add(j)
        elif prev == "<" and nxt == ">":
            cut |= {j - 1, j, j + 1}
        elif nxt == ",":
            cut |= {j, j + 1}
        elif prev == ",":
            cut |= {j - 1, j}
        elif prev == "+":
            cut |= {j - 1, j}
        elif prev == ":":
            cut |= {j - 1, j} if nxt != "+" else {j, j + 1}
        else:
            cut.add(j)
    return cut


@mutation("lifetimes", "return a reference to a local or a temporary: `-> T` becomes `-> &T`, the result is borrowed")
def return_local_ref(code: Code):
    for i, body in code.items("fn"):
        arrow = next((j for j in range(i, body) if code.at(j) == "-" and code.arrow(j + 1)), None)
        if arrow is None or code.at(arrow + 2) in ("&", "impl", "dyn", "!"):
            continue
        stmts = code.statements(body)
        first, last = (stmts[-1][1] + 1 if stmts else body + 1), code.close[body] - 1
        if first > last or code.at(first) in ("if", "match", "loop", "while", "for", "{", "return", "unsafe"):
            continue
        ret = code.toks[arrow + 2].start
        if first == last:
            yield [(ret, ret, "&"), (code.toks[first].start, code.toks[first].start, "&")]
        else:
            yield [(ret, ret, "&"), (code.toks[first].start, code.toks[first].start, "&("),
                   (code.toks[last].end, code.toks[last].end, ")")]


@mutation("lifetimes", "a struct field borrows what it owned: `String` becomes `&str`, `Vec<T>` becomes `&[T]`")
def borrowed_field(code: Code):
    for _, body in code.items("struct"):
        for a, b in code.split(body + 1, code.close[body], ","):
            colon = next((k for k in range(a, b) if code.at(k) == ":"), None)
            if colon is None:
                continue
            if b - colon == 2 and code.at(colon + 1) == "String":
                yield [code.span(colon + 1, colon + 1, "&str")]
            elif code.at(colon + 1) == "Vec" and code.at(colon + 2) == "<" and code.angle_close(colon + 2) == b - 1:
                inner = code.text[code.toks[colon + 3].start:code.toks[b - 2].end]
                yield [code.span(colon + 1, b - 1, f"&[{inner}]")]


@mutation("lifetimes", "borrow from a temporary: a `let` that owned a value is inlined into the one place that borrows it")
def inline_owner(code: Code):
    for open_ in sorted(i for i in code.close if code.at(i) == "{"):
        close = code.close[open_]
        for a, b, semi in code.statements(open_):
            if not (semi and code.at(a) == "let" and code.toks[a + 1].kind == "ident" and code.at(a + 2) == "="):
                continue
            name = code.at(a + 1)
            uses = [k for k in range(b + 1, close) if code.at(k) == name and code.at(k - 1) not in (".", ":")]
            if len(uses) != 1 or not (code.at(uses[0] + 1) == "." or code.at(uses[0] - 1) == "&"):
                continue
            value = code.text[code.toks[a + 3].start:code.toks[b - 1].end]
            end = b + 1 if b + 1 < len(code) else b
            yield [(code.toks[a].start, code.toks[end].start, ""), code.span(uses[0], uses[0], f"({value})")]


@mutation("lifetimes", "drop `move` from a closure that outlives the borrows it captures")
def drop_move(code: Code):
    for i, t in enumerate(code.toks):
        if t.text == "move" and code.at(i + 1) == "|":
            yield [(t.start, code.toks[i + 1].start, "")]


@mutation("lifetimes", "drop a `'static` bound or lifetime")
def drop_static(code: Code):
    for j, t in enumerate(code.toks):
        if t.text != "'static":
            continue
        prev, nxt = code.at(j - 1), code.at(j + 1)
        if prev == "&":
            yield code.cut({j})
        elif prev == "+":
            yield code.cut({j - 1, j})
        elif prev == ":":
            yield code.cut({j, j + 1} if nxt == "+" else {j - 1, j})


# -- trait_bounds ---------------------------------------------------------------------------------------
def _bound_lists(code: Code) -> Iterator[tuple[int, int, int]]:
    """(index of the `:` or keyword before the bounds, first bound, end) of each list of trait bounds:
    generic parameters, supertraits, where predicates, `impl`/`dyn` types."""
    for _, lt, gt in code.generics():
        for a, b in code.split(lt + 1, gt, ","):
            if code.toks[a].kind == "ident" and code.at(a) != "const" and code.at(a + 1) == ":":
                end = next((k for k in range(a + 2, b) if code.at(k) == "="), b)
                yield a + 1, a + 2, end
    for i, t in enumerate(code.toks):
        if t.text == "trait" and code.toks[i + 1].kind == "ident" and code.at(i + 2) == ":":
            yield i + 2, i + 3, code.body(i) or i + 3
        elif t.text == "dyn" or (t.text == "impl" and not _is_impl_item(code, i)):
            yield i, i + 1, _type_end(code, i + 1)


def _type_end(code: Code, start: int) -> int:
    """Index after the type (or bound list) starting at start: at the first `,`, `)`, `{`, `;`, `=` or unmatched `>`."""
    for j, depth in code.level(start, skip="(["):
        if depth < 0 or (depth == 0 and code.at(j) in (",", ")", "]", "{", ";", "=", "where")):
            return j
    return len(code)


def _is_impl_item(code: Code, i: int) -> bool:
    return i == 0 or code.at(i - 1) in ("}", ";", "]") or code.at(i - 1) in ("unsafe", "pub")


def _where_clauses(code: Code) -> Iterator[tuple[int, int]]:
    for i, t in enumerate(code.toks):
        if t.text == "where":
            end = next((j for j in range(i, len(code)) if code.at(j) in ("{", ";")), len(code))
            yield i, end


def _drop_bounds(code: Code, colon: int, start: int, end: int, keep_one: bool) -> Iterator[list[Edit]]:
    bounds = [(a, b) for a, b in code.split(start, end, "+") if code.toks[a].kind != "lifetime" and a < b]
    everything = code.split(start, end, "+")
    if len(everything) == 1 and bounds and not keep_one:
        yield code.cut(range(colon, end))
        return
    if len(everything) < 2:
        return
    for a, b in bounds:
        cut = set(range(a, b))
        cut |= {b} if b < end else {a - 1}
        yield code.cut(cut)


@mutation("trait_bounds", "drop a trait bound from a generic parameter, a supertrait list or an `impl`/`dyn` type")
def drop_bound(code: Code):
    for colon, start, end in _bound_lists(code):
        keep_one = code.at(colon) in ("impl", "dyn")
        yield from _drop_bounds(code, colon, start, end, keep_one)


@mutation("trait_bounds", "drop a `where` clause, one of its predicates or one of their bounds")
def drop_where(code: Code):
    for w, end in _where_clauses(code):
        predicates = code.split(w + 1, end, ",")
        predicates = [(a, b) for a, b in predicates if a < b]
        if len(predicates) == 1:
            yield code.cut(range(w, end))
        else:
            for a, b in predicates:
                yield code.cut(set(range(a, b)) | ({b} if b < end and code.at(b) == "," else {a - 1}))
        for a, b in predicates:
            colon = next((k for k in range(a, b) if code.at(k) == ":" and code.at(k + 1) != ":"
                          and code.at(k - 1) != ":"), None)
            if colon is not None:
                yield from _drop_bounds(code, colon, colon + 1, b, keep_one=True)


@mutation("trait_bounds", "drop a trait from a `#[derive(...)]`")
def drop_derive(code: Code):
    for i in range(len(code) - 3):
        if code.at(i) == "#" and code.at(i + 1) == "[" and code.at(i + 2) == "derive" and code.at(i + 3) == "(":
            close = code.close.get(i + 3)
            names = code.split(i + 4, close, ",") if close else []
            names = [(a, b) for a, b in names if a < b]
            for a, b in names:
                if len(names) == 1:
                    yield code.cut(range(i, code.close[i + 1] + 1))
                else:
                    yield code.cut(set(range(a, b)) | ({b} if code.at(b) == "," else {a - 1}))


def _trait_impls(code: Code) -> Iterator[tuple[int, int, int]]:
    """(first token, body `{`, body `}`) of each `impl Trait for Type { ... }`."""
    for i, t in enumerate(code.toks):
        if t.text == "impl" and _is_impl_item(code, i):
            body = code.body(i)
            if body is not None and any(code.at(j) == "for" for j in range(i, body)):
                yield _before_item(code, i), body, code.close[body]


@mutation("trait_bounds", "drop a trait impl")
def drop_impl(code: Code):
    for first, _, close in _trait_impls(code):
        yield code.cut(range(first, close + 1))


@mutation("trait_bounds", "drop a method from a trait impl")
def drop_impl_fn(code: Code):
    for _, open_, close in _trait_impls(code):
        j = open_ + 1
        while j < close:
            if code.at(j) == "fn":
                body = code.body(j)
                if body is None:
                    break
                yield code.cut(range(_before_item(code, j), code.close[body] + 1))
                j = code.close[body] + 1
            else:
                j += 1


@mutation("trait_bounds", "drop a `use` (a trait goes out of scope)")
def drop_use(code: Code):
    for i, t in enumerate(code.toks):
        if t.text != "use" or code.at(i - 1) not in ("", ";", "}", "{", "]", "pub"):
            continue
        end = next((j for j in range(i, len(code)) if code.at(j) == ";"), None)
        if end is None:
            continue
        yield code.cut(range(_before_item(code, i), end + 1))
        group = next((j for j in range(i, end) if code.at(j) == "{"), None)
        if group is not None and group in code.close:
            names = [(a, b) for a, b in code.split(group + 1, code.close[group], ",") if a < b]
            if len(names) > 1:
                for a, b in names:
                    yield code.cut(set(range(a, b)) | ({b} if code.at(b) == "," else {a - 1}))


# -- result_handling ------------------------------------------------------------------------------------
@mutation("result_handling", "drop a `?`")
def drop_question(code: Code):
    for i, t in enumerate(code.toks):
        if t.text == "?" and (code.at(i - 1) in (")", "]", "?") or code.toks[i - 1].kind == "ident"):
            yield code.cut({i})


@mutation("result_handling", "`?` on an Option in a Result fn (or the other way): drop the `.ok_or(..)`/`.ok()` before it")
def drop_ok_or(code: Code):
    yield from _removed_calls(code, ("ok_or", "ok_or_else", "ok"), need_question=True)


@mutation("result_handling", "drop an error conversion: `.map_err(..)`")
def drop_map_err(code: Code):
    yield from _removed_calls(code, ("map_err",))


@mutation("result_handling", "drop an `.unwrap()`, `.expect(..)` or `.unwrap_or*(..)`")
def drop_unwrap(code: Code):
    yield from _removed_calls(code, ("unwrap", "expect", "unwrap_or", "unwrap_or_default", "unwrap_or_else"))


@mutation("result_handling", "`?` where it unwrapped, in a function that returns no Result or Option")
def unwrap_to_question(code: Code):
    for dot, close in code.calls(("unwrap", "expect")):
        yield [code.span(dot, close, "?")]


@mutation("result_handling", "drop an arm of a `match` (a `None`, an `Err(..)`, a `_`)")
def drop_match_arm(code: Code):
    for i, t in enumerate(code.toks):
        if t.text != "match":
            continue
        open_ = i + 1
        while open_ < len(code) and code.at(open_) != "{":
            open_ = code.close[open_] + 1 if code.at(open_) in ("(", "[") and open_ in code.close else open_ + 1
        if open_ not in code.close:
            continue
        arms = _arms(code, open_, code.close[open_])
        if len(arms) > 1:
            for a, b in arms:
                yield code.cut(range(a, b + 1))


def _arms(code: Code, open_: int, close: int) -> list[tuple[int, int]]:
    """(first, last) token of each arm of the match body open_..close, its trailing comma included."""
    arms, j = [], open_ + 1
    while j < close:
        start = j
        while j < close and not (code.at(j) == "=" and code.at(j + 1) == ">" and code.joined(j)):
            j = code.close[j] + 1 if code.at(j) in ("(", "[", "{") and j in code.close else j + 1
        if j >= close:
            break
        j += 2
        if code.at(j) == "{" and j in code.close:
            j = code.close[j]
            end = j + 1 if code.at(j + 1) == "," else j
        else:
            while j < close and code.at(j) != ",":
                j = code.close[j] + 1 if code.at(j) in ("(", "[", "{") and j in code.close else j + 1
            end = j if j < close else close - 1
        arms.append((start, end))
        j = end + 1
    return arms


def _wrapped(code: Code, names) -> Iterator[tuple[int, int]]:
    for i, t in enumerate(code.toks):
        if t.text in names and code.at(i + 1) == "(" and code.at(i - 1) not in (".", ":") and i + 1 in code.close:
            yield i, code.close[i + 1]


@mutation("result_handling", "drop the `Ok(..)` or `Some(..)` around a value")
def unwrap_ok(code: Code):
    for i, close in _wrapped(code, ("Ok", "Some")):
        yield code.cut({i, i + 1, close})


@mutation("result_handling", "mix up Option and Result: `Ok(` <-> `Some(`, `Err(..)` -> `None`")
def swap_ok_some(code: Code):
    for i, close in _wrapped(code, ("Ok", "Some", "Err")):
        t = code.toks[i]
        if t.text == "Err":
            yield [code.span(i, close, "None")]
        else:
            yield [(t.start, t.end, "Some" if t.text == "Ok" else "Ok")]


# -- type_mismatch --------------------------------------------------------------------------------------
_FLOAT = re.compile(r"\d+\.\d+(?:[eE][+-]?\d+)?(?:f32|f64)?")
NUMERIC = {"i8": "i16", "i16": "i32", "i32": "i64", "i64": "i32", "u8": "u32", "u16": "u32", "u32": "u64",
           "u64": "u32", "usize": "u32", "isize": "i64", "f32": "f64", "f64": "f32"}


@mutation("type_mismatch", "change a numeric type (`u32` -> `u64`, `f64` -> `f32`, `usize` -> `u32`, ...)")
def change_numeric_type(code: Code):
    for t in code.toks:
        if t.kind == "ident" and t.text in NUMERIC:
            yield [(t.start, t.end, NUMERIC[t.text])]


@mutation("type_mismatch", "drop a conversion: `.to_string()`, `.to_owned()`, `.into()`, `.as_str()`, `String::from`")
def drop_conversion(code: Code):
    yield from _removed_calls(code, ("to_string", "to_owned", "into", "to_vec", "as_str", "as_slice", "as_bytes"))
    for i in range(len(code) - 4):
        if (code.at(i) == "String" and code.at(i + 1) == ":" and code.at(i + 3) == "from" and code.at(i + 4) == "("
                and i + 4 in code.close and code.at(i - 1) not in (":",)):
            yield code.cut(set(range(i, i + 5)) | {code.close[i + 4]})


@mutation("type_mismatch", "drop an `as` cast")
def drop_cast(code: Code):
    for i, t in enumerate(code.toks):
        if t.text == "as" and code.toks[i + 1].kind == "ident" and code.at(i - 2) != ":" and code.at(i + 1) != "_":
            j = i + 1
            while code.at(j + 1) == ":" and code.at(j + 2) == ":":
                j += 3
            yield code.cut(range(i, j + 1))


@mutation("type_mismatch", "drop a dereference `*`")
def drop_deref(code: Code):
    for i, t in enumerate(code.toks):
        if t.text == "*" and code.unary_position(i) and code.at(i - 1) != ":" and code.at(i + 1) not in ("const", "mut"):
            yield code.cut({i})


@mutation("type_mismatch", "a float literal becomes an integer (`0.0` -> `0`)")
def float_to_int(code: Code):
    for i, t in enumerate(code.toks):
        if t.kind == "number" and _FLOAT.fullmatch(t.text) and code.at(i - 1) != ".":
            yield [(t.start, t.end, t.text.split(".")[0])]


@mutation("type_mismatch", "an integer literal becomes a float (`1` -> `1.0`)")
def int_to_float(code: Code):
    for i, t in enumerate(code.toks):
        if t.kind == "number" and t.text.isdigit() and code.at(i - 1) != "." and code.at(i + 1) != ".":
            yield [(t.start, t.end, t.text + ".0")]


@mutation("type_mismatch", "swap `&str` and `String` in a function signature")
def str_string(code: Code):
    for i, t in enumerate(code.toks):
        if t.text != "fn" or code.at(i + 2) not in ("(", "<"):
            continue
        end = code.body(i) or next((j for j in range(i, len(code)) if code.at(j) == ";"), len(code))
        for j in range(i + 2, end):
            if code.at(j) == "&" and code.at(j + 1) == "str":
                yield [code.span(j, j + 1, "String")]
            elif code.at(j) == "&" and code.toks[j + 1].kind == "lifetime" and code.at(j + 2) == "str":
                yield [code.span(j, j + 2, "String")]
            elif code.at(j) == "String" and not (code.at(j - 1) == ":" and code.at(j - 2) == ":"):
                yield [code.span(j, j, "&str")]


@mutation("type_mismatch", "a reference where a value was: drop a prefix `&`", name="drop_borrow")
def _drop_borrow(code: Code):
    yield from _prefix_borrows(code)


@mutation("type_mismatch", "types that differ in mutability: a `&mut` becomes `&`", name="weaken_mut")
def _weaken_mut(code: Code):
    yield from _mut_borrows(code)
