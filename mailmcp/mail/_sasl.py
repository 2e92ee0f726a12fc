"""
SASL client mechanisms that log in with an OAuth access token:
XOAUTH2 (Google's and Microsoft's) and OAUTHBEARER (RFC 7628).

Both send the token in the initial response.  When the server refuses it,
it does not answer NO/535 at once: it sends a challenge holding a base64
JSON error (``{"status":"401",...}``) and waits for the client to end the
exchange -- an empty response for XOAUTH2, ``%x01`` for OAUTHBEARER
(RFC 7628 §3.2.3) -- and only then fails the command.  `TokenSASL`
answers that dance; `SMTPTokenAuthenticator` plugs it into Twisted's ESMTP
client.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from twisted.mail.smtp import IClientAuthentication
from zope.interface import implementer

from ..provider._client import TOKEN_MECHANISMS

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SASLInputError(ValueError):
    """A username or token that cannot be put into a SASL message safely."""


def _saslname(user: str) -> str:
    """RFC 5801 ``saslname``: ``,`` and ``=`` escaped."""
    return user.replace("=", "=3D").replace(",", "=2C")


@attrs.frozen(repr=False)
class TokenSASL:
    """
    One token login: C{mechanism} is ``xoauth2`` or ``oauthbearer``.  The
    repr shows no token.
    """

    mechanism: str
    user: str
    token: str
    host: str | None = None
    port: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.mechanism not in TOKEN_MECHANISMS:
            raise SASLInputError(f"unknown SASL mechanism {self.mechanism!r}")
        if not self.token or _CONTROL.search(self.user) or _CONTROL.search(self.token):
            raise SASLInputError("the username or token contains control characters")

    def __repr__(self) -> str:
        return f"<TokenSASL {self.name.decode()} {self.user!r} token=***>"

    @property
    def name(self) -> bytes:
        """The mechanism's name on the wire."""
        return self.mechanism.upper().encode("ascii")

    def initial_response(self) -> bytes:
        """The client's first (and, on success, only) message, unencoded."""
        if self.mechanism == "xoauth2":
            text = f"user={self.user}\x01auth=Bearer {self.token}\x01\x01"
        else:
            extra = ""
            if self.host is not None:
                extra += f"host={self.host}\x01"
            if self.port is not None:
                extra += f"port={int(self.port)}\x01"
            text = f"n,a={_saslname(self.user)},\x01{extra}auth=Bearer {self.token}\x01\x01"
        return text.encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        """
        The answer to a server challenge (decoded): the initial response to
        an empty one (a server that does not take it with the command),
        else -- an error report -- the message that ends the exchange.
        """
        if not challenge:
            return self.initial_response()
        return b"" if self.mechanism == "xoauth2" else b"\x01"


@implementer(IClientAuthentication)
class SMTPTokenAuthenticator:
    """
    A Twisted ESMTP client authenticator for `TokenSASL`.  Twisted hands it
    each decoded 334 challenge and the client's "secret" (ignored: the
    token lives in the `TokenSASL`); the first challenge after ``AUTH
    XOAUTH2`` is empty, so the token goes there, and an error challenge
    gets the closing empty/``%x01`` response, after which the server's 535
    fails the login.
    """

    def __init__(self, sasl: TokenSASL) -> None:
        self._sasl = sasl

    def __repr__(self) -> str:
        return f"<SMTPTokenAuthenticator {self._sasl!r}>"

    def getName(self) -> bytes:
        return self._sasl.name

    def challengeResponse(self, secret: Any, chal: Any) -> bytes:
        return self._sasl.respond(chal if isinstance(chal, bytes) else b"")
