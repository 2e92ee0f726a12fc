"""The IMAP protocol on a StringTransport: feed server lines, read client commands, run coroutines."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mailmcp.mail.imap import IMAPClientProtocol, Session

CAPS = b"IMAP4rev1 LITERAL+ UIDPLUS MOVE ESEARCH AUTH=PLAIN"


class Wire:
    """One client connection and the scripted server side of it."""

    def __init__(self, transport: StringTransport | None = None, **kwargs: Any) -> None:
        self.clock = Clock()
        kwargs.setdefault("timeout", 30.0)
        self.events: list[tuple[str, str]] = []
        self.protocol = IMAPClientProtocol(
            self.clock, observer=lambda c, a: self.events.append((c, a)), **kwargs
        )
        self.transport = transport or StringTransport()
        self.protocol.makeConnection(self.transport)
        self.session = Session(self.protocol)

    def server(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def sent(self) -> bytes:
        """What the client wrote since the last call."""
        value = self.transport.value()
        self.transport.clear()
        return value

    def tag(self) -> bytes:
        return b"%04X" % (self.protocol.tagID - 1)

    def ok(self, text: bytes = b"done") -> None:
        self.server(self.tag() + b" OK " + text + b"\r\n")


def run(coroutine: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)


def result_of(d: Deferred[Any]) -> Any:
    """The result of a fired Deferred; re-raises its failure."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def account(
    security: str = "tls", host: str = "imap.example.test", password: str = "secret"
) -> Any:
    return SimpleNamespace(
        imap=SimpleNamespace(host=host, port=993, security=security),
        imap_username="alice@example.test",
        imap_password=password,
    )


def logged_in(caps: bytes = CAPS, **kwargs: Any) -> Wire:
    """A Wire whose session completed greeting and LOGIN."""
    wire = Wire(**kwargs)
    d = run(wire.session.open(account(), None))
    wire.server(b"* OK [CAPABILITY " + caps + b"] ready\r\n")
    assert wire.sent().startswith(b"0001 LOGIN ")
    wire.server(b"0001 OK [CAPABILITY " + caps + b"] Logged in\r\n")
    result_of(d)
    return wire


def opened(caps: bytes = CAPS, exists: int = 3, **kwargs: Any) -> Wire:
    """A logged-in Wire with INBOX selected read-write."""
    wire = logged_in(caps, **kwargs)
    d = run(wire.session.select("INBOX"))
    assert wire.sent().endswith(b' SELECT "INBOX"\r\n')
    wire.server(
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
        b"* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Flags permitted.\r\n"
        b"* %d EXISTS\r\n* 0 RECENT\r\n"
        b"* OK [UIDVALIDITY 1700000000] UIDs valid\r\n* OK [UIDNEXT 42] Predicted next UID\r\n"
        % exists
    )
    wire.ok(b"[READ-WRITE] Select completed.")
    state = result_of(d)
    assert state.exists == exists and not state.read_only
    wire.sent()
    return wire
