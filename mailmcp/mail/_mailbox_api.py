"""
The contract between the IMAP layer (``mailmcp.mail.imap``) and the tools that
use it.  Tools depend only on these types; the pooled, hardened client
implements them.

Everything here speaks UIDs.  Mailbox names are Python ``str`` (decoded from
modified UTF-7 by the IMAP layer); message content is ``bytes``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs

if TYPE_CHECKING:
    from .._account import MailAccount

T = TypeVar("T")


class IMAPError(Exception):
    """
    An IMAP operation failed.  ``message`` is safe to show to the user (it
    never contains credentials); ``transient`` is True for failures worth one
    retry on a fresh connection (connection lost, timeout).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


class IMAPAuthError(IMAPError):
    """LOGIN/AUTHENTICATE was refused: the stored credentials no longer work."""


class IMAPLoginRefused(IMAPAuthError):
    """The server answered the login with NO: wrong credentials (not a missing method)."""


class IMAPTokenRejected(IMAPLoginRefused):
    """
    AUTHENTICATE XOAUTH2/OAUTHBEARER was refused: the provider access token
    may have expired early, so one refresh and one more login are worth it.
    """


class IMAPGrantEnded(IMAPAuthError):
    """
    The mail provider ended mailmcp's access (consent revoked): the grant
    is revoked, and ``message`` asks the user to sign in again.
    """


class IMAPNoSuchMailbox(IMAPError):
    """The named mailbox does not exist (or cannot be selected)."""


@attrs.frozen
class Literal:
    """
    A string argument that must go on the wire as an IMAP literal (non-ASCII
    search text).  The IMAP layer sends ``{n+}`` with LITERAL+, else waits
    for the continuation.
    """

    data: bytes


@attrs.frozen
class MailboxInfo:
    name: str  # decoded
    delimiter: str | None
    flags: tuple[str, ...]  # e.g. ("\\HasNoChildren", "\\Sent")

    @property
    def special_use(self) -> str | None:
        for flag in self.flags:
            if flag.lower() in (
                "\\sent",
                "\\drafts",
                "\\trash",
                "\\junk",
                "\\archive",
                "\\all",
                "\\flagged",
            ):
                return flag
        return None

    @property
    def selectable(self) -> bool:
        return not any(
            f.lower() == "\\noselect" or f.lower() == "\\nonexistent" for f in self.flags
        )


@attrs.frozen
class MailboxState:
    """What SELECT/EXAMINE told us, kept fresh by NOOP/untagged EXISTS."""

    name: str
    exists: int
    uidvalidity: int
    uidnext: int | None
    read_only: bool
    flags: tuple[str, ...] = ()
    permanent_flags: tuple[str, ...] = ()
    highest_modseq: int | None = None


@attrs.frozen
class Appended:
    """
    Where APPEND stored a message, from the server's APPENDUID (RFC 4315);
    None where the server did not say.
    """

    uidvalidity: int | None
    uid: int | None


@attrs.frozen
class Address:
    name: str | None  # decoded (RFC 2047) display name
    email: str  # mailbox@host, or "" for group syntax


@attrs.frozen
class Envelope:
    date: str | None
    subject: str | None  # decoded
    from_: tuple[Address, ...]
    sender: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    in_reply_to: str | None
    message_id: str | None


@attrs.frozen
class FetchedMessage:
    """
    One message's FETCH response.  Fields not asked for are None.
    ``sections`` maps a section spec as asked (e.g. ``"1.2"``, ``"HEADER"``,
    ``"2.MIME"``, ``""`` for the whole message) to its bytes; a partial fetch
    ``<offset.length>`` is keyed by the bare section.
    ``bodystructure`` is the parsed nested-list form: bytes atoms decoded to
    str (latin-1 for raw, numbers as int), NIL as None.
    """

    uid: int
    seq: int
    flags: tuple[str, ...] | None = None
    size: int | None = None
    internal_date: str | None = None
    envelope: Envelope | None = None
    bodystructure: Any = None
    sections: dict[str, bytes] = attrs.field(factory=dict)
    modseq: int | None = None


class IMAPSession(Protocol):
    """
    One logged-in IMAP connection, leased from the pool for one operation.
    Only one command is in flight at a time.  Every method raises
    `IMAPError` (or a subclass) on failure.
    """

    @property
    def capabilities(self) -> frozenset[str]:
        """Upper-case capability names after login (e.g. "MOVE", "UIDPLUS")."""

    @property
    def selected(self) -> MailboxState | None:
        """The open mailbox, if any."""

    async def list_mailboxes(self) -> list[MailboxInfo]: ...

    async def status(self, mailbox: str, items: Sequence[str]) -> dict[str, int]: ...

    async def examine(self, mailbox: str) -> MailboxState:
        """
        Open C{mailbox} read-only.  Costs one NOOP when it is already open
        (read-only or read-write) on this connection.
        """

    async def select(self, mailbox: str) -> MailboxState:
        """Open C{mailbox} read-write (a no-op + NOOP when already so)."""

    async def fetch(
        self, message_set: str, items: str, *, uid: bool = True
    ) -> list[FetchedMessage]:
        """
        ``FETCH`` (``UID FETCH`` when C{uid}) on the open mailbox.
        C{message_set} is a validated set like ``"5"``, ``"1:20"``, ``"3,7,9"``;
        C{items} e.g. ``"(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)"`` or
        ``"(UID BODY.PEEK[1.2]<0.65536>)"``.  Always PEEK; never sets \\Seen.
        Results are in the order the server sent them.
        """

    async def uid_search(self, criteria: Sequence[bytes | Literal]) -> list[int]:
        """
        ``UID SEARCH`` with already compiled criteria tokens (atoms as bytes,
        literals as `Literal`); ``CHARSET UTF-8`` is added when any literal is
        present.  Uses ESEARCH when available.  Returns UIDs ascending.
        """

    async def uid_store(
        self, uids: Sequence[int], mode: str, flags: Sequence[str], *, silent: bool = True
    ) -> dict[int, tuple[str, ...]]:
        """C{mode} is "+FLAGS", "-FLAGS" or "FLAGS"; returns new flags by UID when not silent."""

    async def uid_copy(self, uids: Sequence[int], mailbox: str) -> dict[int, int]:
        """Returns old UID -> new UID (COPYUID) when the server says; else {}."""

    async def uid_move(self, uids: Sequence[int], mailbox: str) -> dict[int, int]:
        """UID MOVE (or COPY + flag + UID EXPUNGE); returns COPYUID mapping."""

    async def uid_expunge(self, uids: Sequence[int]) -> None:
        """
        UID EXPUNGE of exactly these UIDs; refuses without UIDPLUS.  As RFC
        4315 says, only those already flagged ``\\Deleted`` are removed.
        """

    async def append(
        self, mailbox: str, message: bytes, flags: Sequence[str] = (), date: str | None = None
    ) -> Appended:
        """APPEND; where the message went, from APPENDUID when the server gives it."""

    async def noop(self) -> None: ...


class IMAPPoolAPI(Protocol):
    async def run(
        self,
        account: MailAccount,
        operation: Callable[[IMAPSession], Awaitable[T]],
        *,
        read_only: bool,
    ) -> T:
        """
        Lease a logged-in connection for C{account} (a `MailAccount`), run
        C{operation} on it and give it back.  A connection that broke is
        discarded; when C{read_only} the operation is retried once on a fresh
        connection after a transient failure.
        """
        ...
