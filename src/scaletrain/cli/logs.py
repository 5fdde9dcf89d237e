"""The command line's handler for the library's `scaletrain` logger: messages to stderr as plain
lines (progress and diagnostics on stderr, a command's result on stdout). The library only logs (it
never prints); a Python-API user configures `logging` as usual.

Verbosity: `-q` shows warnings and errors only (no step lines, no progress bar), the default adds
the run's progress (INFO), `-v` adds DEBUG and the other libraries' known noise (scaletrain.noise)."""

from __future__ import annotations

import logging
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and callers may redirect it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler assigns it; the current sys.stderr always wins
        pass


def level_for(verbose: int = 0, quiet: bool = False) -> int:
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose else logging.INFO


def configure(level: int = logging.INFO) -> None:
    from scaletrain import noise

    if level > logging.DEBUG:
        noise.silence_warnings()
    logger = logging.getLogger("scaletrain")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # one line per message, whatever the root logger does
