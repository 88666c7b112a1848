"""The step launcher (`launch.rs`): built once per toolchain with the judge's own rustc, kept in the cache.

Inside bubblewrap every step starts with it: it applies the step's resource limits (the process limit then counts
only this step's processes), drops to the judgement's leased uid with no capabilities and no_new_privs (as root),
and execs the step. util-linux `setpriv` and `prlimit` did the same in two more execs, a dynamically linked program
each: about 9 ms per judged program on a loaded machine (BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from sleepy.sandbox.process import rlimit_options

INSIDE = "/sleepy-launch"  # where a step sees it


@functools.cache
def launcher() -> str:
    """The launcher's path, built first if this toolchain has none yet (static where the C library allows)."""
    from sleepy.cache import cache_root
    from sleepy.sandbox.toolchain import toolchain

    rustc, version, _ = toolchain()
    source = Path(__file__).with_name("launch.rs").read_bytes()
    path = cache_root() / "launch" / hashlib.sha256(source + version.encode()).hexdigest()[:16] / "launch"
    if path.is_file():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as d:
        built = Path(d, "launch")
        args = [rustc, "--edition", "2021", "-O", "-C", "panic=abort", "-C", "strip=symbols", "-o", str(built), "-"]
        for static in (["-C", "target-feature=+crt-static"], []):  # static: no dynamic loader to run in every step
            r = subprocess.run(args + static, input=source, capture_output=True, cwd=d)
            if r.returncode == 0:
                break
        else:
            raise RuntimeError(f"cannot build the sandbox's launcher with {rustc}: "
                               f"{r.stderr.decode(errors='replace').strip()[-400:]}")
        os.chmod(built, 0o755)
        os.replace(built, path)  # whole or not at all, when other processes build it at the same time
    return str(path)


def options(uid: int | None, limits) -> list[str]:
    """The launcher's options for a step: the uid to drop to (None: stay), then `process.Limits` as rlimits."""
    return ([f"--uid={uid}"] if uid is not None else []) + (rlimit_options(limits) if limits is not None else [])
