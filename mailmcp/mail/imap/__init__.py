"""
The pooled, hardened IMAP layer behind the mailbox tools.

`IMAPPool` implements `mailmcp.mail._mailbox_api.IMAPPoolAPI`; the sessions it
lends implement `IMAPSession`.  See ``_client`` (the protocol), ``_parser``
(the fast response parser), ``_wire`` (argument encoding), ``_session``
and ``_pool``.
"""

from ._client import CommandFailed, IMAPClientProtocol
from ._pool import IMAPPool
from ._session import Session

__all__ = ["CommandFailed", "IMAPClientProtocol", "IMAPPool", "Session"]
