"""
`mailmcp._logging`: the observer the daemon hands twistd (level filter for
every logger, text or JSON lines) and the early-drop `Logger`.
"""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import pytest
from twisted.logger import Logger as TwistedLogger
from twisted.logger import LogLevel, LogPublisher

from mailmcp._logging import file_observer, filtered, twistd_observer


def emit_all(observer: object) -> None:
    publisher = LogPublisher(observer)  # type: ignore[arg-type]
    log = TwistedLogger(namespace="some.module", observer=publisher)
    log.debug("debug {n}", n=1)
    log.info("info {n}", n=2)
    log.warn("warn {n}", n=3)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("error {n}", n=4)


def test_json_lines_carry_time_level_namespace_and_the_text_format_text() -> None:
    """One JSON object per line; the text is what the text format writes, traceback included."""
    out = io.StringIO()
    emit_all(file_observer(out, "json"))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["level"], r["namespace"]) for r in records] == [
        ("debug", "some.module"), ("info", "some.module"), ("warn", "some.module"),
        ("critical", "some.module"),
    ]
    assert [r["text"].splitlines()[0] for r in records] == ["debug 1", "info 2", "warn 3", "error 4"]
    assert "ZeroDivisionError" in records[3]["text"]
    assert all(r["time"].endswith("+00:00") for r in records)


@pytest.mark.parametrize("level, kept", [("debug", 4), ("info", 3), ("warn", 2), ("error", 1)])
def test_level_filter_applies_to_any_logger(level: str, kept: int) -> None:
    """A plain twisted Logger (not ours) is filtered too: the level is applied by the observer."""
    out = io.StringIO()
    emit_all(filtered(file_observer(out, "json"), level))
    assert len(out.getvalue().splitlines()) == kept


def test_twistd_choices(tmp_path: Path) -> None:
    """twistd's own rules pick the file; where twistd must decide alone, no observer is offered."""
    assert twistd_observer({"logger": "x.y"}, "info", "json") is None
    assert twistd_observer({"logfile": "-", "nodaemon": False}, "info", "json") is None
    assert twistd_observer({"logfile": "-", "nodaemon": True}, "info", "text") is not None
    before = signal.getsignal(signal.SIGUSR1)
    try:
        path = tmp_path / "d.log"
        observer = twistd_observer({"logfile": str(path), "nodaemon": True}, "warn", "json")
        assert observer is not None
        emit_all(observer)
        levels = [json.loads(line)["level"] for line in path.read_text().splitlines()]
        assert levels == ["warn", "critical"]
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_our_logger_drops_below_the_level_before_building() -> None:
    """The early drop still applies to mailmcp's Logger (the hot-path debug events)."""
    from mailmcp._logging import Logger, debug_enabled, set_log_level

    seen: list[object] = []
    log = Logger(namespace="hot", observer=seen.append)
    set_log_level("info")
    try:
        log.debug("dropped")
        log.info("kept")
        assert not debug_enabled()
        assert [e["log_format"] for e in seen] == ["kept"]  # type: ignore[index]
    finally:
        set_log_level("info")
    assert LogLevel.levelWithName("warn") is LogLevel.warn


def test_text_lines_are_twistds_own_with_the_timestamp_formatted_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    The text format writes exactly what twistd's `textFileLogObserver` writes
    (same timestamp, system, text, traceback layout) for events across second
    boundaries, without one, and at the epoch; the timestamp is worked out
    once per second, not once per line.
    """
    from twisted.logger import textFileLogObserver

    from mailmcp import _logging

    calls: list[float | None] = []
    real = _logging.formatTime

    def counting(when: float | None) -> str:
        calls.append(when)
        return real(when)

    monkeypatch.setattr(_logging, "formatTime", counting)
    ours, theirs = io.StringIO(), io.StringIO()
    observer, reference = file_observer(ours, "text"), textFileLogObserver(theirs)
    base = 1_800_000_000.25
    times = [base, base + 0.5, base + 0.74, base + 0.75, base + 3600.9, None, 0.0, -0.5]
    for i, when in enumerate(times):
        event = {"log_format": "line {n}\nsecond line", "n": i, "log_namespace": "ns", "log_level": LogLevel.warn}
        if when is not None:
            event["log_time"] = when
        observer(event)
        reference(event)
    # Lines written to a redirected file (the access log): their own shortcut.
    written: list[dict[str, object]] = [
        {"log_format": "{log_io}", "log_io": '127.0.0.1 - - [x] "POST /mcp HTTP/1.1" 200 5 "{a}"'},
        {"log_format": "{log_io}", "log_io": "two\nlines {0}", "log_system": "sys"},
        {"log_format": "{log_io}", "log_io": "", "log_namespace": "ns"},
        {"log_format": "{log_io}", "log_io": b"bytes", "log_level": LogLevel.info},
        {"log_format": "{log_io}", "log_io": "odd system", "log_system": 7},
        {"log_format": "{log_io}"},
    ]
    for event in written:
        event.update(log_namespace=event.get("log_namespace", "twisted.python.log"), log_time=base)
        observer(event)
        reference(event)
    assert ours.getvalue() == theirs.getvalue()
    assert len(ours.getvalue().splitlines()) == 2 * len(times) + 6
    # base, base + 0.5 and + 0.74 share a second: one formatting for the three.
    # (then the redirected-file lines, back at base's second: one more.)
    assert [c for c in calls if c is not None] == [1_800_000_000, 1_800_000_001, 1_800_003_601, 0, -1, 1_800_000_000]


class CountingFile(io.StringIO):
    """A text file that counts its write() calls (each one a syscall on a real file)."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def access_line(publisher: LogPublisher, n: int) -> None:
    TwistedLogger(namespace="twisted.web.server", observer=publisher).info(
        "{log_io}", log_io=f'127.0.0.1 - - "POST /mcp HTTP/1.1" 200 {n}'
    )


def test_lines_of_one_reactor_turn_are_written_together_at_its_end() -> None:
    """
    Lines logged on the reactor thread during a turn reach the file in one
    write at the end of the turn (callLater(0)), in order, with the same
    text the unbatched observer writes.
    """
    from twisted.internet.testing import MemoryReactorClock

    from mailmcp._logging import TurnBatchedWriter

    reactor = MemoryReactorClock()
    out, plain = CountingFile(), io.StringIO()
    batched = TurnBatchedWriter(out, reactor, in_reactor_thread=lambda: True)
    publisher = LogPublisher(file_observer(batched, "text"), file_observer(plain, "text"))
    for n in range(5):
        access_line(publisher, n)
    assert out.getvalue() == "" and out.writes == 0
    reactor.advance(0)
    assert out.writes == 1 and out.getvalue() == plain.getvalue()
    assert [line.rsplit(" ", 1)[1] for line in out.getvalue().splitlines()] == ["0", "1", "2", "3", "4"]
    access_line(publisher, 5)  # the next turn schedules its own write
    reactor.advance(0)
    assert out.writes == 2 and out.getvalue() == plain.getvalue()


def test_lines_from_other_threads_and_after_shutdown_are_written_at_once() -> None:
    """
    A line from another thread is written at once, after the lines kept so
    far (order kept); after the reactor's shutdown every line is; and
    drain() (rotation, exit) writes what is kept.
    """
    from twisted.internet.testing import MemoryReactorClock

    from mailmcp._logging import TurnBatchedWriter

    reactor = MemoryReactorClock()
    on_reactor = [True]
    out = CountingFile()
    batched = TurnBatchedWriter(out, reactor, in_reactor_thread=lambda: on_reactor[0])
    publisher = LogPublisher(file_observer(batched, "text"))
    access_line(publisher, 1)
    on_reactor[0] = False
    access_line(publisher, 2)
    assert out.writes == 1 and [line[-1] for line in out.getvalue().splitlines()] == ["1", "2"]
    on_reactor[0] = True
    access_line(publisher, 3)
    batched.drain()
    assert out.getvalue().splitlines()[-1].endswith("3")
    reactor.advance(0)  # the turn's end finds nothing left to write
    assert out.writes == 2
    for trigger, args, kwargs in reactor.triggers["after"]["shutdown"]:
        trigger(*args, **kwargs)
    access_line(publisher, 4)
    assert out.writes == 3 and out.getvalue().splitlines()[-1].endswith("4")


def test_a_line_logged_while_the_writer_is_busy_on_its_thread_is_written_not_waited_for() -> None:
    """
    twistd's SIGTERM handler logs from the main thread, possibly while that
    thread is inside the writer: the line is written at once (waiting for
    the writer's own lock would hang the daemon), and nothing is lost.
    """
    from twisted.internet.testing import MemoryReactorClock

    from mailmcp._logging import TurnBatchedWriter

    reactor = MemoryReactorClock()

    class InterruptedFile(CountingFile):
        """The first write is 'interrupted' by a handler that logs a line."""

        def write(self, text: str) -> int:
            if self.writes == 0:
                self.writes += 1
                batched.write("signal line\n")
                return io.StringIO.write(self, text)
            return super().write(text)

    out = InterruptedFile()
    batched = TurnBatchedWriter(out, reactor, in_reactor_thread=lambda: True)
    batched.write("first\n")
    batched.write("second\n")
    reactor.advance(0)
    assert sorted(out.getvalue().splitlines()) == ["first", "second", "signal line"]
    batched.write("third\n")
    reactor.advance(0)
    assert out.getvalue().splitlines()[-1] == "third"
