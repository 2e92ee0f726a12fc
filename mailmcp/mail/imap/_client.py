"""
The hardened IMAP client protocol.

`IMAPClientProtocol` subclasses Twisted's `IMAP4Client` (tag generation,
``Command`` objects, the ``IMAP4Client`` identity other code may check) but
replaces everything that docs/threat-model.rst (stack traps, P) and the
targets of docs/architecture.rst found wanting:

- receiving: our own buffer loop with a bounded line length (P-06) and a
  bounded literal size (P-07), no temp files, no recursion per literal;
  responses are handed on as raw segments for the fast parser
  (`mailmcp.mail.imap._parser`) instead of going through ``parseNestedParens``;
- commands: `RawCommand` keeps every untagged line (a widened ``Command``:
  ESEARCH, COPYUID, HIGHESTMODSEQ, VANISHED... are never dropped) and
  supports literals, synchronising or LITERAL+;
- a deadline on every command, the greeting and the TLS upgrade (P-05),
  driven by an injected clock; on expiry the connection is aborted;
- connection setup that never sends credentials in clear or over an
  unverified TLS session (P-08): STARTTLS is mandatory in ``starttls``
  mode, PREAUTH greetings are refused, LOGINDISABLED is honoured;
- errors as `IMAPError` with messages fit for the user.

One connection runs one command at a time (the session serialises them);
the queue inherited from ``IMAP4Client`` is only a safety net.  The one
exception is `IMAPClientProtocol.send` with ``pipeline=True``: a command
without literals or continuations is written at once behind the one in
flight (``NOOP`` + ``FETCH``: one round trip instead of two); untagged
responses belong to the oldest command still running, as the server
answers pipelined commands in order (RFC 3501 §5.5).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.mail import imap4
from twisted.python.failure import Failure

from ..._logging import Logger, debug_enabled
from .._mailbox_api import IMAPError, Literal
from ._parser import RawResponse, Value, split_code

log = Logger()

DEFAULT_MAX_LINE = 1024 * 1024
DEFAULT_MAX_LITERAL = 64 * 1024 * 1024

_LITERAL_END = re.compile(rb"\{([0-9]{1,20})\}$")
_PRINTABLE = re.compile(rb"[^\x20-\x7e]")


_DONE = Failure(ConnectionDone())


def server_text(text: bytes, limit: int = 200) -> str:
    """A server's human-readable text, made safe to show and log."""
    return _PRINTABLE.sub(b"?", text[:limit]).decode("ascii").strip()


class CommandFailed(IMAPError):
    """A tagged NO or BAD; ``code`` is the parsed response code, if any."""

    def __init__(self, command: str, status: bytes, code: list[Value] | None, text: bytes) -> None:
        self.command = command
        self.status = status.decode("ascii", "replace")
        self.code = code
        self.code_name = code[0] if code and isinstance(code[0], bytes) else None
        self.text = server_text(text)
        transient = self.code_name in (b"UNAVAILABLE", b"INUSE", b"LIMIT")
        super().__init__(
            f"the mail server refused {command}: {self.text or self.status}", transient=transient
        )


class Response:
    """The outcome of one command: its untagged lines and the tagged OK."""

    __slots__ = ("lines", "code", "text")

    def __init__(self, lines: list[RawResponse], tagged: bytes) -> None:
        self.lines = lines
        self.code, self.text = split_code(tagged)


def layout(
    tag: bytes, name: bytes, pieces: Sequence[bytes | Literal], literal_plus: bool
) -> list[bytes]:
    """
    The writes of one command.  Element 0 goes out at once; each further
    element after one ``+`` continuation (synchronising literals).  With
    C{literal_plus} everything is in element 0 (``{n+}``).  Text pieces are
    concatenated as given: callers put the spaces in.
    """
    writes: list[list[bytes]] = [[tag, b" ", name]]
    for piece in pieces:
        if isinstance(piece, Literal):
            if literal_plus:
                writes[-1].append(b"{%d+}\r\n" % len(piece.data))
                writes[-1].append(piece.data)
            else:
                writes[-1].append(b"{%d}\r\n" % len(piece.data))
                writes.append([piece.data])
        else:
            writes[-1].append(piece)
    writes[-1].append(b"\r\n")
    return [b"".join(w) for w in writes]


def describe(pieces: Sequence[bytes | Literal]) -> str:
    """Command arguments for the log: literals shown by size only."""
    out = []
    for piece in pieces:
        if isinstance(piece, Literal):
            out.append(f"{{{len(piece.data)} bytes}}")
        else:
            out.append(piece.decode("ascii", "backslashreplace"))
    return "".join(out).strip()


class RawCommand(imap4.Command):
    """
    One command with its arguments as pieces (bytes or `Literal`).  Every
    untagged response that arrives while it runs is kept raw in C{lines}:
    nothing is filtered, so ESEARCH, COPYUID, HIGHESTMODSEQ and the rest
    are never dropped (the stock ``Command`` keeps only the responses it
    expects; this widening is taken to its end).
    """

    def __init__(
        self,
        name: bytes,
        pieces: Sequence[bytes | Literal] = (),
        *,
        log_args: str | None = None,
        continuation: Callable[[bytes], None] | None = None,
        literal_plus: bool = False,
    ) -> None:
        super().__init__(name, None, (), self._continue)  # type: ignore[no-untyped-call]
        self.name = name
        self.pieces = list(pieces)
        self.log_args = log_args
        self.user_continuation = continuation
        self.literal_plus = literal_plus
        self.lines: list[RawResponse] = []
        self.writes: list[bytes] = []
        self.protocol: IMAPClientProtocol | None = None
        self.timer: IDelayedCall | None = None
        self.deferred: Deferred[Response] | None = None
        self.size = 0

    def _continue(self, rest: bytes) -> None:
        if self.writes and self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.write(self.writes.pop(0))
            return
        if self.user_continuation is not None:
            self.user_continuation(rest)
            return
        raise IMAPError("unexpected continuation request from the mail server")


def abort_transport(transport: Any) -> None:
    """Close at once, without waiting to flush (abortConnection when there is one)."""
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


def capabilities_from(values: Sequence[Value]) -> frozenset[str]:
    """Upper-case capability names from a CAPABILITY response or code."""
    names = []
    for value in values:
        if isinstance(value, bytes):
            names.append(value.decode("latin-1").upper())
        elif isinstance(value, int):
            names.append(str(value))
    return frozenset(names)


class IMAPClientProtocol(imap4.IMAP4Client):
    """
    A bounded, deadline-driven IMAP client connection.

    :param clock: the reactor's `IReactorTime` (injected; tests pass a Clock).
    :param timeout: seconds for the greeting and for each command.
    :param max_line: longest response line outside literals.
    :param max_literal: largest single literal accepted.
    :param max_response: most bytes one command's response may total.
    :param label: a non-secret connection label for the logs (pool key prefix).
    """

    #: Set by the session once credentials have been sent and accepted.
    logged_in = False

    def __init__(
        self,
        clock: IReactorTime,
        *,
        timeout: float = 30.0,
        max_line: int = DEFAULT_MAX_LINE,
        max_literal: int = DEFAULT_MAX_LITERAL,
        max_response: int | None = None,
        label: str = "",
        observer: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(contextFactory=None)  # type: ignore[no-untyped-call]
        self.clock = clock
        self.command_timeout = timeout
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_response = max_response or (2 * max_literal + max_line)
        self.label = label
        self.observer = observer
        self.untagged_hook: Callable[[RawResponse], None] | None = None
        self.greeting: Deferred[frozenset[str] | None] = Deferred()
        self.greeted = False
        self.closed = False
        self.error: IMAPError | None = None
        self.bye: bytes | None = None
        self.lost_callbacks: list[Callable[[IMAPClientProtocol], None]] = []
        self._greeting_timer: IDelayedCall | None = None
        self._commands: dict[bytes, RawCommand] = {}
        self._queue: list[RawCommand] = []
        self._waiting: bytes | None = None
        #: Tags written behind C{_waiting} without waiting for it, oldest first.
        self._pipelined: list[bytes] = []
        self._buffer = b""
        self._segments: list[bytes] = []
        self._literal_remaining = 0
        self._literal_chunks: list[bytes] = []
        self._assembled = 0

    # -- connection events ----------------------------------------------------

    def connectionMade(self) -> None:
        self._greeting_timer = self.clock.callLater(
            self.command_timeout, self._timed_out, "greeting"
        )

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if not self.closed:
            self.closed = True
            self._fail_all(self.error or self._error_from(reason))
        callbacks, self.lost_callbacks = self.lost_callbacks, []
        for callback in callbacks:
            callback(self)

    def _error_from(self, reason: Failure) -> IMAPError:
        value = reason.value
        text = str(value)
        module = type(value).__module__ or ""
        if module.startswith("OpenSSL") or "VerificationError" in type(value).__name__:
            detail = (
                "certificate verify failed"
                if "verify" in text.lower() or "Verification" in type(value).__name__
                else "handshake failed"
            )
            if self.logged_in:
                return IMAPError(
                    f"TLS error on the mail server connection ({detail})", transient=True
                )
            return IMAPError(
                f"TLS with the mail server failed ({detail}); no credentials were sent"
            )
        if self.bye is not None:
            return IMAPError(
                f"the mail server closed the connection: {server_text(self.bye)}", transient=True
            )
        if not self.greeted:
            return IMAPError(
                "the mail server closed the connection before greeting", transient=True
            )
        if self._literal_remaining:
            return IMAPError(
                "connection to the mail server lost while reading a message", transient=True
            )
        return IMAPError("connection to the mail server lost", transient=True)

    def fail(self, error: IMAPError) -> None:
        """Drop the connection: every pending command fails with C{error}."""
        if self.closed:
            return
        log.warn(
            "IMAP {label}: dropping connection: {error}", label=self.label, error=error.message
        )
        self.closed = True
        self.error = error
        self._fail_all(error)
        if self.transport is not None:
            abort_transport(self.transport)

    def _fail_all(self, error: IMAPError) -> None:
        if self._greeting_timer is not None and self._greeting_timer.active():
            self._greeting_timer.cancel()
        if not self.greeting.called:
            self.greeting.errback(Failure(error))
        commands = list(self._commands.values()) + self._queue
        self._commands = {}
        self._queue = []
        self._waiting = None
        self._pipelined = []
        for cmd in commands:
            if cmd.timer is not None and cmd.timer.active():
                cmd.timer.cancel()
            if cmd.deferred is not None:
                d, cmd.deferred = cmd.deferred, None
                d.errback(Failure(error))

    def _timed_out(self, what: str) -> None:
        self.fail(
            IMAPError(
                f"the mail server did not answer {what} within {self.command_timeout:g} s",
                transient=True,
            )
        )

    # -- receiving --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        end = len(buffer)
        while pos < end and not self.closed:
            if self._literal_remaining:
                take = min(self._literal_remaining, end - pos)
                self._literal_chunks.append(buffer[pos : pos + take])
                pos += take
                self._literal_remaining -= take
                if not self._literal_remaining:
                    self._segments.append(b"".join(self._literal_chunks))
                    self._literal_chunks = []
                continue
            newline = buffer.find(b"\n", pos)
            if newline == -1:
                if end - pos > self.max_line:
                    self._line_too_long()
                    return
                break
            line = buffer[
                pos : newline - 1 if newline > pos and buffer[newline - 1] == 13 else newline
            ]
            pos = newline + 1
            if len(line) > self.max_line:
                self._line_too_long()
                return
            self._line(line)
        self._buffer = buffer[pos:] if pos < end else b""

    def _line_too_long(self) -> None:
        self.fail(IMAPError(f"the mail server sent a line longer than {self.max_line} bytes"))

    def _line(self, line: bytes) -> None:
        if line.endswith(b"}"):
            match = _LITERAL_END.search(line)
            if match is not None:
                size = int(match.group(1))
                if size > self.max_literal:
                    self.fail(
                        IMAPError(
                            f"the mail server announced a {size}-byte literal, "
                            f"over the {self.max_literal}-byte limit"
                        )
                    )
                    return
                self._assembled += len(line) + size
                if self._assembled > self.max_response:
                    self.fail(
                        IMAPError(f"the mail server's response exceeded {self.max_response} bytes")
                    )
                    return
                self._segments.append(line[: match.start()])
                if size:
                    self._literal_remaining = size
                else:
                    self._segments.append(b"")
                return
        if self._segments:
            self._segments.append(line)
            response = tuple(self._segments)
            self._segments = []
            self._assembled = 0
        else:
            response = (line,)
        try:
            self._dispatch(response)
        except IMAPError as e:
            self.fail(e)
        except Exception as e:  # noqa: BLE001 - a bug must not wedge the connection
            log.failure("IMAP {label}: error handling a response", label=self.label)
            self.fail(IMAPError(f"internal error handling the mail server's response: {e}"))

    def _dispatch(self, response: RawResponse) -> None:
        head = response[0]
        tag, _, rest = head.partition(b" ")
        if not self.greeted:
            self._greet(tag, rest)
            return
        if tag == b"*":
            untagged = (rest, *response[1:])
            if rest[:4].upper() == b"BYE ":
                self.bye = rest[4:]
            if self.untagged_hook is not None:
                self.untagged_hook(untagged)
            cmd = self._current()
            if cmd is not None:
                cmd.lines.append(untagged)
                cmd.size += sum(len(s) for s in response)
                if cmd.size > self.max_response:
                    raise IMAPError(
                        f"the mail server's response exceeded {self.max_response} bytes"
                    )
            return
        if tag == b"+":
            cmd = self._current()
            if cmd is None:
                raise IMAPError("unexpected continuation request from the mail server")
            cmd.continuation(rest)
            return
        cmd = self._commands.pop(tag, None)
        if cmd is None:
            raise IMAPError("the mail server answered a command that was never sent")
        if tag == self._waiting:
            self._waiting = self._pipelined.pop(0) if self._pipelined else None
        else:
            self._pipelined.remove(tag)  # a pipelined command finished first
        status, _, text = rest.partition(b" ")
        self._finish(cmd, status.upper(), text)
        self._next()

    def _greet(self, tag: bytes, rest: bytes) -> None:
        if self._greeting_timer is not None and self._greeting_timer.active():
            self._greeting_timer.cancel()
        self.greeted = True
        status, _, text = rest.partition(b" ")
        status = status.upper()
        if tag != b"*":
            raise IMAPError("the mail server sent no IMAP greeting")
        if status == b"OK":
            code, _ = split_code(text)
            caps = None
            if code and code[0] == b"CAPABILITY":
                caps = capabilities_from(code[1:])
            self.greeting.callback(caps)
        elif status == b"PREAUTH":
            raise IMAPError(
                "the mail server greeted with PREAUTH (already logged in); refusing the "
                "connection as a possible man in the middle"
            )
        elif status == b"BYE":
            raise IMAPError(
                f"the mail server refused the connection: {server_text(text)}", transient=True
            )
        else:
            raise IMAPError("the mail server sent no IMAP greeting")

    def _current(self) -> RawCommand | None:
        if self._waiting is None:
            return None
        return self._commands.get(self._waiting)

    @property
    def busy(self) -> bool:
        """Whether a command is in flight or queued."""
        return self._waiting is not None or bool(self._queue)

    @property
    def in_flight(self) -> int:
        """Commands written and not answered yet (more than one when pipelined)."""
        return len(self._commands)

    def _finish(self, cmd: RawCommand, status: bytes, text: bytes) -> None:
        if cmd.timer is not None and cmd.timer.active():
            cmd.timer.cancel()
        d, cmd.deferred = cmd.deferred, None
        if d is None:
            return
        if status == b"OK":
            d.callback(Response(cmd.lines, text))
        elif status in (b"NO", b"BAD"):
            code, message = split_code(text)
            d.errback(Failure(CommandFailed(cmd.name.decode("ascii"), status, code, message)))
        else:
            d.errback(Failure(IMAPError("the mail server sent a malformed reply")))
            raise IMAPError("the mail server sent a malformed tagged reply")

    # -- sending ----------------------------------------------------------------

    def send(self, cmd: RawCommand, *, pipeline: bool = False) -> Deferred[Response]:
        """
        Run C{cmd}; fires with its `Response` or fails with `IMAPError`.
        With C{pipeline}, C{cmd} is written at once even while another
        command runs, when neither needs a continuation (no literal, no
        SASL exchange); otherwise it waits its turn as usual.
        """
        if self.closed:
            error = self.error or IMAPError("connection to the mail server lost", transient=True)
            failed: Deferred[Response] = Deferred()
            failed.errback(Failure(error))
            return failed
        d: Deferred[Response] = Deferred()
        cmd.deferred = d
        cmd.protocol = self
        cmd.timer = self.clock.callLater(
            self.command_timeout, self._timed_out, cmd.name.decode("ascii", "replace")
        )
        if self._waiting is None:
            self._start(cmd)
        elif pipeline and self._can_pipeline(cmd):
            self._start(cmd, pipelined=True)
        else:
            self._queue.append(cmd)
        return d

    def _can_pipeline(self, cmd: RawCommand) -> bool:
        """Whether C{cmd} may follow the commands in flight without waiting."""
        if self._queue or cmd.user_continuation is not None:
            return False
        if any(isinstance(piece, Literal) for piece in cmd.pieces):
            return False
        current = self._current()
        return current is not None and not current.writes and current.user_continuation is None

    def _next(self) -> None:
        if self._queue and self._waiting is None and not self.closed:
            self._start(self._queue.pop(0))

    def _start(self, cmd: RawCommand, *, pipelined: bool = False) -> None:
        tag = self.makeTag()
        self._commands[tag] = cmd
        if pipelined:
            self._pipelined.append(tag)
        else:
            self._waiting = tag
        writes = layout(tag, cmd.name, cmd.pieces, cmd.literal_plus)
        cmd.writes = writes[1:]
        if self.observer is not None or debug_enabled():
            arguments = cmd.log_args if cmd.log_args is not None else describe(cmd.pieces)
            command = cmd.name.decode("ascii", "replace")
            if debug_enabled():
                log.debug(
                    "IMAP {label} C: {tag} {imap_command} {imap_arguments}",
                    label=self.label,
                    tag=tag.decode("ascii"),
                    imap_command=command,
                    imap_arguments=arguments,
                )
            if self.observer is not None:
                self.observer(command, arguments)
        assert self.transport is not None
        self.transport.write(writes[0])
