"""A scripted IMAP server on a memory transport, and an endpoint that connects the pool to it."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer


class ScriptedServer:
    """Answers LOGIN/NOOP/SELECT/EXAMINE/LOGOUT; counts connections and commands."""

    def __init__(self) -> None:
        self.transports: list[ServerTransport] = []
        self.commands: list[bytes] = []
        self.stall = False
        self.connect_hangs = False
        self.connect_attempts = 0
        self.peak = 0

    @property
    def open(self) -> int:
        return sum(1 for t in self.transports if not t.closed)

    def answer(self, transport: ServerTransport, line: bytes) -> bytes:
        tag, _, rest = line.partition(b" ")
        command = rest.split(b" ", 1)[0].upper()
        self.commands.append(command)
        if command == b"LOGIN":
            if b'"bad"' in rest:
                return tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
            return tag + b" OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE] Logged in\r\n"
        if command == b"NOOP" and self.stall:
            return b""
        if command in (b"SELECT", b"EXAMINE"):
            return b"* 3 EXISTS\r\n* OK [UIDVALIDITY 9] ok\r\n" + tag + b" OK done\r\n"
        if command == b"LOGOUT":
            transport.logging_out = True
            return b"* BYE bye\r\n" + tag + b" OK done\r\n"
        return tag + b" OK done\r\n"


class ServerTransport(StringTransport):
    """The client's transport: every line it writes is answered at once."""

    def __init__(self, server: ScriptedServer) -> None:
        super().__init__()
        self.server = server
        self.protocol: Any = None
        self.closed = False
        self.logging_out = False
        self._pending = b""

    def write(self, data: bytes) -> None:
        super().write(data)
        self._pending += data
        while b"\r\n" in self._pending and not self.closed:
            line, self._pending = self._pending.split(b"\r\n", 1)
            reply = self.server.answer(self, line)
            if reply:
                self.protocol.dataReceived(reply)
            if self.logging_out:
                self.loseConnection()

    def loseConnection(self) -> None:
        super().loseConnection()
        self._close()

    def abortConnection(self) -> None:
        super().abortConnection()
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            from twisted.internet.error import ConnectionDone

            self.protocol.connectionLost(Failure(ConnectionDone()))


@implementer(IStreamClientEndpoint)
class ScriptedEndpoint:
    def __init__(self, server: ScriptedServer) -> None:
        self.server = server

    def connect(self, factory: Any) -> Deferred[Any]:
        self.server.connect_attempts += 1
        if self.server.connect_hangs:
            return Deferred()
        protocol = factory.buildProtocol(None)
        transport = ServerTransport(self.server)
        transport.protocol = protocol
        self.server.transports.append(transport)
        self.server.peak = max(self.server.peak, self.server.open)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
        return succeed(protocol)
