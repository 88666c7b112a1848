"""Generated packs (the error-code pack, the default forged pack): made once, kept in the cache directory
under a key that names the toolchain that made them, loaded from there afterwards (and checked against their
lock, so a kept pack that changed is refused)."""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def toolchain_line() -> str:
    """`rustc 1.95.0 (59807616e 2026-04-14)`: the toolchain a generated pack was made with."""
    from sleepy.sandbox.toolchain import toolchain

    return toolchain()[1].splitlines()[0]


def toolchain_key() -> str:
    """`rustc-1.95.0-59807616e`: part of the cache key of every generated pack."""
    from sleepy.sandbox.toolchain import toolchain

    version = toolchain()[1]
    release = re.search(r"release: (\S+)", version)
    commit = re.search(r"commit-hash: (\w{9})", version)
    return f"rustc-{release.group(1) if release else 'unknown'}-{commit.group(1) if commit else 'unknown'}"


def pack_dir(kind: str, key: str) -> Path:
    from sleepy.cache import cache_root

    return cache_root() / "packs" / kind / key


def load_or_make(root: Path, make: Callable[[Path], object], what: str):
    """The pack kept at root; made first when it is not there (into a new directory beside root, then moved in
    place, so a pack is never seen half written and two processes making it at once agree)."""
    from sleepy.koans.pack import load_toml_pack

    if not (root / "pack.toml").exists():
        print(f"making {what} (first use, a few minutes; kept in {root})", file=sys.stderr)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            make(tmp)
            try:
                tmp.rename(root)
            except OSError:  # another process made it first: the same pack
                if not (root / "pack.toml").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_toml_pack(root)


TRANSIENT = ("timeout", "memory")  # a verdict the machine's load can cause: judged again before it counts


def judge_all(sandbox, programs: list) -> list:
    """Verdicts for programs, those that ran out of time or memory judged again one at a time (twice at most), so
    that a busy machine does not change what a generated pack holds."""
    verdicts = sandbox.judge_many(programs)
    for _ in range(2):
        again = [i for i, v in enumerate(verdicts) if v.reason in TRANSIENT]
        for i in again:
            verdicts[i] = sandbox.judge_program(programs[i])
    for i, v in enumerate(verdicts):
        if v.reason in TRANSIENT:
            print(f"warning: a program of the generated pack ran out of {'time' if v.reason == 'timeout' else 'memory'}"
                  f" three times; it is left out (program {i})", file=sys.stderr)
    return verdicts
