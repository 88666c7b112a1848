"""The experiment a Hydra job runs, chosen by `stage`."""

from __future__ import annotations

import sys

from sleepy.config import check_choices


def run(cfg) -> float | None:
    """Run the configured stage; returns the stage's headline number (for sweepers)."""
    from sleepy.koans import KoanError

    try:
        check_choices(cfg)
        return STAGES[cfg.stage](cfg)
    except (KoanError, ValueError) as e:
        print(f"sleepy: error: {e}", file=sys.stderr)
        sys.exit(2)


def select_koans(cfg):
    from sleepy.koans import load_pack

    k = cfg.koans
    return load_pack(k.pack).select(family=k.families, split=k.split, count=k.count)


def make_sandbox(cfg):
    from sleepy.sandbox import Sandbox, SandboxLimits

    s = cfg.sandbox
    return Sandbox(edition=s.edition, isolation_level=s.isolation, jobs=s.jobs, use_cache=s.cache,
                   limits=SandboxLimits(**s.limits))


def verify(cfg) -> float:
    """Judge every selected koan: broken code must fail as declared, the solution must pass."""
    from sleepy.koans.cli import verify_koans

    koans = select_koans(cfg)
    sandbox = make_sandbox(cfg)
    report = verify_koans(koans, sandbox)
    for f in report["failed"]:
        print(f"FAIL {f['id']}: {f['why']}")
    print(f"{report['verified']}/{report['koans']} koans verified (isolation: {sandbox.isolation})")
    if report["failed"]:
        sys.exit(1)
    return report["verified"] / max(1, report["koans"])


STAGES = {"verify": verify}
