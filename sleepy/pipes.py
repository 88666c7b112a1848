"""Console scripts that end quietly when their reader goes away: `sleepy-koans list --json | head`.

A reader that closes the pipe early (head, less) makes the next write fail with BrokenPipeError; a command line
tool then stops, as if killed by SIGPIPE (exit status 141), without a traceback and without a second error when
Python flushes stdout on exit.
"""

from __future__ import annotations

import functools
import os
import sys

SIGPIPE_STATUS = 128 + 13


def quiet_on_closed_pipe(main):
    """Wrap a console script's main: its output flushed before it returns; a closed pipe ends it with status 141."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            try:
                return main(*args, **kwargs)
            finally:  # also on sys.exit: what is buffered is written now, while a closed pipe can still be handled
                sys.stdout.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)  # what is still buffered goes nowhere, not to a closed pipe
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(SIGPIPE_STATUS) from None
    return wrapper
