"""Where sleepy keeps what it can rebuild: verdicts, the tiny model."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$SLEEPY_CACHE_DIR, else $XDG_CACHE_HOME/sleepy, else ~/.cache/sleepy."""
    base = os.environ.get("SLEEPY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sleepy")
    return Path(base)
