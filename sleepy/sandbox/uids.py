"""Unprivileged uids for judgements run by root: each leased to one judgement at a time, machine-wide.

Every sleepy process on the machine (the jobs of a sweep, three `verify`s at once) leases from the
same pool of lock files, so no two judgements ever share a uid: one judgement's process limit never
counts another's processes, and its clean-up never touches another's. A lease is an `flock`; it ends
when the judgement releases it or its process dies, so a crash leaves no stale lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
from collections.abc import Iterator
from pathlib import Path

BASE = 61000
SIZE = 184  # 61000..61183: below the range systemd gives dynamic users (61184-65519)
LOCK_DIR = Path(os.environ.get("SLEEPY_UID_LOCKS", "/tmp/.sleepy-sandbox-uids"))


class NoFreeUid(RuntimeError):
    pass


@contextlib.contextmanager
def lease() -> Iterator[int]:
    """A uid no other judgement on this machine holds, held until the block ends."""
    LOCK_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    start = random.randrange(SIZE)
    for i in range(SIZE):
        uid = BASE + (start + i) % SIZE
        fd = os.open(LOCK_DIR / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)  # closing the descriptor releases the lock
        return
    raise NoFreeUid(f"all {SIZE} sandbox uids ({BASE}-{BASE + SIZE - 1}) are leased by running judgements "
                    f"(locks in {LOCK_DIR})")


def in_pool(uid: int) -> bool:
    return BASE <= uid < BASE + SIZE
