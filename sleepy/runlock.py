"""One job per run id: a resumed run is locked so that a second job on it stops at once, naming the holder.

The lock is a POSIX record lock (fcntl.lockf) on `<episodes.uri>/.locks/<run id>.lock`: the kernel drops it when
the holding process ends, however it ends, so a crashed job leaves no stale lock; on NFS the lock goes through
the server's lock manager, so jobs on different hosts sharing the store see each other too. The file holds the
holder's host, pid and start time, for the message the second job prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class RunLocked(RuntimeError):
    """Another job holds the run."""


class RunLock:
    def __init__(self, store_dir: str | Path, run_id: str):
        self.path = Path(store_dir) / ".locks" / f"{run_id}.lock"
        self.run_id = run_id
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(fd)
            os.close(fd)
            raise RunLocked(f"run {self.run_id} is being run by another job ({holder}); wait for it to end, or "
                            f"stop it (its lock: {self.path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
