"""Verify koans: each broken program fails as declared, each solution passes, no eval koan leaks.

The one verify path: `sleepy-koans verify` and the runner's `stage=verify` (`stage`) both call `verify`.
"""

from __future__ import annotations

from sleepy.koans.model import Koan


def verify(koans: list[Koan], sandbox) -> dict:
    """Judge every koan's broken code (must fail, with its expected codes) and its solution (must pass), and
    check that no eval koan shares its shape with a train koan. A report: koans, verified, failed, skipped."""
    from sleepy.koans.pack import find_leaks

    report = verify_koans(koans, sandbox)
    judged_ok = report["verified"] + len({f["id"] for f in report["failed"]})
    for eval_id, train_id, sim in find_leaks(koans):
        report["failed"].append({"id": eval_id, "why": f"eval koan shares {sim:.0%} of its shape with train koan {train_id}"})
    report["verified"] = judged_ok - len({f["id"] for f in report["failed"]})
    report["isolation"] = sandbox.isolation
    return report


def stage(cfg) -> float:
    """The runner's `stage=verify`: the configured koans verified in the configured sandbox; exit 1 if any fails."""
    import sys

    from sleepy.koans.registry import load_configured
    from sleepy.sandbox import Sandbox

    k = cfg.koans
    sandbox = Sandbox.from_config(cfg.sandbox)
    report = verify(load_configured(k, sandbox).select(family=k.families, split=k.split, count=k.count), sandbox)
    print_report(report)
    if report["failed"]:
        sys.exit(1)
    return report["verified"] / max(1, report["koans"])


def verify_koans(koans: list[Koan], sandbox) -> dict:
    """Judge every koan's broken code (must fail, with its expected codes) and its solution (must pass)."""
    from sleepy.sandbox.toolchain import toolchain

    failed, skipped, programs, judged = [], [], [], []
    for k in koans:
        if k.clippy and toolchain()[2] is None:
            skipped.append({"id": k.id, "why": "strict_clippy, and clippy is not installed"})
            continue
        judged.append(k)
        programs.append(k.program())
        programs.append(k.program(k.solution))
    verdicts = sandbox.judge_many(programs)
    for i, k in enumerate(judged):
        broken, fixed = verdicts[2 * i], verdicts[2 * i + 1]
        why = []
        if k.check_unsolved and broken.passed:
            why.append("broken code passes")
        missing = [c for c in k.expected_errors if c not in broken.error_codes]
        if broken.compiled and k.expected_errors:
            why.append("broken code compiles")
        elif missing:
            why.append(f"broken code does not emit {', '.join(missing)} (got {', '.join(broken.error_codes) or 'none'})")
        if not fixed.passed:
            detail = fixed.signature or fixed.reason
            why.append(f"solution fails: {fixed.reason} ({detail})")
        if why:
            failed.append({"id": k.id, "why": "; ".join(why)})
    return {"koans": len(koans), "verified": len(judged) - len(failed), "failed": failed, "skipped": skipped}


def print_report(report: dict) -> None:
    from sleepy.console import say

    for f in report["failed"]:
        say(f"FAIL {f['id']}: {f['why']}")
    for s in report["skipped"]:
        say(f"SKIP {s['id']}: {s['why']}")
    say(f"{report['verified']}/{report['koans']} koans verified, {len(report['failed'])} failed, "
        f"{len(report['skipped'])} skipped (isolation: {report['isolation']})")
