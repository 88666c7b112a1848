"""sleepy-koans: list, show, verify and lock koans; judge one Rust file in the sandbox."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sleepy.koans.model import KoanError, read_utf8, wrap_tests

PROG = "sleepy-koans"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (KoanError, RuntimeError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Koans: broken Rust programs with verified fixes.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    def pack_arg(c):
        c.add_argument("--pack", metavar="PATH", help="a TOML pack or a rustlings checkout (default: builtin)")

    def sandbox_args(c):
        c.add_argument("--jobs", type=int, default=None, help="programs judged at once (default: cores + 2)")
        c.add_argument("--edition", default="2024")
        c.add_argument("--isolation", default="auto", choices=["auto", "bwrap", "netns", "none"])
        c.add_argument("--no-cache", action="store_true", help="compile again even if the result is cached")
        c.add_argument("--runs", type=int, default=1, help="test runs per program (runs that disagree: flaky)")

    c = sub.add_parser("list", help="list koans")
    pack_arg(c)
    c.add_argument("--family")
    c.add_argument("--split", choices=["train", "eval"])
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_list)

    c = sub.add_parser("show", help="show one koan")
    c.add_argument("id")
    pack_arg(c)
    c.add_argument("--solution", action="store_true", help="also print the solution")
    c.set_defaults(func=cmd_show)

    c = sub.add_parser("verify", help="check every koan: broken code fails as declared, solution passes")
    pack_arg(c)
    sandbox_args(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_verify)

    c = sub.add_parser("judge", help="judge one Rust file in the sandbox")
    c.add_argument("file", type=Path)
    c.add_argument("--tests", type=Path, help="Rust test functions or a #[cfg(test)] module to append")
    c.add_argument("--mode", default="test", choices=["check", "test", "run"])
    sandbox_args(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_judge)

    c = sub.add_parser("lock", help="freeze the eval split: write eval.lock from the eval koans as they are")
    pack_arg(c)
    c.set_defaults(func=cmd_lock)
    return p


def _pack(args, check_lock: bool = True):
    from sleepy.koans.pack import load_pack

    return load_pack(args.pack, check_lock=check_lock)


def cmd_list(args) -> int:
    pack = _pack(args)
    koans = pack.select(family=args.family, split=args.split)
    if args.json:
        keys = ("id", "family", "split", "title", "expected_errors", "mode")
        print(json.dumps([{k: v for k, v in koan.to_dict().items() if k in keys} for koan in koans], indent=1))
        return 0
    for k in koans:
        print(f"{k.id:34} {k.family:16} {k.split:5}  {','.join(k.expected_errors):12} {k.title}")
    print(f"{len(koans)} koans")
    return 0


def cmd_show(args) -> int:
    k = _pack(args).get(args.id)
    print(f"# {k.id}: {k.title}\nfamily: {k.family}   split: {k.split}   mode: {k.mode}")
    if k.expected_errors:
        print(f"expected errors: {', '.join(k.expected_errors)}")
    if k.hint:
        print(f"hint: {k.hint}")
    print(f"\n## code\n{k.code.rstrip()}\n\n## tests\n{k.tests.rstrip()}")
    if args.solution:
        print(f"\n## solution\n{k.solution.rstrip()}")
    return 0


def _sandbox(args):
    from sleepy.sandbox import Sandbox

    return Sandbox(edition=args.edition, isolation_level=args.isolation, jobs=args.jobs,
                   use_cache=not args.no_cache, runs=args.runs)


def cmd_verify(args) -> int:
    from sleepy.koans.verify import print_report, verify

    report = verify(_pack(args).koans, _sandbox(args))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 1 if report["failed"] else 0


def cmd_judge(args) -> int:
    code = read_utf8(args.file)
    tests = read_utf8(args.tests) if args.tests else ""
    if tests and "#[cfg(test)]" not in tests:
        tests = wrap_tests(tests)
    v = _sandbox(args).judge(code, tests, args.mode)
    if args.json:
        print(json.dumps(v.to_dict(), indent=1))
    else:
        for d in v.errors:
            print(d.rendered.rstrip())
        if v.reason not in ("ok", "compile_error") and v.output:
            print(v.output.rstrip()[-4000:])
        print(f"{v.reason}: compiled={v.compiled} tests_passed={v.tests_passed} "
              f"errors={','.join(v.error_codes) or '-'} isolation={v.isolation} {v.wall_ms:.0f} ms")
    return 0 if v.passed else 1


def cmd_lock(args) -> int:
    from sleepy.koans import lock

    pack = _pack(args, check_lock=False)
    n = lock.write(pack.koans, pack.root / lock.LOCK_FILE)
    print(f"froze {n} eval koans in {pack.root / lock.LOCK_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
