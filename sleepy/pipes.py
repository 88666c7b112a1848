"""Console scripts that end quietly when their reader goes away: `sleepy-koans list --json | head`.

A reader that closes the pipe early (head, less) makes the next write fail with BrokenPipeError; a command line
tool then stops, as if killed by SIGPIPE (exit status 141), without a traceback and without a second error when
Python flushes stdout on exit. Output that goes through `logging` (Hydra's --info) is covered too: logging would
otherwise print a "Logging error" traceback for every record it could not write.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

SIGPIPE_STATUS = 128 + 13


def quiet_on_closed_pipe(main):
    """Wrap a console script's main: its output flushed before it returns; a closed pipe ends it with status 141."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        _logging_stops_on_a_closed_pipe()
        try:
            try:
                return main(*args, **kwargs)
            finally:  # also on sys.exit: what is buffered is written now, while a closed pipe can still be handled
                sys.stdout.flush()
        except BrokenPipeError:
            _stop()
    return wrapper


def _stop():
    devnull = os.open(os.devnull, os.O_WRONLY)  # what is still buffered goes nowhere, not to a closed pipe
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(SIGPIPE_STATUS) from None


def _logging_stops_on_a_closed_pipe() -> None:
    """A log handler that cannot write to a closed stdout ends the command as a closed pipe does; any other logging
    error is reported as logging reports it."""
    handle_error = logging.Handler.handleError
    if getattr(handle_error, "closed_pipe_aware", False):
        return

    def handleError(self, record):  # noqa: N802 - logging's name
        if isinstance(sys.exc_info()[1], BrokenPipeError) and getattr(self, "stream", None) is sys.stdout:
            _stop()
        handle_error(self, record)

    handleError.closed_pipe_aware = True
    logging.Handler.handleError = handleError
