"""sleepy-koans: list, show, verify and lock koans; forge new ones; judge one Rust file in the sandbox."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sleepy.koans.model import KoanError, read_utf8, wrap_tests
from sleepy.pipes import quiet_on_closed_pipe

PROG = "sleepy-koans"


@quiet_on_closed_pipe
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
        c.add_argument("--pack", metavar="PACK", action="append",
                       help="builtin, rustc_errors, forged, a TOML pack or a rustlings checkout (default: builtin); "
                            "repeat it for several packs at once")
        c.add_argument("--external-split", default="eval", choices=["eval", "train"],
                       help="the split of packs without one of their own: rustlings, rustc_errors (default: eval)")

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
    c.add_argument("--json", action="store_true", help="the koan's fields as JSON (its solution only with --solution)")
    c.set_defaults(func=cmd_show)

    c = sub.add_parser("verify", help="check every koan: broken code fails as declared, solution passes")
    pack_arg(c)
    sandbox_args(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_verify)

    c = sub.add_parser("judge", help="judge one Rust file in the sandbox: alone, or as a fix of a koan (--koan)",
                       description="Judge one Rust file in the sandbox. With --koan ID the file is a fix of that koan, "
                                   "judged as the agent's fixes are: its program is read the way a model's reply is "
                                   "(the longest rust code block, else the whole file), then judged with the koan's "
                                   "tests, mode and lints. Exit 0 when it passes, 1 when not.")
    c.add_argument("file", type=Path, metavar="FILE", help="a Rust file (or, with --koan, a model's reply)")
    c.add_argument("--koan", metavar="ID", help="judge FILE as a fix of this koan, against its tests")
    pack_arg(c)
    c.add_argument("--tests", type=Path, help="Rust test functions or a #[cfg(test)] module to append (not with --koan)")
    c.add_argument("--mode", default=None, choices=["check", "test", "run"],
                   help="default: test (with --koan: the koan's own)")
    sandbox_args(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_judge)

    c = sub.add_parser("lock", help="freeze the eval split: write eval.lock from the eval koans as they are")
    c.add_argument("--pack", metavar="PATH", help="a TOML pack directory (default: builtin)")
    c.set_defaults(func=cmd_lock)

    c = sub.add_parser("forge", help="make verified koans with tests by injecting compile errors into solutions")
    c.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write the pack (new or empty)")
    c.add_argument("--seed", type=int, default=0, help="draws which mutants are kept (default: 0)")
    c.add_argument("--from", dest="source", default="builtin", metavar="PACK",
                   help="the pack whose solutions and tests are mutated (default: builtin)")
    c.add_argument("--per-family", type=int, default=None, metavar="N",
                   help="at most N koans per source koan and family (default: 4)")
    sandbox_args(c)
    c.add_argument("--json", action="store_true", help="print the forge's counts as JSON")
    c.set_defaults(func=cmd_forge)
    return p


def _pack(args, sandbox=None):
    from sleepy.koans.registry import load_packs

    pack = load_packs(args.pack or [None], sandbox, args.external_split)
    for note in pack.notes:
        print(f"note: {note}", file=sys.stderr)
    return pack


def _summary(koans, power: bool) -> None:
    """Per pack and split: how many koans; with power, what the eval koans can detect (scipy: slow to import, so
    `verify` says it and `list` does not)."""
    from sleepy.koans.model import CHECK_MODE, check_mode

    for pack in sorted({k.pack for k in koans}):
        mine = [k for k in koans if k.pack == pack]
        splits = ", ".join(f"{sum(k.split == s for k in mine)} {s}" for s in ("train", "eval") if any(k.split == s
                                                                                                    for k in mine))
        evals = sum(k.split == "eval" for k in mine)
        mode = f" ({CHECK_MODE})" if check_mode(mine) else ""
        if power and evals:
            from sleepy.power import describe

            mode += f"; eval {describe(evals)}"
        print(f"{pack}: {splits}{mode}")


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
    _summary(koans, power=False)
    return 0


def cmd_show(args) -> int:
    k = _pack(args).get(args.id)
    if args.json:
        koan = k.to_dict()
        if not args.solution:
            koan.pop("solution", None)
        print(json.dumps(koan, indent=1, default=list))
        return 0
    print(f"# {k.id}: {k.title}\npack: {k.pack}   family: {k.family}   split: {k.split}   mode: {k.mode}")
    if k.mode == "check":
        print("judged in check mode: the fix must compile with no error; there are no tests")
    if k.origin:
        print(f"forged from {k.origin} by the mutation {k.mutation}")
    if k.expected_errors:
        print(f"expected errors: {', '.join(k.expected_errors)}")
    if k.hint:
        print(f"hint: {k.hint}")
    print(f"\n## code\n{k.code.rstrip()}")
    if k.tests:
        print(f"\n## tests\n{k.tests.rstrip()}")
    if args.solution:
        print(f"\n## solution\n{k.solution.rstrip()}")
    return 0


def _sandbox(args):
    from sleepy.sandbox import Sandbox

    return Sandbox(edition=args.edition, isolation_level=args.isolation, jobs=args.jobs,
                   use_cache=not args.no_cache, runs=args.runs)


def cmd_verify(args) -> int:
    from sleepy.koans.verify import print_report, verify

    sandbox = _sandbox(args)
    koans = _pack(args, sandbox).koans
    report = verify(koans, sandbox)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
        _summary(koans, power=True)
    return 1 if report["failed"] else 0


def cmd_judge(args) -> int:
    text = read_utf8(args.file)
    if args.koan:
        if args.tests or args.mode:
            raise ValueError("--koan judges with the koan's own tests and mode; leave out --tests and --mode")
        v = judge_fix(_pack(args).get(args.koan), text, _sandbox(args))
    else:
        tests = read_utf8(args.tests) if args.tests else ""
        if tests and "#[cfg(test)]" not in tests:
            tests = wrap_tests(tests)
        v = _sandbox(args).judge(text, tests, args.mode or "test")
    if args.json:
        print(json.dumps(v.to_dict() | ({"koan": args.koan} if args.koan else {}), indent=1))
    else:
        for d in v.errors:
            print(d.rendered.rstrip())
        if v.reason not in ("ok", "compile_error") and v.output:
            print(v.output.rstrip()[-4000:])
        print(f"{v.reason}: compiled={v.compiled} tests_passed={v.tests_passed} "
              f"errors={','.join(v.error_codes) or '-'} isolation={v.isolation} {v.wall_ms:.0f} ms")
        if args.koan:
            print(f"koan {args.koan}: {'PASS' if v.passed else 'FAIL'} ({v.reason})")
    return 0 if v.passed else 1


def judge_fix(koan, reply: str, sandbox):
    """A fix of `koan` judged exactly as the agent's are: the program read out of the reply (sleepy.prompt.extract_fix),
    then the koan's program (its tests, mode, lints, the solution's API) in the sandbox."""
    from sleepy.prompt import extract_fix

    (verdict,) = sandbox.judge_many([koan.program(extract_fix(reply))])
    return verdict


def cmd_lock(args) -> int:
    from sleepy.koans import lock
    from sleepy.koans.pack import load_pack

    pack = load_pack(None if args.pack in (None, "builtin") else args.pack, check_lock=False)
    n = lock.write(pack.koans, pack.root / lock.LOCK_FILE)
    print(f"froze {n} eval koans in {pack.root / lock.LOCK_FILE}")
    return 0



def cmd_forge(args) -> int:
    from sleepy.koans import forge
    from sleepy.koans.registry import load_one

    if args.per_family is not None and args.per_family < 1:
        raise ValueError(f"--per-family must be at least 1; got {args.per_family}")
    sandbox = _sandbox(args)
    source = load_one(args.source, sandbox)
    stats = forge.make(args.out, source.koans, sandbox, args.seed, args.per_family or forge.PER_FAMILY, source.name)
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    print(f"{'mutation':22} {'family':16} {'sites':>6} {'compiles':>8} {'other':>6} {'same':>6} {'cap':>5} {'kept':>5}")
    for name, m in stats["mutations"].items():
        print(f"{name:22} {m['family']:16} {m['sites']:6} {m['compiles']:8} {m['wrong_family']:6} "
              f"{m['same_signature']:6} {m['over_cap']:5} {m['kept']:5}")
    print("(compiles: the mutant compiled; other: it failed with codes of another family; same: a kept mutant of its "
          "source had its mutation and error signature; cap: over --per-family)")
    for key, n in stats["by_family_split"].items():
        print(f"  {key:28} {n:5}")
    print(f"{stats['koans']} koans from {stats['sources_passing']} source koans ({stats['distinct_mutants']} distinct "
          f"mutants judged) in {stats['seconds']:.0f} s: {stats['koans_per_minute']:.0f} koans/min; "
          f"written to {args.out} (check with: sleepy-koans verify --pack {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
