"""How programs are isolated: bubblewrap, else a network namespace, else nothing (loudly).

Levels, strongest first:
- `bwrap`: read-only root, private size-limited /tmp, only the work dir writable (compile step)
  or nothing on disk writable (run step), no network, new pid namespace and session, dies with
  the judge.
- `netns`: `unshare` into new network and pid namespaces; the file system is not protected.
- `none`: limits and process-group kill only.

When the judge runs as root, compiled programs run as an unprivileged uid of their own (one per
concurrent slot), so the process limit applies and every leftover process can be found and killed.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import warnings

log = logging.getLogger(__name__)

LEVELS = ("bwrap", "netns", "none")
SANDBOX_UID_BASE = 61000


def sandbox_uid(slot: int) -> int | None:
    """The uid a run step uses in slot `slot`, or None when the judge cannot change uid."""
    return SANDBOX_UID_BASE + slot if os.geteuid() == 0 else None


def _works(argv: list[str], user: int | None = None) -> bool:
    try:
        r = subprocess.run(argv, capture_output=True, timeout=10, user=user, group=user, extra_groups=[]
                           if user is not None else None)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


@functools.cache
def detect(requested: str = "auto") -> str:
    """The strongest isolation level that works here (or the requested one, if it works)."""
    candidates = LEVELS if requested == "auto" else (requested,)
    if requested not in ("auto", *LEVELS):
        raise ValueError(f"sandbox isolation must be one of auto, {', '.join(LEVELS)}; got {requested!r}")
    true = shutil.which("true") or "/bin/true"
    for level in candidates:
        if level == "none":
            break
        probes = [wrap(level, [true], workdir="/", writable=False, user=None)]
        uid = sandbox_uid(0)
        if uid is not None:
            probes.append(wrap(level, [true], workdir="/", writable=False, user=uid))
        if all(_works(p, user=(None if i == 0 else uid)) for i, p in enumerate(probes)):
            return level
        if requested != "auto":
            raise RuntimeError(f"sandbox isolation {level!r} was requested but does not work on this machine")
    msg = (
        "sleepy sandbox: NO ISOLATION. Neither bubblewrap nor network namespaces work here, so "
        "LLM-written programs run with your permissions and network access. Install bubblewrap."
    )
    warnings.warn(msg, RuntimeWarning, stacklevel=2)
    log.warning(msg)
    return "none"


def wrap(level: str, argv: list[str], *, workdir: str, writable: bool, user: int | None,
         tmp_mb: int = 64) -> list[str]:
    """Wrap argv for the isolation level.

    writable=True (compile): workdir is bound read-write at its own path and is the cwd.
    writable=False (run): nothing on disk is writable; cwd is a private, size-limited /tmp, and the
    file named argv[0] is bound read-only inside it.
    """
    if level == "bwrap":
        args = [shutil.which("bwrap") or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--size", str(tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        if writable:
            args += ["--bind", workdir, workdir, "--chdir", workdir]
        else:
            inner = "/tmp/" + os.path.basename(argv[0])
            args += ["--ro-bind", argv[0], inner, "--chdir", "/tmp"]
            argv = [inner, *argv[1:]]
        args += ["--unshare-all", "--die-with-parent", "--new-session", "--"]
        return args + argv
    if level == "netns":
        args = [shutil.which("unshare") or "unshare"]
        if (user if user is not None else os.geteuid()) != 0:
            args.append("--map-root-user")
        return args + ["--net", "--pid", "--fork", "--kill-child", "--"] + argv
    return argv
