"""
The conversation tools: reply to and forward a message in the mailbox.

Asked to "reply to Anna's mail", a model that rebuilds the reply by hand
with ``send_mail_message`` gets it wrong in the ways that matter: the reply
lands outside the thread, reply-all copies the user to themselves, the
original is never marked answered.  Here the server builds the reply (or
forward) from the original, fetched over the pooled IMAP session:

- recipients from ``Reply-To`` (else ``From``); reply-all adds the original
  ``To``/``Cc``, minus the user's own addresses and duplicates;
- ``In-Reply-To`` and a bounded ``References`` chain; one ``Re:``/``Fwd:``
  prefix whatever stack of localised prefixes the original had;
- the quoted original (text, and HTML when there is HTML); a forward
  re-attaches the original's attachments, read from IMAP on the server
  (``BODY.PEEK`` of each part), or attaches the whole original byte for byte
  as ``message/rfc822``.

Sending goes through the same path as ``send_mail_message``
(`mailmcp.tools._writing.deliver`: idempotency, rate limit, Sent filing,
Drafts fallback); with ``draft: true`` the message is only saved in Drafts
(`mailmcp.tools._writing.save_draft`) and nothing is sent.  After a send
the original gets ``\\Answered`` (reply) or ``$Forwarded`` (forward, when
the folder accepts keywords); failing to mark it is a warning, because the
mail has already left.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from email.headerregistry import Address as HeaderAddress
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

import attrs
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .._scopes import DRAFT, SEND
from .._toolkit import Tool, ToolContext, ToolError
from ..mail import _mime
from ..mail._compose import (
    MAX_BODY_CHARS,
    MAX_QUOTED_CHARS,
    ComposedMessage,
    ComposeError,
    OutgoingAttachment,
    append_html,
    blockquote,
    check_body,
    compose,
    forward_subject,
    html_fragment,
    make_message_id,
    parse_addresses,
    quote_text,
    reply_references,
    reply_subject,
    safe_address,
    text_to_html,
    valid_message_id,
    without,
)
from ..mail._mailbox_api import Address as EnvelopeAddress
from ..mail._mailbox_api import Envelope, FetchedMessage, IMAPError, IMAPSession
from ._reading import THREADING_FIELDS, _convert_html, _run
from ._writing import (
    MAX_ATTACHMENT_URLS,
    UID,
    BccList,
    CcList,
    DraftOutput,
    Folder,
    InlineAttachment,
    RecipientStatus,
    SendOutput,
    ToList,
    UIDValidity,
    _attachment_limits,
    deliver,
    save_draft,
    user_attachments,
)

FORWARDED_KEYWORD = "$Forwarded"
FORWARD_SEPARATOR = "---------- Forwarded message ----------"
ORIGINAL_ITEMS = (
    f"(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[{THREADING_FIELDS}]<0.32768>)"
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFromThreads
#: HTML bigger than this is cleaned on a thread pool, not on the reactor.
INLINE_HTML_CHARS = 16 * 1024


# -- inputs -------------------------------------------------------------------


def _body(field: str) -> AfterValidator:
    return AfterValidator(lambda v: check_body(field, v))


IdempotencyKey = Annotated[
    str | None,
    Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Optional key making a retried call safe: a call repeating an earlier key does "
        "not send (or save) a second copy, it reports the first one.",
    ),
]
Draft = Annotated[
    bool,
    Field(
        default=False,
        strict=True,
        description="false: send now. true: only save it in the Drafts folder for the user to "
        "review and send; nothing is sent.",
    ),
]


class _ConversationInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: Folder
    uid: UID
    uidvalidity: UIDValidity
    cc: CcList = Field(
        default_factory=list,
        description="Carbon-copy recipients to add: addresses like 'bob@example.com' or "
        "'Bob <bob@example.com>' (a list, or one comma-separated string).",
    )
    bcc: BccList = []
    draft: Draft = False
    idempotency_key: IdempotencyKey = None


class ReplyInput(_ConversationInput):
    text_body: Annotated[str, _body("text_body")] = Field(
        max_length=MAX_BODY_CHARS,
        description="Your reply, plain text (the quoted original is added below it).",
    )
    html_body: Annotated[str, _body("html_body")] | None = Field(
        default=None,
        max_length=MAX_BODY_CHARS,
        description="Optional HTML version of your reply (the original is quoted below it).",
    )
    reply_all: bool = Field(
        default=False,
        strict=True,
        description="Also reply to everyone in the original's To and Cc (never to the user).",
    )
    quote: bool = Field(
        default=True, strict=True, description="Quote the original message below the reply."
    )
    attachment_urls: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list,
        max_length=MAX_ATTACHMENT_URLS,
        description="Attachments: download links issued by this server (get_mail_attachment_link).",
    )
    attachments: list[InlineAttachment] = Field(
        default_factory=list,
        max_length=MAX_ATTACHMENT_URLS,
        description="Attachments given inline as base64 with filename and content type.",
    )


class ForwardInput(_ConversationInput):
    to: ToList = []
    text_body: Annotated[str, _body("text_body")] = Field(
        default="",
        max_length=MAX_BODY_CHARS,
        description="Your note, written above the forwarded message.",
    )
    include_attachments: bool = Field(
        default=True,
        strict=True,
        description="Re-attach the original's attachments (taken from the mailbox on the server).",
    )
    as_attachment: bool = Field(
        default=False,
        strict=True,
        description="Attach the whole original, unchanged, as one message/rfc822 attachment "
        "instead of quoting it inline (it then carries its own attachments).",
    )

    @model_validator(mode="after")
    def _needs_recipient(self) -> ForwardInput:
        if not self.draft and not (self.to or self.cc or self.bcc):
            raise ValueError("at least one recipient (to, cc or bcc) is required to forward")
        return self


# -- outputs ------------------------------------------------------------------


class ConversationOutput(BaseModel):
    status: Literal["sent", "already_sent", "saved", "already_saved"] = Field(
        description="sent: accepted by the SMTP server now; already_sent: an earlier call with the "
        "same idempotency_key sent it; saved / already_saved: the same for draft=true, which "
        "sends nothing."
    )
    folder: str = Field(description="The original message's folder.")
    uid: int = Field(description="The original message's UID.")
    uidvalidity: int
    message_id: str = Field(description="Message-ID of the new message.")
    subject: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    recipients: list[RecipientStatus] = Field(
        default_factory=list, description="The SMTP server's answer per recipient (when sent)."
    )
    sent_folder: str | None = None
    sent_uid: int | None = None
    sent_uidvalidity: int | None = None
    sent_copy_filed_by_server: bool = False
    draft_folder: str | None = Field(default=None, description="Where the draft was saved.")
    draft_uid: int | None = None
    draft_uidvalidity: int | None = None
    warnings: list[str] = Field(default_factory=list)


class ReplyOutput(ConversationOutput):
    in_reply_to: str | None = Field(description="The original's Message-ID.")
    references: list[str]
    marked_answered: bool = Field(
        description="True when the original now carries \\Answered (only after a send)."
    )


class ForwardOutput(ConversationOutput):
    as_attachment: bool
    forwarded_attachments: list[str] = Field(
        description="File names of the original's attachments carried along."
    )
    marked_forwarded: bool = Field(
        description="True when the original now carries the $Forwarded keyword (only after a "
        "send, and only where the folder accepts keywords)."
    )


# -- reading the original -----------------------------------------------------


@attrs.frozen
class Original:
    """What the reply or forward needs from the original message."""

    folder: str
    uid: int
    uidvalidity: int
    envelope: Envelope
    message_id: str | None
    references: tuple[str, ...]
    in_reply_to: str | None
    text: str | None
    html: str | None
    attachments: tuple[OutgoingAttachment, ...]
    raw: bytes | None
    warnings: tuple[str, ...]


def _envelope(message: FetchedMessage) -> Envelope:
    return message.envelope or Envelope(None, None, (), (), (), (), (), (), None, None)


async def _read_original(
    ctx: ToolContext,
    folder: str,
    uid: int,
    uidvalidity: int | None,
    *,
    bodies: bool = True,
    attachments: bool = False,
    raw: bool = False,
) -> Original:
    """
    Fetch the original over the pooled IMAP session (read-only, every body
    read a ``BODY.PEEK``): envelope, threading headers, its first text and
    HTML body parts (bounded; not read when C{bodies} is false), and on
    request its attachments or its whole bytes, within the attachment caps.
    """
    want_bodies = bodies
    per_file, per_message, max_count = _attachment_limits(ctx)
    from ..attachments._helpers import decode_part, encoded_cap

    async def operation(session: IMAPSession) -> tuple[Any, ...]:
        state = await session.examine(folder)
        if uidvalidity is not None and uidvalidity != state.uidvalidity:
            raise ToolError(
                f"UID {uid} is stale: folder {folder!r} was rebuilt (its uidvalidity is now "
                f"{state.uidvalidity}, not {uidvalidity}). List or search it again. "
                "Nothing was sent."
            )
        found = [m for m in await session.fetch(str(uid), ORIGINAL_ITEMS) if m.uid == uid]
        if not found:
            raise ToolError(
                f"There is no message with UID {uid} in folder {folder!r} (it may have been "
                "moved or deleted). List or search the folder again. Nothing was sent."
            )
        message = found[0]
        warnings: list[str] = []
        structure = _mime.analyse(message.bodystructure)
        warnings.extend(structure.warnings)
        skip = {p.part_id for p in structure.attachments}
        texts: dict[str, _mime.Part] = {}
        for part, _chain in _mime.iter_leaves(message.bodystructure, []):
            if part.part_id not in skip and part.content_type in ("text/plain", "text/html"):
                texts.setdefault(part.content_type, part)
        if not want_bodies:
            texts = {}
        budgets = {p.part_id: _mime.fetch_budget(p, MAX_QUOTED_CHARS) for p in texts.values()}
        sections: dict[str, bytes] = {}
        if texts:
            items = " ".join(f"BODY.PEEK[{p}]<0.{n}>" for p, n in budgets.items())
            for got in await session.fetch(str(uid), f"(UID {items})"):
                if got.uid == uid:
                    sections.update(got.sections)
        parts: list[OutgoingAttachment] = []
        if attachments and structure.attachments:
            wanted = structure.attachments
            if len(wanted) > max_count:
                raise ToolError(
                    f"the original has {len(wanted)} attachments, more than the {max_count} a "
                    "message may carry; forward with as_attachment=true or "
                    "include_attachments=false. Nothing was sent."
                )
            cap = encoded_cap(per_file)
            for p in wanted:
                if p.size > cap:
                    raise ToolError(
                        f"the original's attachment {p.filename or p.part_id!r} is over the "
                        f"{per_file}-byte cap; forward with include_attachments=false. "
                        "Nothing was sent."
                    )
            items = " ".join(
                f"BODY.PEEK[{p.part_id}.MIME] BODY.PEEK[{p.part_id}]<0.{cap + 1}>" for p in wanted
            )
            holder = {m.uid: m for m in await session.fetch(str(uid), f"(UID {items})")}.get(uid)
            for p in wanted:
                body = holder.sections.get(p.part_id) if holder is not None else None
                if body is None or len(body) > cap:
                    raise ToolError(
                        f"could not read the original's attachment {p.part_id}. Nothing was sent."
                    )
                header = holder.sections.get(f"{p.part_id}.MIME", b"") if holder else b""
                if not header.strip():
                    # No part header from the server: rebuild what decoding needs from BODYSTRUCTURE.
                    header = (
                        f"Content-Type: {p.content_type}\r\n"
                        f"Content-Transfer-Encoding: {p.encoding or '7bit'}\r\n\r\n"
                    ).encode("ascii", "replace")
                decoded = decode_part(header, body)
                if len(decoded.data) > per_file:
                    raise ToolError(
                        f"the original's attachment {decoded.filename!r} is over the "
                        f"{per_file}-byte cap; forward with include_attachments=false. "
                        "Nothing was sent."
                    )
                name = decoded.filename if decoded.filename != "attachment" else None
                parts.append(
                    OutgoingAttachment(
                        decoded.data, name or p.filename or "attachment", decoded.content_type
                    )
                )
        whole: bytes | None = None
        if raw:
            size = message.size or 0
            if size > per_message:
                raise ToolError(
                    f"the original ({size} bytes) is over the {per_message}-byte message cap, "
                    "so it cannot be attached. Nothing was sent."
                )
            got_raw = [
                m
                for m in await session.fetch(str(uid), f"(UID BODY.PEEK[]<0.{per_message + 1}>)")
                if m.uid == uid
            ]
            whole = got_raw[0].sections.get("") if got_raw else None
            if whole is None:
                raise ToolError("could not read the original message. Nothing was sent.")
            if len(whole) > per_message:
                raise ToolError(
                    f"the original is over the {per_message}-byte message cap, so it cannot be "
                    "attached. Nothing was sent."
                )
        return state.uidvalidity, message, texts, budgets, sections, parts, whole, warnings

    uidvalidity_now, message, text_parts, budgets, sections, parts, whole, warnings = await _run(
        ctx, folder, operation
    )
    texts: dict[str, str] = {}
    for content_type, part in text_parts.items():
        data = sections.get(part.part_id, b"")
        complete = (part.size > 0 and budgets[part.part_id] >= part.size) or len(data) < budgets[
            part.part_id
        ]
        decoded = _mime.decode_transfer(data, part.encoding, complete=complete).data
        text = _mime.decode_bytes(decoded, part.charset, final=complete).text
        if len(text) > MAX_QUOTED_CHARS or not complete:
            text = text[:MAX_QUOTED_CHARS]
            warnings.append(
                f"the original's {content_type} body was cut after {len(text)} characters"
            )
            text += "\n[…]" if content_type == "text/plain" else "<p>[…]</p>"
        texts[content_type] = text
    original_html = texts.get("text/html")
    plain = texts.get("text/plain")
    if plain is not None:
        plain = _mime.clean_text(plain)
    elif original_html is not None:
        plain = await _convert_html(ctx, original_html)
    if original_html is not None:
        original_html = html_fragment(await _off_reactor(ctx, _mime.visible_html, original_html))
    threading = _mime.threading_headers(
        next((v for k, v in message.sections.items() if k.upper().startswith("HEADER.FIELDS")), b"")
    )
    envelope = _envelope(message)
    return Original(
        folder=folder,
        uid=uid,
        uidvalidity=uidvalidity_now,
        envelope=envelope,
        message_id=valid_message_id(threading["message_id"] or envelope.message_id),
        references=tuple(threading["references"]),
        in_reply_to=threading["in_reply_to"],
        text=plain,
        html=original_html,
        attachments=tuple(parts),
        raw=whole,
        warnings=tuple(warnings),
    )


async def _off_reactor(ctx: ToolContext, function: Any, text: str) -> str:
    """Run a text-cleaning C{function} inline on small input, on a thread pool on big input."""
    if len(text) <= INLINE_HTML_CHARS:
        return str(function(text))
    from twisted.internet.threads import deferToThreadPool

    reactor = ctx.services.reactor
    pool = ctx.services.cpu_pool
    if pool is None and hasattr(reactor, "getThreadPool"):
        pool = reactor.getThreadPool()
    if pool is None:
        return str(function(text))
    # A reactor with a thread pool runs work from threads too.
    threads = cast("IReactorFromThreads", reactor)
    result: str = await deferToThreadPool(threads, pool, function, text)
    return result


# -- building -----------------------------------------------------------------


def _show(address: EnvelopeAddress) -> str:
    name = " ".join((_mime.clean_line(address.name, 200) or "").split())
    email = _mime.clean_line(address.email, 320) or ""
    return f"{name} <{email}>" if name else email


def _shown_date(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        when = parsedate_to_datetime(raw[:200])
    except (TypeError, ValueError, IndexError, OverflowError):
        return _mime.clean_line(raw, 200)
    return f"{when:%a}, {when.day} {when:%b %Y at %H:%M}" + (f" {when:%z}" if when.tzinfo else "")


def attribution(envelope: Envelope) -> str:
    """``On <date>, <name> wrote:`` for the quoted original."""
    who = ", ".join(_show(a) for a in envelope.from_[:3]) or "someone"
    date = _shown_date(envelope.date)
    return f"On {date}, {who} wrote:" if date else f"{who} wrote:"


def own_addresses(ctx: ToolContext) -> set[str]:
    """The user's own addresses (the account's email and login names), lower-case."""
    account = ctx.account
    found = {account.email.lower()}
    for login in (account.imap_username, account.smtp_username):
        if "@" in login:
            found.add(login.lower())
    return found


def _safe(addresses: Sequence[EnvelopeAddress], dropped: list[str]) -> list[HeaderAddress]:
    kept = []
    for a in addresses:
        if not a.email:  # group syntax markers
            continue
        safe = safe_address(a.email, a.name)
        if safe is None:
            dropped.append(_mime.clean_line(a.email, 100) or "")
        else:
            kept.append(safe)
    return kept


def reply_recipients(
    envelope: Envelope, own: set[str], *, reply_all: bool
) -> tuple[tuple[HeaderAddress, ...], tuple[HeaderAddress, ...], list[str]]:
    """
    (To, Cc, warnings) of a reply: To is the original's Reply-To, else its
    From; reply-all adds its To and Cc as Cc.  The user's own addresses and
    duplicates are left out.  Replying to one's own message (in Sent) goes
    to that message's recipients instead.
    """
    dropped: list[str] = []
    primary = _safe(envelope.reply_to or envelope.from_, dropped)
    others = _safe(envelope.to, dropped) + _safe(envelope.cc, dropped)
    to = without(primary, own)
    if not to and primary:
        # The user's own message: answer its recipients, as mail clients do.
        to = without(_safe(envelope.to, []), own)
        others = _safe(envelope.cc, [])
    cc = without(others, own | {a.addr_spec.lower() for a in to}) if reply_all else ()
    warnings = [
        f"left out an address of the original that is not valid: {d!r}" for d in dropped if d
    ]
    return to, cc, warnings


def _compose_or_fail(**fields: Any) -> ComposedMessage:
    try:
        return compose(**fields)
    except ComposeError as e:
        raise ToolError(f"{e} Nothing was sent.") from None


def _addresses_shown(addresses: Sequence[HeaderAddress]) -> list[str]:
    return [str(a) for a in addresses]


async def _mark(ctx: ToolContext, original: Original, flag: str) -> tuple[bool, str | None]:
    """
    ``UID STORE +FLAGS`` C{flag} on the original, after checking that its
    folder still has the same UIDVALIDITY and that a keyword is allowed
    there (PERMANENTFLAGS has ``\\*`` or the keyword).  Never raises: the
    message has been sent, so a failure is a warning.
    """
    keyword = not flag.startswith("\\")

    async def operation(session: IMAPSession) -> tuple[bool, str | None]:
        state = await session.select(original.folder)
        if state.uidvalidity != original.uidvalidity:
            return False, (
                f"folder {original.folder!r} was rebuilt since the original was read, so the "
                f"original was not marked {flag}"
            )
        permanent = {f.lower() for f in state.permanent_flags}
        if keyword and not ({"\\*", flag.lower()} & permanent):
            return False, (
                f"folder {original.folder!r} does not accept keywords, so the original was not "
                f"marked {flag}"
            )
        present = [
            m
            for m in await session.fetch(str(original.uid), "(UID FLAGS)")
            if m.uid == original.uid
        ]
        if not present:
            return False, f"the original is no longer in {original.folder!r}; not marked {flag}"
        await session.uid_store([original.uid], "+FLAGS", [flag], silent=True)
        return True, None

    try:
        result: tuple[bool, str | None] = await ctx.services.imap.run(
            ctx.account, operation, read_only=False
        )
        return result
    except IMAPError as e:
        return False, f"the original could not be marked {flag}: {e.message}"


def _sent_fields(outcome: SendOutput) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "recipients": outcome.recipients,
        "sent_folder": outcome.sent_folder,
        "sent_uid": outcome.sent_uid,
        "sent_uidvalidity": outcome.sent_uidvalidity,
        "sent_copy_filed_by_server": outcome.sent_copy_filed_by_server,
    }


def _draft_fields(outcome: DraftOutput) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "draft_folder": outcome.folder,
        "draft_uid": outcome.uid,
        "draft_uidvalidity": outcome.uidvalidity,
    }


async def _send_or_save(
    ctx: ToolContext,
    message: ComposedMessage,
    original: Original,
    *,
    draft: bool,
    idempotency_key: str | None,
    flag: str,
) -> tuple[dict[str, Any], bool, list[str]]:
    """
    The one fork between the draft path (save in Drafts, send nothing, mark
    nothing) and the send path (the shared `deliver`, then mark the
    original).  Returns the output fields, whether the original was marked,
    and warnings.
    """
    if draft:
        saved = await save_draft(ctx, message, folder=None, idempotency_key=idempotency_key)
        return _draft_fields(saved), False, []
    sent = await deliver(ctx, message, folder=None, idempotency_key=idempotency_key)
    marked, problem = await _mark(ctx, original, flag)
    return _sent_fields(sent), marked, list(sent.warnings) + ([problem] if problem else [])


def _require_sender(ctx: ToolContext, draft: bool) -> None:
    if not draft and ctx.services.smtp is None:
        raise ToolError("sending mail is not configured on this server; pass draft=true to save it")


# -- reply_mail_message -------------------------------------------------------


def reply_bodies(
    original: Original, text_body: str, html_body: str | None, *, quote: bool
) -> tuple[str, str | None]:
    """The reply's text and (when the reply or the original has HTML) HTML bodies."""
    heading = attribution(original.envelope)
    text = text_body
    if quote and original.text is not None:
        text = text_body.rstrip("\n") + "\n\n" + quote_text(original.text, heading)
    if html_body is None and not (quote and original.html is not None):
        return text, None
    mine = html_body if html_body is not None else text_to_html(text_body)
    if not quote or (original.html is None and original.text is None):
        return text, mine
    inner = original.html if original.html is not None else text_to_html(original.text or "")
    return text, append_html(mine, "<br>\n" + blockquote(heading, inner))


async def reply_mail_message(ctx: ToolContext, args: ReplyInput) -> ReplyOutput:
    _require_sender(ctx, args.draft)
    original = await _read_original(ctx, args.folder, args.uid, args.uidvalidity, bodies=args.quote)
    to, auto_cc, warnings = reply_recipients(
        original.envelope, own_addresses(ctx), reply_all=args.reply_all
    )
    try:
        extra_cc = parse_addresses("cc", args.cc)
        bcc = parse_addresses("bcc", args.bcc)
    except ComposeError as e:
        raise ToolError(str(e)) from None
    taken = {a.addr_spec.lower() for a in to}
    cc = without([*auto_cc, *extra_cc], taken)
    bcc = without(bcc, taken | {a.addr_spec.lower() for a in cc})
    if not (to or cc or bcc) and not args.draft:
        raise ToolError(
            "the original names no one to reply to (no valid Reply-To, From or, for your own "
            "message, To); pass cc or bcc, or use send_mail_message. Nothing was sent."
        )
    attachments = await user_attachments(ctx, args.attachment_urls, args.attachments)
    text, html_body = reply_bodies(original, args.text_body, args.html_body, quote=args.quote)
    if original.message_id is None:
        warnings.append("the original has no usable Message-ID, so the reply may not be threaded")
    references = reply_references(original.message_id, original.references, original.in_reply_to)
    subject = reply_subject(original.envelope.subject)
    message = _compose_or_fail(
        from_email=ctx.account.email,
        from_name=ctx.account.full_name,
        to=to,
        cc=cc,
        bcc=bcc,
        subject=subject,
        text_body=text,
        html_body=html_body,
        message_id=make_message_id(ctx.account.email, args.idempotency_key),
        date=ctx.services.reactor.seconds(),
        in_reply_to=(original.message_id,) if original.message_id else (),
        references=references,
        attachments=attachments,
        require_recipients=not args.draft,
    )
    fields, marked, more = await _send_or_save(
        ctx,
        message,
        original,
        draft=args.draft,
        idempotency_key=args.idempotency_key,
        flag="\\Answered",
    )
    return ReplyOutput(
        folder=original.folder,
        uid=original.uid,
        uidvalidity=original.uidvalidity,
        message_id=message.message_id,
        subject=subject,
        to=_addresses_shown(to),
        cc=_addresses_shown(cc),
        bcc=_addresses_shown(bcc),
        in_reply_to=original.message_id,
        references=list(references),
        marked_answered=marked,
        warnings=[*original.warnings, *warnings, *more],
        **fields,
    )


def _scopes_for(args: _ConversationInput) -> frozenset[str]:
    """A reply or forward that only saves a draft needs mail.draft; one that sends, mail.send."""
    return frozenset({DRAFT}) if args.draft else frozenset({SEND})


REPLY_MAIL_MESSAGE: Tool[ReplyInput, ReplyOutput] = Tool(
    name="reply_mail_message",
    title="Reply to email",
    description=(
        "Reply to one message (folder + uid). The server builds the reply from the original: "
        "recipients from Reply-To or From (reply_all adds the original To and Cc, never the "
        "user), In-Reply-To/References so it stays in the conversation, one 'Re:' subject "
        "prefix, and the original quoted below text_body (quote=false leaves it out). After "
        "sending, the original is marked \\Answered. draft=true only saves the reply in Drafts "
        "for the user to review, sending nothing. Same sending rules as send_mail_message "
        "(rate limit, idempotency_key, sent copy in Sent)."
    ),
    input_model=ReplyInput,
    output_model=ReplyOutput,
    handler=reply_mail_message,
    scopes=frozenset({DRAFT, SEND}),
    scopes_for=_scopes_for,
    read_only=False,
    destructive=False,
    idempotent=False,
    open_world=True,
)


# -- forward_mail_message -----------------------------------------------------


def forward_block(envelope: Envelope) -> list[tuple[str, str]]:
    """The header lines under the "Forwarded message" separator."""
    rows = [("From", ", ".join(_show(a) for a in envelope.from_))]
    date = _mime.clean_line(envelope.date, 200)
    if date:
        rows.append(("Date", date))
    rows.append(("Subject", " ".join((_mime.clean_line(envelope.subject, 998) or "").split())))
    rows.append(("To", ", ".join(_show(a) for a in envelope.to if a.email)))
    cc = ", ".join(_show(a) for a in envelope.cc if a.email)
    if cc:
        rows.append(("Cc", cc))
    return rows


def forward_bodies(original: Original, text_body: str) -> tuple[str, str | None]:
    """The forward's text (note, separator, header block, original) and HTML when the original has it."""
    rows = forward_block(original.envelope)
    note = text_body.rstrip("\n") + "\n\n" if text_body.strip() else ""
    block = "\n".join([FORWARD_SEPARATOR, *(f"{k}: {v}" for k, v in rows)])
    text = f"{note}{block}\n\n{original.text or ''}".rstrip("\n") + "\n"
    if original.html is None:
        return text, None
    head = "<br>\n".join(
        [html.escape(FORWARD_SEPARATOR)]
        + [f"<b>{k}:</b> {html.escape(v, quote=False)}" for k, v in rows]
    )
    mine = text_to_html(text_body) + "<br><br>\n" if text_body.strip() else ""
    return text, f'{mine}<div class="mailmcp-forward">{head}<br><br>\n{original.html}</div>'


def _eml_name(subject: str | None) -> str:
    from ..attachments._common import sanitise_filename

    stem = " ".join((_mime.clean_line(subject, 150) or "").split()) or "message"
    return sanitise_filename(f"{stem}.eml", "message.eml")


async def forward_mail_message(ctx: ToolContext, args: ForwardInput) -> ForwardOutput:
    _require_sender(ctx, args.draft)
    original = await _read_original(
        ctx,
        args.folder,
        args.uid,
        args.uidvalidity,
        bodies=not args.as_attachment,
        attachments=args.include_attachments and not args.as_attachment,
        raw=args.as_attachment,
    )
    try:
        to = without(parse_addresses("to", args.to))
        cc = without(parse_addresses("cc", args.cc), {a.addr_spec.lower() for a in to})
        bcc = without(parse_addresses("bcc", args.bcc), {a.addr_spec.lower() for a in [*to, *cc]})
    except ComposeError as e:
        raise ToolError(str(e)) from None
    if args.as_attachment:
        assert original.raw is not None
        text, html_body = args.text_body, None
        carried = [
            OutgoingAttachment(original.raw, _eml_name(original.envelope.subject), "message/rfc822")
        ]
    else:
        text, html_body = forward_bodies(original, args.text_body)
        carried = list(original.attachments)
    attachments = await user_attachments(ctx, (), (), more=carried)
    subject = forward_subject(original.envelope.subject)
    message = _compose_or_fail(
        from_email=ctx.account.email,
        from_name=ctx.account.full_name,
        to=to,
        cc=cc,
        bcc=bcc,
        subject=subject,
        text_body=text,
        html_body=html_body,
        message_id=make_message_id(ctx.account.email, args.idempotency_key),
        date=ctx.services.reactor.seconds(),
        attachments=attachments,
        require_recipients=not args.draft,
    )
    fields, marked, more = await _send_or_save(
        ctx,
        message,
        original,
        draft=args.draft,
        idempotency_key=args.idempotency_key,
        flag=FORWARDED_KEYWORD,
    )
    return ForwardOutput(
        folder=original.folder,
        uid=original.uid,
        uidvalidity=original.uidvalidity,
        message_id=message.message_id,
        subject=subject,
        to=_addresses_shown(to),
        cc=_addresses_shown(cc),
        bcc=_addresses_shown(bcc),
        as_attachment=args.as_attachment,
        forwarded_attachments=[a.filename for a in carried],
        marked_forwarded=marked,
        warnings=[*original.warnings, *more],
        **fields,
    )


FORWARD_MAIL_MESSAGE: Tool[ForwardInput, ForwardOutput] = Tool(
    name="forward_mail_message",
    title="Forward email",
    description=(
        "Forward one message (folder + uid) to to/cc/bcc, with text_body written above it. By "
        "default the original is quoted inline under a 'Forwarded message' header block and "
        "its attachments are re-attached (include_attachments=false leaves them out); "
        "as_attachment=true attaches the whole original unchanged instead. Subject gets one "
        "'Fwd:' prefix. After sending, the original gets the $Forwarded keyword where the "
        "folder allows it. draft=true only saves the forward in Drafts, sending nothing. Same "
        "sending rules as send_mail_message."
    ),
    input_model=ForwardInput,
    output_model=ForwardOutput,
    handler=forward_mail_message,
    scopes=frozenset({DRAFT, SEND}),
    scopes_for=_scopes_for,
    read_only=False,
    destructive=False,
    idempotent=False,
    open_world=True,
)


TOOLS = [REPLY_MAIL_MESSAGE, FORWARD_MAIL_MESSAGE]
