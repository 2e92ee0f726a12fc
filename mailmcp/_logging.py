"""
The daemon's ``--log-level`` and ``--log-format``.

The level applies twice.  twistd's log observer is wrapped in a
`FilteringLogObserver`, so every event below the level is dropped whoever
emitted it (``twisted.*``, the access log, every mailmcp module).  And the
`Logger` here drops events below the level before they are even built: the
per-command IMAP trace and the per-call timings are debug events on the hot
path, and building an event that is then filtered out is most of its cost.

The format is twistd's text lines, or JSON lines (one object per line with
``time``, ``level``, ``namespace``, ``system`` and ``text``) for log
shippers.  Both carry the same text: events are formatted the same way, so
what the code keeps out of a message (passwords, tokens) stays out of both.
"""

from __future__ import annotations

import atexit
import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.logger import Logger as _TwistedLogger
from twisted.python import logfile
from twisted.python.threadable import isInIOThread

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
    """A `twisted.logger.Logger` that drops events below `set_log_level` before building them."""

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if _ORDER.get(level, 4) < _threshold:
            return
        super().emit(level, format, **kwargs)


def json_line(event: LogEvent) -> str | None:
    """One event as one line of JSON; the text is what the text format shows, traceback included."""
    level: Any = event.get("log_level")
    when = event.get("log_time")
    record = {
        "time": (
            datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
            if isinstance(when, (int, float))
            else None
        ),
        "level": level.name if level is not None and level in _ORDER else "info",
        "namespace": event.get("log_namespace", "-"),
        "system": event.get("log_system", "-"),
        "text": eventAsText(event, includeTimestamp=False, includeSystem=False).rstrip("\n"),
    }
    return json.dumps(record, default=str) + "\n"


class _SecondClock:
    """
    `formatTime` (twistd's text timestamp, whole seconds) remembered for the
    current second: working out the local UTC offset for every line cost
    more than the rest of an access-log line together.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = math.floor(when)
        if second != self._second:
            self._text = formatTime(second)
            self._second = second
        return self._text


def text_line_formatter() -> Callable[[LogEvent], str | None]:
    """twistd's classic text line (`textFileLogObserver`'s), its timestamp from a `_SecondClock`."""
    clock = _SecondClock()

    def text_line(event: LogEvent) -> str | None:
        # Access-log lines (and anything else written to a redirected file)
        # are events formatted "{log_io}": built here directly, they cost a
        # fifth of what the general formatter spends on them.
        if event.get("log_format") == "{log_io}" and not (
            "log_failure" in event or "log_flattened" in event
        ):
            text = event.get("log_io")
            system = event.get("log_system")
            if type(text) is str and (system is None or type(system) is str):
                if not text:
                    return None
                if system is None:
                    level = event.get("log_level")
                    system = (
                        f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
                    )
                line = f"{clock(event.get('log_time'))} [{system}] {text}"
                return line.replace("\n", "\n\t") + "\n"
        return formatEventAsClassicLogText(event, formatTime=clock)

    return text_line


class TurnBatchedWriter:
    """
    A log file (or stdout) written once per reactor turn.

    `FileLogObserver` writes and flushes every line: one ``write()`` per
    access-log line, which on ext4 also journals the inode's new time, a
    few per cent of the daemon's CPU under load.  Lines logged on the
    reactor thread are kept until the end of the turn (a ``callLater(0)``,
    which runs before the next poll, so before a response finished in this
    turn leaves for its socket); under load one ``write()`` carries the lines
    of every call the turn served.  A line from another thread, and every
    line once the reactor has shut down, is written at once, after those
    kept, in order.  A line logged by a signal handler that interrupted
    this writer on its own thread (twistd's SIGTERM handler logs) is written
    at once too: waiting for the lock it holds would hang the daemon.
    """

    def __init__(
        self, out: IO[str], reactor: Any, in_reactor_thread: Callable[[], bool] = isInIOThread
    ) -> None:
        self._out = out
        self._reactor = reactor
        self._in_reactor_thread = in_reactor_thread
        self._pending: list[str] = []
        self._lock = threading.RLock()
        self._busy = False
        self._scheduled = False
        self._through = False
        reactor.addSystemEventTrigger("after", "shutdown", self._shut_down)
        atexit.register(self.drain)

    def write(self, text: str) -> None:
        with self._lock:
            if self._busy:
                self._write(text)
                return
            self._busy = True
            try:
                self._pending.append(text)
                if self._through or not self._in_reactor_thread():
                    self._write_pending()
                elif not self._scheduled:
                    self._scheduled = True
                    self._reactor.callLater(0, self._end_of_turn)
            finally:
                self._busy = False

    def flush(self) -> None:
        """Nothing: what is kept is written at the end of the turn."""

    def drain(self) -> None:
        """Write what is kept now (before a rotation, at exit)."""
        self._locked_write_pending()

    def _end_of_turn(self) -> None:
        self._scheduled = False
        self._locked_write_pending()

    def _shut_down(self) -> None:
        self._through = True
        self._locked_write_pending()

    def _locked_write_pending(self) -> None:
        with self._lock:
            if self._busy:  # a signal handler draining while this thread writes
                return
            self._busy = True
            try:
                self._write_pending()
            finally:
                self._busy = False

    def _write_pending(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._write(text)

    def _write(self, text: str) -> None:
        try:
            self._out.write(text)
            self._out.flush()
        except Exception:  # noqa: S110
            # Disk full or stdout gone: these lines are lost, as they would
            # be unbatched; logging the failure would only come back here.
            pass


def file_observer(out: IO[str] | TurnBatchedWriter, log_format: str) -> ILogObserver:
    """twistd's text lines, or `json_line`s, written to C{out}."""
    # A TurnBatchedWriter is the part of a text file the observer uses.
    target = cast(IO[str], out)
    if log_format == "json":
        return FileLogObserver(target, json_line)
    return FileLogObserver(target, text_line_formatter())


def filtered(observer: ILogObserver, level: str) -> ILogObserver:
    """C{observer} seeing only events at C{level} and above, from any logger."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(observer, [predicate])


def twistd_observer(
    twistd_options: Mapping[str, Any], level: str, log_format: str, reactor: Any = None
) -> ILogObserver | None:
    """
    The observer twistd would build from its own options (``--logfile``,
    ``--nodaemon``, ``--syslog``), in C{log_format} and filtered at
    C{level}; None where twistd must decide alone (a ``--logger`` of its
    own, or ``--logfile -`` without ``--nodaemon``, which twistd refuses).
    Given the C{reactor}, a file or stdout is written once per reactor turn
    (`TurnBatchedWriter`).
    """
    if twistd_options.get("logger"):
        return None
    if twistd_options.get("syslog"):
        from twisted.python import syslog

        legacy: Any = syslog.SyslogObserver(twistd_options.get("prefix") or "twisted").emit
        observer: ILogObserver = LegacyLogObserverWrapper(legacy)
        return filtered(observer, level)
    name = twistd_options.get("logfile") or ""
    nodaemon = bool(twistd_options.get("nodaemon"))
    log_file: logfile.LogFile | None = None
    out: IO[str]
    if name == "-":
        if not nodaemon:
            return None
        out = sys.stdout
    elif nodaemon and not name:
        out = sys.stdout
    else:
        out = log_file = logfile.LogFile.fromFullPath(name or "twistd.log")
    batched = None if reactor is None else TurnBatchedWriter(out, reactor)
    if log_file is not None:
        _rotate_on_sigusr1(log_file, batched)
    return filtered(file_observer(out if batched is None else batched, log_format), level)


def _rotate_on_sigusr1(log_file: logfile.LogFile, batched: TurnBatchedWriter | None) -> None:
    """What twistd does for its own log file: SIGUSR1 rotates it, unless someone else handles it."""
    if signal.getsignal(signal.SIGUSR1):
        return

    def rotate_now() -> None:
        if batched is not None:
            batched.drain()  # lines logged before the signal stay in the old file
        log_file.rotate()

    def rotate(signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(rotate_now)  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, rotate)
