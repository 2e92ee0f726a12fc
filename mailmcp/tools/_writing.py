"""
The writing tools: send, draft, delete, move and flag messages.

Each one changes the user's mailbox or sends mail on their behalf, so each
one is careful about exactly what it touches:

- ``send_mail_message`` sends at most once.  The Message-ID is fixed before
  sending; with an ``idempotency_key`` it is derived from the key and looked
  for in Sent first, so a retried call does not send twice.  A send that
  definitely failed is kept in Drafts; an ambiguous one (connection lost
  after the whole message went out) is reported as unknown and never
  retried.  The exact bytes sent are filed in Sent (plus the ``Bcc`` header,
  so the user keeps a record of blind copies); a failed filing is a warning.
  Providers that file sent mail themselves (a client provisioned with
  ``--smtp-files-sent``) get no second copy.  Each account may send only
  ``--send-burst`` messages at once, then ``--sends-per-hour`` (SM-12).
- ``delete_mail_message`` moves to Trash by default; a permanent delete
  flags and ``UID EXPUNGE``\\ s that one UID only (UIDPLUS), never a bare
  ``EXPUNGE`` that would also purge other clients' ``\\Deleted`` messages.
- every tool that names a message checks the folder's UIDVALIDITY when the
  caller passes it, and that the UID exists, before changing anything.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from .._scopes import DELETE, DRAFT, ORGANIZE, SEND
from .._toolkit import Tool, ToolContext, ToolError, imap_tool_error
from ..mail._compose import (
    MAX_BODY_CHARS,
    MAX_RECIPIENTS,
    ComposedMessage,
    ComposeError,
    OutgoingAttachment,
    check_body,
    check_header_text,
    compose,
    make_message_id,
    parse_addresses,
    parse_message_ids,
)
from ..mail._mailbox_api import IMAPError, IMAPNoSuchMailbox, IMAPSession, MailboxInfo, MailboxState
from ..mail._search import search_string
from ..mail._sendintent import EndState, SendIntents
from ..mail._sendpolicy import refused_recipients
from ..mail._sendrate import send_key
from ..mail._smtp import SMTPOutcomeUnknown, SMTPSendFailed

T = TypeVar("T")
log = Logger()

MAX_ATTACHMENT_URLS = 20
MAX_FLAGS = 20
UNKNOWN_OUTCOME_KEYWORD = "$MailMCPDeliveryUnknown"

SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Flagged", "\\Answered", "\\Draft")}
# RFC 9051 atom: printable ASCII except atom-specials ( ) { SP CTL % * " \ ]
_KEYWORD = re.compile(r"[!#$&\'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]{1,64}")

SENT_NAMES = ("sent", "sent items", "sent messages", "sent mail")
DRAFTS_NAMES = ("drafts", "draft")
TRASH_NAMES = ("trash", "deleted items", "deleted messages", "bin")


# -- input types ------------------------------------------------------------


def _check_folder(value: str) -> str:
    return check_header_text("folder", value, limit=1000)


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


def _parsed_by(
    parse: Callable[[str, list[str]], object], field: str
) -> Callable[[list[str]], list[str]]:
    """A validator: C{parse(field, values)} must accept the values, which are kept as given."""

    def check(values: list[str]) -> list[str]:
        parse(field, values)
        return values

    return check


def _addresses(field: str) -> Callable[[list[str]], list[str]]:
    return _parsed_by(parse_addresses, field)


def _check_message_ids(field: str) -> Callable[[list[str]], list[str]]:
    return _parsed_by(parse_message_ids, field)


Folder = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1000,
        description="Folder name as listed by list_mailboxes, e.g. INBOX.",
    ),
    AfterValidator(_check_folder),
]
UID = Annotated[
    int, Field(strict=True, ge=1, le=4294967295, description="IMAP UID of the message.")
]
UIDValidity = Annotated[
    int | None,
    Field(
        default=None,
        strict=True,
        ge=1,
        le=4294967295,
        description="The folder's UIDVALIDITY as returned with the UID; when given and the folder "
        "has changed since, the call is refused instead of touching another message.",
    ),
]


_Address = Annotated[str, Field(max_length=2000)]

ToList = Annotated[
    list[_Address],
    BeforeValidator(_as_list),
    Field(
        max_length=MAX_RECIPIENTS,
        description="Recipients: addresses like 'bob@example.com' or 'Bob <bob@example.com>' "
        "(a list, or one comma-separated string).",
    ),
    AfterValidator(_addresses("to")),
]
CcList = Annotated[
    list[_Address],
    BeforeValidator(_as_list),
    Field(max_length=MAX_RECIPIENTS, description="Carbon-copy recipients, same format as to."),
    AfterValidator(_addresses("cc")),
]
BccList = Annotated[
    list[_Address],
    BeforeValidator(_as_list),
    Field(
        max_length=MAX_RECIPIENTS,
        description="Blind-copy recipients: they receive the message, but no header sent to anyone "
        "names them.",
    ),
    AfterValidator(_addresses("bcc")),
]


class InlineAttachment(BaseModel):
    """A file given inline, base64-encoded, for send/draft."""

    model_config = ConfigDict(extra="forbid")

    filename: Annotated[str, AfterValidator(lambda v: check_header_text("filename", v))] = Field(
        min_length=1,
        max_length=255,
        description="File name shown to the recipient, e.g. 'report.pdf'.",
    )
    content_type: str = Field(
        default="application/octet-stream",
        max_length=127,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$",
        description="MIME type, e.g. 'application/pdf'.",
    )
    content_base64: str = Field(
        max_length=48 * 1024 * 1024,
        description="The file's bytes, base64-encoded (standard alphabet, padding required).",
    )


class ComposeInput(BaseModel):
    """The message fields shared by send_mail_message and create_draft_mail_message."""

    model_config = ConfigDict(extra="forbid")

    to: ToList = []
    subject: Annotated[str, AfterValidator(lambda v: check_header_text("subject", v))] = Field(
        default="", max_length=998, description="Subject line (no line breaks)."
    )
    text_body: Annotated[str, AfterValidator(lambda v: check_body("text_body", v))] = Field(
        default="", max_length=MAX_BODY_CHARS, description="Plain-text body."
    )
    cc: CcList = []
    bcc: BccList = []
    html_body: Annotated[str, AfterValidator(lambda v: check_body("html_body", v))] | None = Field(
        default=None,
        max_length=MAX_BODY_CHARS,
        description="Optional HTML version of the body, sent as an alternative to text_body.",
    )
    attachment_urls: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=MAX_ATTACHMENT_URLS,
        description="Attachments: only download links issued by this server (get_mail_attachment_link "
        "gives one per attachment) are accepted; other URLs are refused and never fetched.",
    )
    attachments: list[InlineAttachment] = Field(
        default_factory=list,
        max_length=MAX_ATTACHMENT_URLS,
        description="Attachments given inline as base64 with filename and content type (for files "
        "that are not already in the mailbox; to forward one, use attachment_urls).",
    )
    in_reply_to: Annotated[
        list[str], BeforeValidator(_as_list), AfterValidator(_check_message_ids("in_reply_to"))
    ] = Field(
        default_factory=list,
        max_length=1,
        description="When replying: the Message-ID of the message replied to, e.g. '<abc@example.com>'.",
    )
    references: Annotated[
        list[str], BeforeValidator(_as_list), AfterValidator(_check_message_ids("references"))
    ] = Field(
        default_factory=list,
        max_length=100,
        description="When replying: the thread's Message-IDs (the original's References plus its Message-ID).",
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Optional key making a retried call safe: a call repeating an earlier key does not "
        "send (or save) a second copy, it reports the first one.",
    )


class SendInput(ComposeInput):
    folder: Annotated[str, AfterValidator(_check_folder)] | None = Field(
        default=None,
        max_length=1000,
        description="Where to file the sent copy; default: the account's Sent folder (\\Sent special-use).",
    )

    @model_validator(mode="after")
    def _needs_recipient(self) -> SendInput:
        if not (self.to or self.cc or self.bcc):
            raise ValueError("at least one recipient (to, cc or bcc) is required")
        return self


class DraftInput(ComposeInput):
    folder: Annotated[str, AfterValidator(_check_folder)] | None = Field(
        default=None,
        max_length=1000,
        description="Where to save the draft; default: the account's Drafts folder (\\Drafts special-use).",
    )


def _check_flag(value: str) -> str:
    if value.startswith("\\"):
        canonical = SYSTEM_FLAGS.get(value.lower())
        if value.lower() == "\\deleted":
            raise ValueError("\\Deleted cannot be set here: use delete_mail_message")
        if canonical is None:
            raise ValueError(
                f"{value[:40]!r} is not an allowed system flag (allowed: \\Seen, \\Flagged, \\Answered, \\Draft)"
            )
        return canonical
    if not _KEYWORD.fullmatch(value):
        raise ValueError(
            f"{value[:40]!r} is not a valid keyword: 1-64 printable ASCII characters, "
            'without spaces or ( ) { } % * " \\ ]'
        )
    return value


FlagList = Annotated[
    list[Annotated[str, Field(max_length=64), AfterValidator(_check_flag)]],
    BeforeValidator(_as_list),
    Field(default_factory=list, max_length=MAX_FLAGS),
]


class MessageRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: Folder
    uid: UID
    uidvalidity: UIDValidity


class DeleteInput(MessageRef):
    permanent: bool = Field(
        default=False,
        strict=True,
        description="Delete for good instead of moving to Trash.  Messages already in Trash "
        "are always deleted for good.",
    )


class MoveInput(MessageRef):
    destination: Folder


class FlagsInput(MessageRef):
    add: FlagList = Field(
        description="Flags to set: \\Seen, \\Flagged, \\Answered, \\Draft, or keywords like $Important."
    )
    remove: FlagList = Field(description="Flags to clear, same values as add.")

    @model_validator(mode="after")
    def _something_to_do(self) -> FlagsInput:
        if not self.add and not self.remove:
            raise ValueError("give at least one flag to add or remove")
        both = {f.lower() for f in self.add} & {f.lower() for f in self.remove}
        if both:
            raise ValueError(f"flags both added and removed: {', '.join(sorted(both))}")
        return self


# -- outputs ----------------------------------------------------------------


class RecipientStatus(BaseModel):
    address: str
    accepted: bool
    code: int | None = Field(description="The SMTP server's reply code to RCPT TO.")
    message: str = Field(description="The SMTP server's reply text.")


class SendOutput(BaseModel):
    status: Literal["sent", "already_sent"] = Field(
        description="sent: accepted by the SMTP server now; already_sent: an earlier call with the "
        "same idempotency_key sent it (nothing was sent this time)."
    )
    message_id: str
    recipients: list[RecipientStatus]
    sent_folder: str | None = Field(description="Folder holding the sent copy, if it was filed.")
    sent_uid: int | None
    sent_uidvalidity: int | None
    sent_copy_filed_by_server: bool = Field(
        default=False,
        description="True when the account's SMTP server files sent mail in Sent itself (as Gmail "
        "and Office 365 do), so this server did not add a copy (sent_folder is then null).",
    )
    warnings: list[str] = Field(default_factory=list)


class DraftOutput(BaseModel):
    status: Literal["saved", "already_saved"]
    folder: str
    uid: int | None = Field(description="UID of the new draft (null if the server did not say).")
    uidvalidity: int | None
    message_id: str


class DeleteOutput(BaseModel):
    folder: str
    uid: int
    uidvalidity: int
    action: Literal["moved_to_trash", "deleted_permanently"]
    trash_folder: str | None = None
    trash_uid: int | None = Field(
        default=None, description="UID of the message in Trash, when moved."
    )


class MoveOutput(BaseModel):
    folder: str
    uid: int
    uidvalidity: int
    destination: str
    destination_uid: int | None = Field(
        description="UID in the destination (COPYUID), if the server said."
    )
    destination_uidvalidity: int | None


class FlagsOutput(BaseModel):
    folder: str
    uid: int
    uidvalidity: int
    flags: list[str] = Field(description="The message's flags after the change.")


# -- helpers ----------------------------------------------------------------


async def _imap(ctx: ToolContext, operation: Callable[[IMAPSession], Awaitable[T]]) -> T:
    """Run a writing operation on a pooled connection; IMAP errors become ToolErrors."""
    try:
        result: T = await ctx.services.imap.run(ctx.account, operation, read_only=False)
        return result
    except IMAPError as e:
        raise imap_tool_error(e) from None


def find_special(boxes: Sequence[MailboxInfo], special: str, names: Sequence[str]) -> str | None:
    """
    The folder with SPECIAL-USE attribute C{special} (e.g. ``\\Sent``), else
    the first whose name (or last path component) is one of C{names}.
    """
    for box in boxes:
        if box.selectable and any(flag.lower() == special.lower() for flag in box.flags):
            return box.name
    for wanted in names:
        for box in boxes:
            if not box.selectable:
                continue
            leaf = box.name.rsplit(box.delimiter, 1)[-1] if box.delimiter else box.name
            if box.name.lower() == wanted or leaf.lower() == wanted:
                return box.name
    return None


async def _open(session: IMAPSession, folder: str, uidvalidity: int | None) -> MailboxState:
    """SELECT C{folder} and refuse if the caller's UIDVALIDITY is stale."""
    state = await session.select(folder)
    if uidvalidity is not None and uidvalidity != state.uidvalidity:
        raise ToolError(
            f"message id is stale: folder {folder!r} has UIDVALIDITY {state.uidvalidity}, not "
            f"{uidvalidity}; list the messages again to get current UIDs. Nothing was changed."
        )
    return state


async def _require_uid(session: IMAPSession, folder: str, uid: int) -> tuple[str, ...]:
    """The message's flags, or a ToolError when UID C{uid} is not in the open folder."""
    found = await session.fetch(str(uid), "(UID FLAGS)")
    for message in found:
        if message.uid == uid:
            return message.flags or ()
    raise ToolError(f"message UID {uid} not found in {folder!r}. Nothing was changed.")


async def _open_message(session: IMAPSession, ref: MessageRef) -> MailboxState:
    """SELECT the message's folder (refusing a stale UIDVALIDITY) and make sure its UID is there."""
    state = await _open(session, ref.folder, ref.uidvalidity)
    await _require_uid(session, ref.folder, ref.uid)
    return state


def _same_folder(a: str, b: str) -> bool:
    if a.upper() == "INBOX" and b.upper() == "INBOX":
        return True
    return a == b


def _attachment_limits(ctx: ToolContext) -> tuple[int, int, int]:
    """(per attachment, per message, count) caps."""
    limits = ctx.services.limits
    return limits.max_attachment_bytes, limits.max_message_bytes, limits.max_count


def _inline_attachments(
    ctx: ToolContext, inline: Sequence[InlineAttachment]
) -> list[OutgoingAttachment]:
    """Decode inline base64 attachments, strictly and within the size caps."""
    per_file, _, _ = _attachment_limits(ctx)
    decoded = []
    for index, item in enumerate(inline):
        text = "".join(item.content_base64.split())
        if len(text) > per_file * 4 // 3 + 8:
            raise ToolError(
                f"attachments[{index}] ({item.filename}) is over the {per_file}-byte cap"
            )
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ToolError(
                f"attachments[{index}].content_base64 is not valid base64 (standard alphabet, with padding)"
            ) from None
        if len(data) > per_file:
            raise ToolError(
                f"attachments[{index}] ({item.filename}) is over the {per_file}-byte cap"
            )
        decoded.append(OutgoingAttachment(data, item.filename, item.content_type.lower()))
    return decoded


async def user_attachments(
    ctx: ToolContext,
    urls: Sequence[str],
    inline: Sequence[InlineAttachment],
    *,
    more: Sequence[OutgoingAttachment] = (),
) -> list[OutgoingAttachment]:
    """
    The caller's attachments (links this server issued, then inline base64)
    followed by C{more} (parts the server took from a message itself), all
    checked against the count and size caps together.
    """
    decoded = _inline_attachments(ctx, inline)
    _, per_message, max_count = _attachment_limits(ctx)
    if len(inline) + len(urls) + len(more) > max_count:
        raise ToolError(f"too many attachments (at most {max_count} per message)")
    from ..attachments._helpers import resolve_attachment_urls

    linked = [
        OutgoingAttachment(r.data, r.filename, r.content_type)
        for r in await resolve_attachment_urls(ctx, urls)
    ]
    attachments = linked + decoded + list(more)
    if sum(len(a.data) for a in attachments) > per_message:
        raise ToolError(f"attachments too large together (at most {per_message} bytes)")
    return attachments


async def _compose(
    ctx: ToolContext, args: ComposeInput, *, require_recipients: bool
) -> ComposedMessage:
    attachments = await user_attachments(ctx, args.attachment_urls, args.attachments)
    try:
        return compose(
            from_email=ctx.account.email,
            from_name=ctx.account.full_name,
            to=parse_addresses("to", args.to),
            cc=parse_addresses("cc", args.cc),
            bcc=parse_addresses("bcc", args.bcc),
            subject=args.subject,
            text_body=args.text_body,
            html_body=args.html_body,
            message_id=make_message_id(ctx.account.email, args.idempotency_key),
            date=ctx.services.reactor.seconds(),
            in_reply_to=parse_message_ids("in_reply_to", args.in_reply_to),
            references=parse_message_ids("references", args.references),
            attachments=attachments,
            require_recipients=require_recipients,
        )
    except ComposeError as e:
        raise ToolError(str(e)) from None


async def _find_by_message_id(
    session: IMAPSession, folder: str, message_id: str
) -> tuple[int, int] | None:
    """(uidvalidity, uid) of a message in C{folder} with this Message-ID, if any."""
    state = await session.examine(folder)
    uids = await session.uid_search([b"HEADER", b"Message-ID", search_string(message_id)])
    return (state.uidvalidity, uids[-1]) if uids else None


async def _folder_or_special(
    session: IMAPSession, folder: str | None, special: str, names: Sequence[str]
) -> str | None:
    if folder is not None:
        return folder
    return find_special(await session.list_mailboxes(), special, names)


# -- send_mail_message ------------------------------------------------------


def _recipients(result: Sequence[Any]) -> list[RecipientStatus]:
    return [
        RecipientStatus(address=r.address, accepted=r.accepted, code=r.code, message=r.message)
        for r in result
    ]


async def send_mail_message(ctx: ToolContext, args: SendInput) -> SendOutput:
    if ctx.services.smtp is None:
        raise ToolError("sending mail is not configured on this server")
    message = await _compose(ctx, args, require_recipients=True)
    return await deliver(ctx, message, folder=args.folder, idempotency_key=args.idempotency_key)


async def deliver(
    ctx: ToolContext, message: ComposedMessage, *, folder: str | None, idempotency_key: str | None
) -> SendOutput:
    """
    Send a composed message at most once and file its copy: the path every
    sending tool (send, reply, forward) shares, so the idempotency check in
    Sent, the in-progress claim, the send rate limit, the unknown-outcome
    handling and the Drafts fallback are the same for all of them.
    C{folder} is where the copy goes (None: the \\Sent folder).
    """
    sender = ctx.services.smtp
    if sender is None:
        raise ToolError("sending mail is not configured on this server")
    _check_send_policy(ctx, message)

    if idempotency_key is not None:

        async def look(session: IMAPSession) -> tuple[str, tuple[int, int, bool] | None]:
            sent = await _folder_or_special(session, folder, "\\Sent", SENT_NAMES)
            if sent is None:
                raise ToolError(
                    "idempotency_key needs a Sent folder to check, and none was found; "
                    "pass folder, or call without idempotency_key"
                )
            found = await _find_by_message_id(session, sent, message.message_id)
            if found is None:
                return sent, None
            flags = await _require_uid(session, sent, found[1])
            unconfirmed = any(f.lower() == UNKNOWN_OUTCOME_KEYWORD.lower() for f in flags)
            return sent, (found[0], found[1], unconfirmed)

        try:
            sent_folder, earlier = await _imap(ctx, look)
        except ToolError as e:
            # Say whether the mail went out: here it did not (a bare IMAP
            # error would leave the user guessing, and maybe resending).
            raise ToolError(
                f"Not sent: {e.message} (while checking Sent for an earlier send "
                "with this idempotency_key); nothing was sent."
            ) from None
        if earlier is not None:
            earlier_uidvalidity, earlier_uid, unconfirmed = earlier
            warnings = [
                f"a message with this idempotency_key is already in {sent_folder!r}; "
                "nothing was sent this time"
            ]
            if unconfirmed:
                warnings.append(
                    "that earlier send ended with an unknown delivery status (the connection "
                    "broke after the message went out); it was most likely delivered"
                )
            return SendOutput(
                status="already_sent",
                message_id=message.message_id,
                recipients=[],
                sent_folder=sent_folder,
                sent_uid=earlier_uid,
                sent_uidvalidity=earlier_uidvalidity,
                warnings=warnings,
            )

    # A keyed send is claimed in the store every daemon shares (SM-13, SM-14);
    # without a store, in this process only.
    intents = ctx.services.send_intents if idempotency_key is not None else None
    release: Any = None
    if intents is not None:
        replay = await _begin_intent(ctx, intents, message, sent_folder)
        if replay is not None:
            return replay
    else:
        release = sender.claim(message.message_id)
        if release is False:
            raise ToolError(
                "a send with this idempotency_key is already in progress; nothing was sent"
            )
    # The server files its own copy (Gmail, Office 365): a second one from
    # us would be a duplicate in Sent.
    server_files = ctx.account.smtp.files_sent
    # The intent's outcome: None once the message may have gone out and
    # until we know (a crash leaves it "sending").
    outcome: EndState | None = "failed"
    try:
        await _take_send_tokens(ctx, len(message.recipients))
        outcome = None
        result = await sender.send(
            ctx.account, message.envelope_from, message.recipients, message.wire_bytes
        )
        outcome = "sent"
    except SMTPOutcomeUnknown as e:
        outcome = "unknown"
        if intents is not None:
            await _end_intent(intents, message, outcome)
            outcome = None
        if server_files:
            raise ToolError(
                f"Delivery status unknown: {e.message} Message-ID: {message.message_id}. "
                "The SMTP server files sent mail itself, so if the message went out its copy is "
                "in Sent, and a retry with the same idempotency_key will find it and not send "
                "again."
            ) from None
        filed = await _file_copy(ctx, folder, message, ("\\Seen", UNKNOWN_OUTCOME_KEYWORD))
        raise ToolError(
            f"Delivery status unknown: {e.message} Message-ID: {message.message_id}. "
            + (
                f"A copy was filed in {filed[0]!r} (uid {filed[2]}), so a retry with the same "
                "idempotency_key will not send again."
                if filed[0] is not None
                else f"The copy could not be filed in Sent ({'; '.join(filed[3])})."
            )
        ) from None
    except SMTPSendFailed as e:
        outcome = "failed"
        raise ToolError(await _not_sent(ctx, e, message)) from None
    finally:
        if callable(release):
            release()
        if intents is not None and outcome is not None:
            await _end_intent(intents, message, outcome)

    filed_in: str | None = None
    uidvalidity: int | None = None
    uid: int | None = None
    warnings = []
    if not server_files:
        filed_in, uidvalidity, uid, warnings = await _file_copy(ctx, folder, message, ("\\Seen",))
    return SendOutput(
        status="sent",
        message_id=message.message_id,
        recipients=_recipients(result.recipients),
        sent_folder=filed_in,
        sent_uid=uid,
        sent_uidvalidity=uidvalidity,
        sent_copy_filed_by_server=server_files,
        warnings=warnings,
    )


def _check_send_policy(ctx: ToolContext, message: ComposedMessage) -> None:
    """
    The operator's recipient allow-list (--send-allow-domains, SM-15): decided
    before Sent is searched or SMTP is contacted, so a refused send leaves no
    trace but the error.
    """
    allowed = ctx.services.send_allow_domains
    refused = refused_recipients(message.recipients, allowed)
    if refused:
        shown = ", ".join(refused[:20]) + (
            f" and {len(refused) - 20} more" if len(refused) > 20 else ""
        )
        raise ToolError(
            f"Not sent: this server only sends to {', '.join(allowed)} (the operator's "
            f"--send-allow-domains); refused recipient(s): {shown}. Remove them and try again. "
            "Nothing was sent or saved."
        )


async def _begin_intent(
    ctx: ToolContext, intents: SendIntents, message: ComposedMessage, sent_folder: str
) -> SendOutput | None:
    """
    Claim a keyed send in the shared store before ``DATA`` (SM-13, SM-14).
    Returns None when this call may send; an ``already_sent`` answer when an
    earlier call did; raises when another call is sending it or an earlier
    one may have (its daemon died mid-send).
    """
    try:
        state = await intents.begin(ctx.account, message.message_id)
    except CancelledError:
        raise
    except Exception as e:
        log.warn("send intent could not be recorded: {error}", error=type(e).__name__)
        raise ToolError(
            "Not sent: this send could not be recorded in the server's store (unavailable), "
            "so it could not be kept from going out twice; try again in a minute. Nothing "
            "was sent; the message was not saved."
        ) from None
    if state == "claimed":
        return None
    if state == "sending":
        raise ToolError(
            "Not sent: a send with this idempotency_key is already in progress "
            f"(Message-ID: {message.message_id}); nothing was sent this time. Call again "
            "with the same idempotency_key in a minute to learn how it ended."
        )
    if state == "sent":
        return SendOutput(
            status="already_sent",
            message_id=message.message_id,
            recipients=[],
            sent_folder=None,
            sent_uid=None,
            sent_uidvalidity=None,
            warnings=[
                "an earlier call with this idempotency_key sent this message (its copy is "
                f"not in {sent_folder!r}); nothing was sent this time"
            ],
        )
    raise ToolError(
        "Delivery status unknown: an earlier send with this idempotency_key (Message-ID: "
        f"{message.message_id}) was interrupted after the message may have gone out, and no "
        f"copy is in {sent_folder!r}. Nothing was sent this time. Check the Sent folder, or "
        "ask the recipient, whether it arrived; to send it anyway, call again with a new "
        "idempotency_key."
    )


async def _end_intent(intents: SendIntents, message: ComposedMessage, outcome: EndState) -> None:
    """Record how a claimed send ended; a store failure only costs a later retry's certainty."""
    try:
        await intents.end(message.message_id, outcome)
    except Exception as e:
        log.warn(
            "send outcome {outcome} could not be recorded: {error}",
            outcome=outcome,
            error=type(e).__name__,
        )


async def _take_send_tokens(ctx: ToolContext, recipients: int) -> None:
    """
    Take one of the account's send tokens per envelope recipient (SM-12),
    or refuse the whole send saying why and when to try again.  Called just
    before SMTP is contacted, so a call that fails validation or is an
    idempotent replay costs nothing.
    """
    limiter = ctx.services.send_limiter
    if limiter is None:
        return
    burst, per_hour = limiter.burst, limiter.per_hour
    budget = f"{burst} recipients at once, then {per_hour:g} per hour; to, cc and bcc all count"
    if recipients > burst:
        raise ToolError(
            f"Not sent: this message has {recipients} recipients, more than this account's "
            f"send rate limit allows in one go ({budget}). Send it to fewer recipients at a "
            "time. Nothing was sent; the message was not saved."
        )
    try:
        wait = await limiter.take(send_key(ctx.account), recipients)
    except CancelledError:
        raise
    except Exception as e:
        log.warn("send limit could not be checked: {error}", error=type(e).__name__)
        raise ToolError(
            "Not sent: the send rate limit could not be checked (the server's store is "
            "unavailable); try again in a minute. Nothing was sent; the message was not saved."
        ) from None
    if wait <= 0:
        return
    seconds = max(1, math.ceil(wait))
    when = datetime.fromtimestamp(ctx.services.reactor.seconds() + seconds, UTC)
    raise ToolError(
        f"Not sent: send rate limit reached for this account ({budget}); this message has "
        f"{recipients} recipient{'s' if recipients != 1 else ''}. Try again in {seconds} seconds "
        f"(after {when:%H:%M:%S} UTC). Nothing was sent; the message was not saved."
    )


async def _file_copy(
    ctx: ToolContext, folder: str | None, message: ComposedMessage, flags: Sequence[str]
) -> tuple[str | None, int | None, int | None, list[str]]:
    """
    APPEND the sent copy to Sent.  Never raises: the mail has left, so a
    failure here is a warning, not an error.
    """

    async def append(session: IMAPSession) -> tuple[str | None, int | None, int | None]:
        target = await _folder_or_special(session, folder, "\\Sent", SENT_NAMES)
        if target is None:
            return None, None, None
        try:
            stored = await session.append(target, message.copy_bytes, flags)
        except IMAPNoSuchMailbox:
            raise
        except IMAPError:
            if tuple(flags) == ("\\Seen",):
                raise
            # A server that refuses our marker keyword still gets the copy.
            stored = await session.append(target, message.copy_bytes, ("\\Seen",))
        return target, stored.uidvalidity, stored.uid

    try:
        target, uidvalidity, uid = await ctx.services.imap.run(ctx.account, append, read_only=False)
    except IMAPError as e:
        return None, None, None, [f"sent, but not saved to Sent: {e.message}"]
    if target is None:
        return (
            None,
            None,
            None,
            ["sent, but not saved: no Sent folder found (pass folder to choose one)"],
        )
    return target, uidvalidity, uid, []


async def _not_sent(ctx: ToolContext, error: SMTPSendFailed, message: ComposedMessage) -> str:
    """Keep the composed message in Drafts and say what happened."""

    async def save(session: IMAPSession) -> tuple[str | None, int | None]:
        drafts = await _folder_or_special(session, None, "\\Drafts", DRAFTS_NAMES)
        if drafts is None:
            return None, None
        stored = await session.append(drafts, message.copy_bytes, ("\\Draft", "\\Seen"))
        return drafts, stored.uid

    text = f"Not sent: {error.message}."
    if error.recipients:
        refused = [f"{r.address} ({r.code})" for r in error.recipients if not r.accepted]
        if refused:
            text += " Refused recipients: " + ", ".join(refused) + "."
    try:
        drafts, uid = await ctx.services.imap.run(ctx.account, save, read_only=False)
    except IMAPError as e:
        return text + f" The message could not be saved as a draft either: {e.message}"
    if drafts is None:
        return text + " No Drafts folder was found, so it was not saved."
    where = f" (uid {uid})" if uid is not None else ""
    return text + f" The message was saved in {drafts!r}{where}; fix the problem and send it again."


SEND_MAIL_MESSAGE: Tool[SendInput, SendOutput] = Tool(
    name="send_mail_message",
    title="Send email",
    description=(
        "Send an email from the user's account to the given recipients (to/cc/bcc), with a "
        "plain-text body and optional HTML alternative and attachments. The sent copy is filed in "
        "the Sent folder. If any recipient is refused nothing is sent and the message is kept in "
        "Drafts. If the outcome is unknown (the connection broke after the message went out), do "
        "not resend. Pass idempotency_key to make retries safe. Sending is rate-limited per "
        "account; a refused call says when to try again."
    ),
    input_model=SendInput,
    output_model=SendOutput,
    handler=send_mail_message,
    scopes=frozenset({SEND}),
    read_only=False,
    # A sent message cannot be called back: hosts should ask before each send.
    destructive=True,
    idempotent=False,
    open_world=True,
)


# -- create_draft_mail_message ----------------------------------------------


async def create_draft_mail_message(ctx: ToolContext, args: DraftInput) -> DraftOutput:
    message = await _compose(ctx, args, require_recipients=False)
    return await save_draft(ctx, message, folder=args.folder, idempotency_key=args.idempotency_key)


async def save_draft(
    ctx: ToolContext, message: ComposedMessage, *, folder: str | None, idempotency_key: str | None
) -> DraftOutput:
    """
    APPEND a composed message to Drafts (or C{folder}) as ``\\Draft``; with
    an C{idempotency_key}, a draft with the same Message-ID already there is
    reported instead of saved twice.  Shared by every tool that saves drafts.
    """

    async def save(session: IMAPSession) -> DraftOutput:
        target = await _folder_or_special(session, folder, "\\Drafts", DRAFTS_NAMES)
        if target is None:
            raise ToolError("no Drafts folder found; pass folder to choose where to save the draft")
        if idempotency_key is not None:
            earlier = await _find_by_message_id(session, target, message.message_id)
            if earlier is not None:
                return DraftOutput(
                    status="already_saved",
                    folder=target,
                    uid=earlier[1],
                    uidvalidity=earlier[0],
                    message_id=message.message_id,
                )
        stored = await session.append(target, message.copy_bytes, ("\\Draft", "\\Seen"))
        return DraftOutput(
            status="saved",
            folder=target,
            uid=stored.uid,
            uidvalidity=stored.uidvalidity,
            message_id=message.message_id,
        )

    return await _imap(ctx, save)


CREATE_DRAFT_MAIL_MESSAGE: Tool[DraftInput, DraftOutput] = Tool(
    name="create_draft_mail_message",
    title="Create email draft",
    description=(
        "Save a message as a draft (in the Drafts folder unless folder is given) without sending "
        "it. Same fields as send_mail_message; recipients are optional. Returns the draft's UID."
    ),
    input_model=DraftInput,
    output_model=DraftOutput,
    handler=create_draft_mail_message,
    scopes=frozenset({DRAFT}),
    read_only=False,
    # Only adds a message to Drafts.
    destructive=False,
    idempotent=False,
    open_world=False,
)


# -- delete_mail_message ----------------------------------------------------


async def delete_mail_message(ctx: ToolContext, args: DeleteInput) -> DeleteOutput:
    async def delete(session: IMAPSession) -> DeleteOutput:
        trash = find_special(await session.list_mailboxes(), "\\Trash", TRASH_NAMES)
        permanent = args.permanent or (trash is not None and _same_folder(trash, args.folder))
        if permanent and "UIDPLUS" not in session.capabilities:
            raise ToolError(
                "the server cannot delete a single message safely (no UIDPLUS): refusing, "
                "because a plain EXPUNGE would also remove other messages marked deleted"
            )
        if not permanent and trash is None:
            raise ToolError(
                "no Trash folder found; pass permanent=true to delete the message for good"
            )
        state = await _open_message(session, args)
        if permanent:
            await session.uid_store([args.uid], "+FLAGS", ["\\Deleted"], silent=True)
            await session.uid_expunge([args.uid])
            return DeleteOutput(
                folder=args.folder,
                uid=args.uid,
                uidvalidity=state.uidvalidity,
                action="deleted_permanently",
            )
        assert trash is not None
        mapping = await session.uid_move([args.uid], trash)
        return DeleteOutput(
            folder=args.folder,
            uid=args.uid,
            uidvalidity=state.uidvalidity,
            action="moved_to_trash",
            trash_folder=trash,
            trash_uid=mapping.get(args.uid),
        )

    return await _imap(ctx, delete)


DELETE_MAIL_MESSAGE: Tool[DeleteInput, DeleteOutput] = Tool(
    name="delete_mail_message",
    title="Delete email",
    description=(
        "Delete one message: by default it is moved to the Trash folder; with permanent=true, or "
        "when it is already in Trash, it is removed for good (only that message)."
    ),
    input_model=DeleteInput,
    output_model=DeleteOutput,
    handler=delete_mail_message,
    scopes=frozenset({DELETE}),
    read_only=False,
    destructive=True,
    # Repeating the call finds the message gone and changes nothing more.
    idempotent=True,
    open_world=False,
)


# -- move_mail_message ------------------------------------------------------


async def move_mail_message(ctx: ToolContext, args: MoveInput) -> MoveOutput:
    if _same_folder(args.folder, args.destination):
        raise ToolError("destination is the folder the message is already in")

    async def move(session: IMAPSession) -> MoveOutput:
        boxes = await session.list_mailboxes()
        if not any(_same_folder(b.name, args.destination) and b.selectable for b in boxes):
            raise ToolError(
                f"destination folder {args.destination!r} not found (use list_mailboxes)"
            )
        state = await _open_message(session, args)
        mapping = await session.uid_move([args.uid], args.destination)
        destination_uidvalidity: int | None = None
        try:
            status = await session.status(args.destination, ["UIDVALIDITY"])
            destination_uidvalidity = status.get("UIDVALIDITY")
        except IMAPError:
            pass
        return MoveOutput(
            folder=args.folder,
            uid=args.uid,
            uidvalidity=state.uidvalidity,
            destination=args.destination,
            destination_uid=mapping.get(args.uid),
            destination_uidvalidity=destination_uidvalidity,
        )

    return await _imap(ctx, move)


MOVE_MAIL_MESSAGE: Tool[MoveInput, MoveOutput] = Tool(
    name="move_mail_message",
    title="Move email",
    description=(
        "Move one message to another folder. Returns its new UID in the destination folder."
    ),
    input_model=MoveInput,
    output_model=MoveOutput,
    handler=move_mail_message,
    scopes=frozenset({ORGANIZE}),
    read_only=False,
    destructive=True,
    # Repeating the call finds the message gone from the source and changes nothing more.
    idempotent=True,
    open_world=False,
)


# -- update_mail_message_flags ----------------------------------------------


async def update_mail_message_flags(ctx: ToolContext, args: FlagsInput) -> FlagsOutput:
    async def update(session: IMAPSession) -> FlagsOutput:
        state = await _open_message(session, args)
        if args.add:
            await session.uid_store([args.uid], "+FLAGS", args.add, silent=True)
        if args.remove:
            await session.uid_store([args.uid], "-FLAGS", args.remove, silent=True)
        flags = await _require_uid(session, args.folder, args.uid)
        # \Recent is per-session noise nobody can set or clear.
        shown = [f for f in flags if f.lower() != "\\recent"]
        return FlagsOutput(
            folder=args.folder, uid=args.uid, uidvalidity=state.uidvalidity, flags=shown
        )

    return await _imap(ctx, update)


UPDATE_MAIL_MESSAGE_FLAGS: Tool[FlagsInput, FlagsOutput] = Tool(
    name="update_mail_message_flags",
    title="Update email flags",
    description=(
        "Add or remove flags on one message: \\Seen (read), \\Flagged (starred), \\Answered, "
        "\\Draft, or keywords such as $Important. Use delete_mail_message to delete."
    ),
    input_model=FlagsInput,
    output_model=FlagsOutput,
    handler=update_mail_message_flags,
    scopes=frozenset({ORGANIZE}),
    read_only=False,
    # Every change can be undone with the same tool, and \Deleted (the one
    # flag that loses mail) is refused.
    destructive=False,
    idempotent=True,
    open_world=False,
)


TOOLS = [
    SEND_MAIL_MESSAGE,
    CREATE_DRAFT_MAIL_MESSAGE,
    DELETE_MAIL_MESSAGE,
    MOVE_MAIL_MESSAGE,
    UPDATE_MAIL_MESSAGE_FLAGS,
]
