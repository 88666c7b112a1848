"""Run one command under limits: wall time, CPU, memory, processes, file size, captured output.

The command starts in its own process group; on timeout or output overflow the whole group is
killed. Resource limits are applied where they must start, inside the sandbox's namespaces, so that
the process limit counts only the judged program's processes: by sleepy's launcher inside bubblewrap
(`launcher.py`), by util-linux `prlimit` (`prlimit_prefix`) at the weaker isolation levels. No Python
code runs between fork and exec, so this is safe from the judging threads.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Resource limits for one step (compile or run)."""

    wall_s: float
    memory_mb: int
    file_size_mb: int = 64
    output_kb: int = 256
    processes: int | None = None


@dataclass
class Completed:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    output_exceeded: bool
    wall_ms: float

    @property
    def signal(self) -> int | None:
        """The signal that ended the program (wrappers report it as 128 + signal)."""
        rc = self.returncode
        if rc is None:
            return None
        if rc < 0:
            return -rc
        return rc - 128 if 128 < rc <= 128 + 64 else None


def rlimit_options(limits: Limits) -> list[str]:
    """The step's resource limits as options, the same for util-linux `prlimit` and sleepy's launcher: address
    space, CPU seconds (the wall limit, rounded up), file size, no core dumps, and processes when limited."""
    args = [f"--as={limits.memory_mb * 1024 * 1024}", f"--cpu={int(limits.wall_s) + 1}",
            f"--fsize={limits.file_size_mb * 1024 * 1024}", "--core=0"]
    if limits.processes is not None:
        args.append(f"--nproc={limits.processes}")
    return args


def prlimit_prefix(limits: Limits) -> list[str]:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        raise RuntimeError("the sandbox needs util-linux `prlimit` on PATH to apply resource limits")
    return [prlimit, *rlimit_options(limits), "--"]


def run_limited(
    argv: list[str],
    limits: Limits,
    *,
    cwd: str,
    env: dict[str, str],
    user: int | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Completed:
    """Run argv (which applies its own resource limits) under the wall-time and output limits."""
    cap = limits.output_kb * 1024
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        process_group=0,
        user=user,
        group=user,
        extra_groups=[] if user is not None else None,
        close_fds=True,
        pass_fds=pass_fds,
    )
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for f in bufs:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    deadline = start + limits.wall_s
    timed_out = exceeded = False
    try:
        while sel.get_map():
            left = deadline - time.perf_counter()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                chunk = key.fileobj.read(65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                buf += chunk
                if len(buf) > cap:
                    del buf[cap:]
                    exceeded = True
            if exceeded:
                break
        if not (timed_out or exceeded):
            try:
                proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        kill_group(proc.pid)
        proc.wait()
        sel.close()
        for f in bufs:
            f.close()
    wall_ms = (time.perf_counter() - start) * 1000
    out, err = (bufs[f].decode("utf-8", "replace") for f in (proc.stdout, proc.stderr))
    return Completed(proc.returncode, out, err, timed_out, exceeded, wall_ms)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def live_processes(uid: int) -> list[int]:
    """Pids of the processes owned by uid that are still alive (zombies excluded: they have exited)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            pids.append(int(entry.name))
    return pids


def kill_user_processes(uid: int, patience_s: float = 2.0) -> int:
    """SIGKILL every process of a sandbox-only uid until none is alive; returns how many were killed."""
    killed = 0
    deadline = time.perf_counter() + patience_s
    while (pids := live_processes(uid)) and time.perf_counter() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    return killed
