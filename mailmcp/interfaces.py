"""
The replaceable parts of mailmcp, as zope interfaces.  Each has a real
implementation in a private module and a test implementation in
`mailmcp.testing`.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class IAccessTokenVerifier(Interface):
    """Turns a Bearer token into the mail account it grants access to."""

    def verify(token: str) -> Any:
        """
        :return: a Deferred (or awaitable) firing with a
            `mailmcp._account.MailAccount`.
        :raises mailmcp._tokens.InvalidToken: (as a failure) for any token
            that is not a live access token for this server.
        """


class IClock(Interface):
    """Where "now" comes from: `twisted.internet.interfaces.IReactorTime`."""

    def seconds() -> float:
        """Seconds since the epoch."""


class IToolServices(Interface):
    """
    What tool handlers may use besides the account: the IMAP pool, the SMTP
    sender, the attachment store and the clock.
    """

    reactor = Attribute("the reactor (IReactorTime and friends)")
    config = Attribute("the daemon's Config")
