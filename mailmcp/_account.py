"""
The mailbox account a request acts for, as recovered from its access token.
"""

from __future__ import annotations

import hashlib

import attrs

from ._clients import MailServer
from ._scopes import FULL


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

    def __repr__(self) -> str:
        return (
            f"<MailAccount owner={self.owner!r} email={self.email!r} "
            f"imap={self.imap.host}:{self.imap.port} smtp={self.smtp.host}:{self.smtp.port}>"
        )

    @property
    def imap_pool_key(self) -> str:
        """
        The key of this account's IMAP connection pool: a hash of host, port,
        security, user and password, so a changed password never reuses a
        connection logged in with the old one, and no secret sits in a dict key.
        """
        material = "\0".join(
            [
                self.imap.host,
                str(self.imap.port),
                self.imap.security,
                self.imap_username,
                self.imap_password,
            ]
        )
        return hashlib.sha256(material.encode("utf-8")).hexdigest()
