"""
The mailbox account a request acts for, as recovered from its access token.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable

import attrs

from ._scopes import FULL
from .oauth._clients import MailServer
from .provider._client import ProviderTokens


@attrs.frozen(repr=False)
class MailAccount:
    """
    One user's mail account: servers, usernames and passwords.

    ``owner`` is the stable id of the grant (login) that the request belongs
    to; attachments and other per-user objects are bound to it.  ``scopes``
    is what the request's token allows.  The repr
    never shows the passwords.
    """

    owner: str
    email: str
    full_name: str
    imap: MailServer
    imap_username: str
    imap_password: str = attrs.field(repr=False)
    smtp: MailServer
    smtp_username: str
    smtp_password: str = attrs.field(repr=False)
    #: The client's reference (a hash of its id) for the audit trail.
    client_ref: str = ""
    #: What the access token allows (`mailmcp._scopes`); all five unless
    #: the user or a cap narrowed the grant.
    scopes: frozenset[str] = FULL
    #: ``password``, or the SASL mechanism (``xoauth2``/``oauthbearer``)
    #: that logs in with C{oauth}'s access token (provider sign-in).
    imap_auth: str = "password"
    #: The provider profile that issued C{oauth} ("" the daemon's default).
    provider: str = ""
    oauth: ProviderTokens | None = attrs.field(default=None, repr=False)
    #: Fetches a fresh access token after a mail server refused this
    #: one, and answers the account with it (`GrantService` sets it for
    #: token accounts; the IMAP pool and the SMTP sender call it once).
    renew: Callable[[], Awaitable[MailAccount]] | None = attrs.field(
        default=None, repr=False, eq=False
    )
    #: Not "": the provider ended this grant (now revoked); the message
    #: tells the user to sign in again, and every tool call answers it.
    ended: str = ""

    @property
    def uses_token(self) -> bool:
        """Whether IMAP and SMTP log in with a provider access token."""
        return self.imap_auth != "password" and self.oauth is not None

    def __repr__(self) -> str:
        return (
            f"<MailAccount owner={self.owner!r} email={self.email!r} "
            f"imap={self.imap.host}:{self.imap.port} smtp={self.smtp.host}:{self.smtp.port}>"
        )

    @functools.cached_property
    def imap_pool_key(self) -> str:
        """
        The key of this account's IMAP connection pool: a hash of host, port,
        security, user and password, so a changed password never reuses a
        connection logged in with the old one, and no secret sits in a dict key.
        """
        # A token account is keyed by its grant, not by the access token:
        # a refresh must not orphan the connections (they are re-logged-in
        # when their token ages out, see `IMAPPool`).
        secret = f"token\0{self.owner}" if self.uses_token else self.imap_password
        material = "\0".join(
            [self.imap.host, str(self.imap.port), self.imap.security, self.imap_username, secret]
        )
        return hashlib.sha256(material.encode("utf-8")).hexdigest()
