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


class IAttachmentStore(Interface):
    """
    Content-addressed, per-owner blob storage for attachments, with signed,
    expiring, owner-bound download links (`mailmcp._attachments`).
    """

    limits = Attribute("the size caps (`mailmcp._attachments.Limits`)")
    link_lifetime = Attribute("default and longest link lifetime, in seconds")

    def put(owner: str, data: bytes, content_type: str) -> Any:
        """
        Store C{data} for C{owner}, off the reactor thread.  Idempotent:
        storing the same bytes again writes nothing.

        :return: an awaitable firing with a `StoredObject`.
        """

    def link(owner: str, obj: Any, filename: str, content_type: str, lifetime: float | None = None) -> str:
        """
        A download URL for C{obj}, valid for C{lifetime} seconds (capped by
        configuration), served as an attachment named C{filename}.  Computed
        locally, with no network request.
        """

    def check(owner: str, url: str) -> Any:
        """
        Pure check (no I/O) that C{url} is a live link this server issued to
        C{owner}.

        :raises AttachmentRefused: otherwise.
        """

    def resolve(owner: str, url: str) -> Any:
        """
        The stored content behind C{url}, which must be a live link this
        server issued to C{owner}.  The URL itself is never fetched.

        :return: an awaitable firing with a `ResolvedAttachment`.
        :raises AttachmentRefused: for any other URL, before any I/O.
        """
