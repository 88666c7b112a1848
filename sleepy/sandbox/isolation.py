"""How a step (compile or run) is isolated: bubblewrap, else a network namespace, else nothing (loudly).

Levels, strongest first:
- `bwrap`: a new mount, pid, ipc and uts namespace holding a minimal view of the machine (and no
  network: a seccomp filter refuses every socket, else an empty network namespace):
  the toolchain (at /toolchain, compile step only), /usr with the system libraries, the two /etc
  files linking needs, a size-capped /tmp, a read-only /dev, /proc for the compiler only, and the
  work dir (writable, compile step) or the binary (read-only and execute-only, run step). Nothing of
  /root, /home, the repository or the caches. The step runs under an identity of its own with no
  capabilities: as root, a uid leased from the machine-wide pool (`uids.py`); as a user, that user
  in a new user namespace, where the process limit counts only this judgement's processes. When the
  step ends, its pid namespace ends, and every process in it with it.
- `netns`: `unshare` into new network and pid namespaces; the file system is not protected.
- `none`: limits and process-group kill only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
import tempfile
import warnings

from sleepy.sandbox.launcher import INSIDE, launcher, options
from sleepy.sandbox.process import prlimit_prefix

log = logging.getLogger(__name__)

LEVELS = ("bwrap", "netns", "none")
TOOLCHAIN = "/toolchain"  # where the compile step sees the toolchain's sysroot
WORK = "/work"  # where the compile step sees its work dir
ETC = ("/etc/ld.so.cache", "/etc/alternatives")  # what the compiler driver and the loader read in /etc


def is_root() -> bool:
    return os.geteuid() == 0


def sandbox_paths(level: str, workdir: str, sysroot: str) -> tuple[str, str]:
    """(work dir, sysroot) as the compile step sees them."""
    return (WORK, TOOLCHAIN) if level == "bwrap" else (workdir, sysroot)


def wrap(level: str, argv: list[str], *, step: str, workdir: str, sysroot: str = "", binary: str = "",
         uid: int | None = None, limits=None, tmp_mb: int = 64, seccomp_fd: int | None = None) -> list[str]:
    """The command that runs argv (paths as the step sees them) isolated at `level`.

    step="compile": the work dir is writable and the cwd. step="run": argv[0] is the binary, shown
    read-only at /tmp/<name> in a private, size-capped /tmp that is the cwd.
    limits: the step's `process.Limits` (None: none), applied inside the namespaces by the launcher
    (`launcher.py`) so that the process limit counts only this step's processes; outside bwrap by util-linux
    `prlimit`. uid: as root, the leased uid the step runs as. seccomp_fd: the step's compiled filter (bwrap
    only; `seccomp.py`), which also keeps it off the network."""
    if level == "bwrap":
        view = ["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin", "--perms", "0755", "--dir", "/etc"]
        for path in ETC:
            if os.path.exists(path):
                view += ["--ro-bind", path, path]
        view += ["--dev", "/dev", "--remount-ro", "/dev", "--size", str(tmp_mb * 1024 * 1024), "--perms", "1777",
                 "--tmpfs", "/tmp"]
        if step == "compile":
            view += ["--proc", "/proc", "--ro-bind", sysroot, TOOLCHAIN, "--bind", workdir, WORK, "--chdir", WORK]
        else:
            inner = "/tmp/" + os.path.basename(binary)
            view += ["--ro-bind", binary, inner, "--chdir", "/tmp"]
        spaces = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        # no network: the seccomp filter refuses every socket; without one, an empty network namespace
        spaces += ["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else ["--unshare-net"]
        if uid is None:  # a user: a user namespace of its own, in which the process limit counts only this step
            spaces.append("--unshare-user")
        # bwrap sets up the view; the launcher sets the limits and, as root, drops to the leased uid, no capabilities
        view += ["--ro-bind", launcher(), INSIDE]
        bwrap = shutil.which("bwrap") or "bwrap"
        return [bwrap, *view, *spaces, "--die-with-parent", "--new-session", "--", INSIDE, *options(uid, limits), "--",
                *argv]
    limits = prlimit_prefix(limits) if limits is not None else []
    if level == "netns":
        args = [shutil.which("unshare") or "unshare"]
        if (uid if uid is not None else os.geteuid()) != 0:
            args.append("--map-root-user")
        return [*limits, *args, "--net", "--pid", "--fork", "--kill-child", "--", *argv]
    return [*limits, *argv]


def _works(argv: list[str], user: int | None = None) -> bool:
    try:
        r = subprocess.run(argv, capture_output=True, timeout=20, user=user, group=user,
                           extra_groups=[] if user is not None else None)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


@functools.cache
def detect(requested: str = "auto") -> str:
    """The strongest isolation level that works here (or the requested one, if it works)."""
    from sleepy.sandbox import uids

    if requested not in ("auto", *LEVELS):
        raise ValueError(f"sandbox isolation must be one of auto, {', '.join(LEVELS)}; got {requested!r}")
    candidates = LEVELS if requested == "auto" else (requested,)
    true = shutil.which("true") or "/bin/true"
    for level in candidates:
        if level == "none":
            break
        with tempfile.TemporaryDirectory() as d, (uids.lease() if is_root() else contextlib.nullcontext()) as uid:
            if uid is not None and level == "netns":
                os.chown(d, uid, uid)
            probe = wrap(level, [true], step="compile", workdir=d, sysroot=d, uid=uid if level == "bwrap" else None)
            if _works(probe, user=uid if level != "bwrap" else None):
                return level
        if requested != "auto":
            raise RuntimeError(f"sandbox isolation {level!r} was requested but does not work on this machine")
    msg = ("sleepy sandbox: NO ISOLATION. Neither bubblewrap nor network namespaces work here, so "
           "LLM-written programs run with your permissions and network access. Install bubblewrap.")
    warnings.warn(msg, RuntimeWarning, stacklevel=2)
    log.warning(msg)
    return "none"
