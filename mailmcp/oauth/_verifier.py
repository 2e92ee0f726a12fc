"""
The resource server's side of the grants: a Bearer token in, the mail
account it grants out.  The MCP part calls this once per request.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from .._account import MailAccount
from ..interfaces import IAccessTokenVerifier
from ._grants import GrantService


@implementer(IAccessTokenVerifier)
class GrantTokenVerifier:
    """
    Verifies sealed access tokens: right kind, not expired, audience is this
    server's MCP URL, grant still alive, grant key opens the stored
    credentials.  Every failure is `mailmcp.oauth._tokens.InvalidToken`.
    """

    def __init__(self, grants: GrantService) -> None:
        self._grants = grants

    def verify(self, token: str) -> Deferred[MailAccount]:
        return Deferred.fromCoroutine(self._grants.account_for(token))
