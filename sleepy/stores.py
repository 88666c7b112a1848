"""A damaged or unwritable store is one line: which store, its path, what failed and what to do.

The episode store (LanceDB) and the MLflow store are opened and read through `store_errors`, so a corrupt sqlite
file, a missing Lance data file, a garbled manifest or a read-only directory stops a job with one line before
any model call, and nothing already stored is touched.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

WHAT_TO_DO = {
    "episode": "restore the directory from a backup, or point episodes.uri at another directory",
    "MLflow": "restore the file from a backup, or point tracking.uri at another store",
}


class StoreError(RuntimeError):
    """A store cannot be opened, read or written."""


def first_line(error: BaseException) -> str:
    """The gist of a store library's error: its first line, without the SQL or the Rust source location."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r",? /\S+\.rs:\d+:\d+$", "", text)  # lance: ", /root/.cargo/.../local.rs:273:40"
    return text.split(" [SQL:")[0][:300]


@contextmanager
def store_errors(kind: str, where: str, doing: str):
    """Turn any failure of the `kind` store at `where` while `doing` into one StoreError line."""
    try:
        yield
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the store library raises, the user gets one line
        raise StoreError(f"the {kind} store at {where} cannot be {doing}: {first_line(e)}; {WHAT_TO_DO[kind]} "
                         "(nothing in it was changed)") from None
