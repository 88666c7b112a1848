"""What the compiler and the tests said about one program: Diagnostic, Verdict, signature."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

REASONS = ("ok", "compile_error", "test_failure", "runtime_error", "timeout", "memory", "output_limit", "incomplete",
           "forged")


@dataclass(frozen=True)
class Diagnostic:
    """One rustc diagnostic (error or warning) with its primary span."""

    level: str
    message: str
    code: str | None = None
    rendered: str = ""
    line: int | None = None
    column: int | None = None
    label: str | None = None


@dataclass
class Verdict:
    """The judgement of one program: did it compile, did its tests pass, and why not.

    reason `incomplete`: the program exited 0 but not every test of the koan was seen to pass (or, in
    run mode, `main` did not return): it ended early. `forged`: it printed tokens no test wrote in its own
    report line (tokens it found or made up)."""

    compiled: bool
    tests_passed: bool
    reason: str
    isolation: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    output: str = ""
    compile_ms: float = 0.0
    run_ms: float = 0.0
    wall_ms: float = 0.0
    cached: bool = False  # the compile result came from the cache (run outcomes are never cached)
    flaky: bool = False  # repeated runs (sandbox.runs > 1) disagreed

    @property
    def passed(self) -> bool:
        return self.reason == "ok"

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.level == "error"]

    @property
    def error_codes(self) -> list[str]:
        return sorted({d.code for d in self.errors if d.code})

    @property
    def signature(self) -> str:
        return signature(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(passed=self.passed, error_codes=self.error_codes, signature=self.signature)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        names = cls.__dataclass_fields__.keys()
        kept = {k: v for k, v in d.items() if k in names}
        kept["diagnostics"] = [Diagnostic(**x) for x in d.get("diagnostics", [])]
        return cls(**kept)


def parse_diagnostics(stderr: str) -> list[Diagnostic]:
    """Parse rustc `--error-format=json` output into diagnostics (errors and warnings only)."""
    out: list[Diagnostic] = []
    for line in stderr.splitlines():
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        level = msg.get("level", "")
        if level not in ("error", "warning") or msg.get("$message_type", "diagnostic") != "diagnostic":
            continue
        message = msg.get("message", "")
        if level == "error" and re.match(r"aborting due to|could not compile", message):
            continue
        if level == "warning" and re.match(r"\d+ warnings? emitted", message):
            continue
        primary = next((s for s in msg.get("spans", []) if s.get("is_primary")), None)
        out.append(
            Diagnostic(
                level=level,
                message=message,
                code=(msg.get("code") or {}).get("code"),
                rendered=msg.get("rendered") or message,
                line=primary["line_start"] if primary else None,
                column=primary["column_start"] if primary else None,
                label=primary.get("label") if primary else None,
            )
        )
    return out


_BACKTICKED = re.compile(r"`[^`]*`")
_PATH = re.compile(r"(?:[\w.-]+/)+[\w.-]+|\b\w+(?:::\w+)+")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")
_FAILED_TEST = re.compile(r"^\s{4}(\S+)$", re.M)


def normalize_message(message: str) -> str:
    """Remove names, paths and numbers so that the same mistake in two programs reads the same."""
    text = _BACKTICKED.sub("`_`", message)
    text = _PATH.sub("P", text)
    text = _NUMBER.sub("N", text)
    return " ".join(text.split())


def signature(v: Verdict) -> str:
    """A stable fingerprint of why a program failed ('' when it passed).

    Compile errors: the primary (first) error's code and normalized message. Test failures: the
    names of the failing tests, which are fixed by the koan, so the same failure reads the same.
    """
    if v.passed:
        return ""
    if v.errors:
        first = v.errors[0]
        return f"{first.code or 'error'}: {normalize_message(first.message)}"
    if v.reason == "test_failure":
        block = v.output.split("failures:\n")[-1] if "failures:\n" in v.output else ""
        names = sorted(set(_FAILED_TEST.findall(block)))
        return "test_failure: " + ",".join(names) if names else "test_failure"
    return v.reason
