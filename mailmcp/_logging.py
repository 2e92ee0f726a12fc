"""
The daemon's ``--log-level``: a `Logger` that drops events below it before
they are built.

twistd writes every event it is given, and formatting and writing a line is
a large share of a warm tool call's CPU; the per-command IMAP trace and the
per-call timings are only worth that when someone asked for them.  The level
is process-wide, like the log file.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger as _TwistedLogger
from twisted.logger import LogLevel

_ORDER = {
    LogLevel.debug: 0,
    LogLevel.info: 1,
    LogLevel.warn: 2,
    LogLevel.error: 3,
    LogLevel.critical: 4,
}
_threshold = _ORDER[LogLevel.info]


def set_log_level(name: str) -> None:
    """Write events at level C{name} (``debug``, ``info``, ``warn``, ``error``) and above."""
    global _threshold
    _threshold = _ORDER[LogLevel.levelWithName(name)]


def debug_enabled() -> bool:
    """Whether debug events are written (to skip building costly ones)."""
    return _threshold == 0


class Logger(_TwistedLogger):
    """A `twisted.logger.Logger` that honours `set_log_level`."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if _ORDER.get(level, 4) < _threshold:
            return
        super().emit(level, format, **kwargs)
