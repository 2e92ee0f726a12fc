"""
Tools as small declarative units.

A `Tool` is a name, a title, a description, a pydantic input model (its JSON
schema is the tool's ``inputSchema``), an output model (``outputSchema``),
honest annotations, and one ``async`` handler taking a `ToolContext` and the
validated input.  It also names the OAuth scope(s) a token needs to see and
call it (`mailmcp._scopes`); a tool whose need depends on its arguments
(reply and forward: draft or send) adds C{scopes_for}, asked after the
arguments are validated.  A handler reports a failure the user can act on by raising
`ToolError`; the MCP layer turns it into an ``isError`` result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

import attrs
from pydantic import BaseModel

from ._account import MailAccount
from ._scopes import FULL
from .mail._mailbox_api import (
    IMAPAuthError,
    IMAPError,
    IMAPGrantEnded,
    IMAPNoSuchMailbox,
    IMAPPoolAPI,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.python.threadpool import ThreadPool

    from ._audit import Audit
    from .attachments._common import Limits
    from .attachments._helpers import StoredPartIndex
    from .interfaces import IAttachmentStore, ISendBudget
    from .mail._sendintent import SendIntents
    from .mail._smtp import SendResult

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class ToolError(Exception):
    """
    A tool failed in a way the caller can understand and act on.  The message
    is shown to the model verbatim, so it must never contain secrets.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def imap_tool_error(error: IMAPError, folder: str | None = None) -> ToolError:
    """
    The one translation of an IMAP failure into a message the model can act
    on: a missing folder points at ``list_mailboxes``, a refused stored login
    at reconnecting, anything else quotes the server's (secret-free) reason.
    """
    if isinstance(error, IMAPNoSuchMailbox) or (
        folder is not None and _looks_missing(error.message)
    ):
        named = (
            f"There is no folder {folder!r}" if folder is not None else "A folder does not exist"
        )
        return ToolError(
            f"{named} (or it cannot be opened). Call list_mailboxes to see the exact folder "
            "names; they are case-sensitive and use the server's separator."
        )
    if isinstance(error, IMAPGrantEnded):
        return ToolError(error.message)
    if isinstance(error, IMAPAuthError):
        return ToolError(
            f"The mail server refused the stored login ({error.message}). Reconnect the mail account."
        )
    return ToolError(f"The mail server reported an error: {error.message}")


def _looks_missing(message: str) -> bool:
    lowered = message.lower()
    return "nonexistent" in lowered or "doesn't exist" in lowered or "does not exist" in lowered


@attrs.frozen
class ToolContext:
    """Everything a tool handler gets besides its input."""

    account: MailAccount
    services: ToolServices


@attrs.frozen
class Tool(Generic[In, Out]):
    name: str
    title: str
    description: str
    input_model: type[In]
    output_model: type[Out]
    #: Gives an C{output_model} instance, or (on hot paths) plain JSON-ready
    #: data in its shape, serialised as is (tests check it fits ``outputSchema``).
    handler: Callable[[ToolContext, In], Awaitable[Out | dict[str, Any]]]
    read_only: bool
    destructive: bool
    idempotent: bool
    open_world: bool = False
    #: The scopes a token needs to list and call this tool (all of them).
    #: Empty means the tool was declared without one: only a full grant
    #: (all five scopes) may use it.  With C{scopes_for}: each scope here is
    #: one mode of the tool, and a token with any of them sees it listed.
    scopes: frozenset[str] = frozenset()
    #: For a tool whose need depends on its arguments: the scopes this call
    #: needs, given its validated input (instead of C{scopes}).
    scopes_for: Callable[[In], frozenset[str]] | None = None

    @property
    def declared_scopes(self) -> frozenset[str]:
        """C{scopes}, or all five for a tool declared without any."""
        return self.scopes or FULL

    def visible_to(self, granted: frozenset[str]) -> bool:
        """Whether ``tools/list`` shows this tool to a token with C{granted}."""
        if self.scopes_for is not None and self.scopes:
            return bool(self.scopes & granted)
        return self.declared_scopes <= granted

    def needs(self, arguments: In) -> frozenset[str]:
        """The scopes this call, with these validated C{arguments}, needs."""
        if self.scopes_for is not None:
            return self.scopes_for(arguments)
        return self.declared_scopes

    def annotations(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "readOnlyHint": self.read_only,
            "destructiveHint": self.destructive,
            "idempotentHint": self.idempotent,
            "openWorldHint": self.open_world,
        }


class MailSender(Protocol):
    """
    What the writing tools need of the SMTP side (`mailmcp.mail._smtp.SMTPSender`
    in the daemon, a recording fake in tests).
    """

    def claim(self, message_id: str) -> Callable[[], None] | Literal[False]:
        """
        Claim a keyed send in this process: a release callable, or False
        when a send of C{message_id} is already in progress.
        """
        ...

    async def send(
        self, account: MailAccount, envelope_from: str, recipients: Sequence[str], message: bytes
    ) -> SendResult:
        """Send C{message} once (never again after ``DATA``)."""
        ...


@attrs.frozen
class ToolServices:
    """
    The shared, long-lived parts tool handlers use, built complete in one
    place (``mailmcp._service.build_routes`` in the daemon,
    `mailmcp.testing.tool_services` in tests), so a handler never has to
    guess at a missing part or repeat a default.

    A part that an operator can leave out is C{None} on purpose and the
    handlers say so: no SMTP sender (drafts only), no attachment store, no
    send budget (no limit), no intent store (the sender's in-process claim
    instead), no audit trail, no part index (nothing cached).
    """

    #: The clock: link expiry, message dates, retry hints.
    reactor: IReactorTime
    #: Logged-in IMAP connections per account (`mailmcp.mail.imap._pool.IMAPPool`).
    imap: IMAPPoolAPI
    #: Outgoing mail; None: sending is off (drafts still work).
    smtp: MailSender | None
    #: Attachment blobs and their signed links; None: attachments are off.
    attachments: IAttachmentStore | None
    #: Size and count caps for attachments going into a message (the
    #: store's own caps when there is a store).
    limits: Limits
    #: Recently stored message parts, so re-reading mints links without
    #: fetching again; None: nothing is cached.
    attachment_index: StoredPartIndex | None = None
    #: The per-account recipient budget (SM-12); None: no limit.
    send_limiter: ISendBudget | None = None
    #: The store-backed claim of a keyed send (SM-13); None: the SMTP
    #: sender's in-process claim.
    send_intents: SendIntents | None = None
    #: The audit trail; None: none is written.
    audit: Audit | None = None
    #: ``--send-allow-domains`` (SM-15): empty means no restriction.
    send_allow_domains: tuple[str, ...] = ()
    #: ``--trusted-authserv-id``: whose Authentication-Results to believe.
    trusted_authserv_id: str | None = None
    #: Where big HTML is converted to text; None: the reactor's own pool.
    cpu_pool: ThreadPool | None = None
