"""
`FakeLoginChecker`: an `ILoginChecker` that checks mail credentials against
a dict instead of a live IMAP or SMTP server.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from ..interfaces import ILoginChecker
from ..mail._mailcheck import LoginRejected, MailServerUnavailable
from ..oauth._clients import MailServer


@implementer(ILoginChecker)
class FakeLoginChecker:
    """
    A test `ILoginChecker`: accepts exactly the C{accounts} given as
    ``{username: password}``, records every call (without the password) in
    C{calls}, and can be told the server is down or to never answer.
    """

    def __init__(self, protocol: str, accounts: dict[str, str], down: bool = False) -> None:
        self.protocol = protocol
        self.accounts = dict(accounts)
        self.down = down
        self.stall = False
        self.calls: list[tuple[str, int, str]] = []
        self.pending: list[Deferred[None]] = []

    def check(
        self, server: MailServer, username: str, password: str, mechanism: str = "password"
    ) -> Deferred[None]:
        """C{password} is the access token when C{mechanism} is a token one."""
        self.calls.append((server.host, server.port, username))
        if self.stall:
            d: Deferred[None] = Deferred()
            self.pending.append(d)
            return d
        if self.down:
            return defer.fail(MailServerUnavailable(self.protocol))
        if self.accounts.get(username) != password:
            return defer.fail(LoginRejected(self.protocol))
        return defer.succeed(None)
