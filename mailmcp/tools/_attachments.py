"""
``get_mail_attachment_link``: a fresh, short-lived download link for one
attachment, minted on demand so links never need to live long (S-15).

Only the one MIME part is read from IMAP (``BODY.PEEK``, so ``\\Seen`` is
untouched), stored content-addressed for the caller (reading it again
uploads nothing), and linked.  Small text attachments can be returned
inline, so the model can read them without a download.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .._scopes import READ
from .._toolkit import Tool, ToolContext, ToolError, imap_tool_error
from ..attachments._helpers import INLINE_TEXT_MAX, PART_PATTERN, PartLink, link_part
from ..mail._mailbox_api import IMAPError, IMAPSession


class AttachmentLinkInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    folder: str = Field(
        min_length=1, max_length=1000, description="Folder holding the message, e.g. INBOX."
    )
    uid: int = Field(ge=1, le=4294967295, description="IMAP UID of the message.")
    part: str = Field(
        pattern=PART_PATTERN,
        max_length=80,
        description="MIME part number of the attachment, as listed by get_mail_message (e.g. 2 or 1.2).",
    )
    uidvalidity: int | None = Field(
        default=None,
        ge=1,
        description="The folder's UIDVALIDITY from get_mail_message; refuses a stale UID.",
    )
    inline_text: bool = Field(
        default=False,
        description=f"For text attachments, also return the text itself (up to {INLINE_TEXT_MAX} characters).",
    )
    lifetime: int | None = Field(
        default=None,
        ge=60,
        description="Link lifetime in seconds (capped by the server's maximum).",
    )


class AttachmentLinkOutput(BaseModel):
    folder: str
    uid: int
    uidvalidity: int
    part: str
    filename: str
    content_type: str
    size: int
    sha256: str | None
    url: str | None = Field(description="Download link; null when storage failed (see error).")
    expires_at: str | None
    error: str | None = None
    text: str | None = Field(
        default=None, description="The attachment's text when inline_text was asked for."
    )
    text_truncated: bool = False


def _inline(linked: PartLink) -> tuple[str | None, bool]:
    part = linked.part
    if not part.content_type.startswith("text/"):
        return None, False
    charset = part.charset or "utf-8"
    try:
        text = part.data.decode(charset, errors="replace")
    except LookupError:
        text = part.data.decode("utf-8", errors="replace")
    if len(text) > INLINE_TEXT_MAX:
        return text[:INLINE_TEXT_MAX], True
    return text, False


async def get_mail_attachment_link(
    ctx: ToolContext, args: AttachmentLinkInput
) -> AttachmentLinkOutput:
    async def operation(session: IMAPSession) -> tuple[int, PartLink]:
        state = await session.examine(args.folder)
        if args.uidvalidity is not None and args.uidvalidity != state.uidvalidity:
            raise ToolError(
                f"folder {args.folder!r} changed (UIDVALIDITY is now {state.uidvalidity}): "
                "list the messages again to get current UIDs"
            )
        return state.uidvalidity, await link_part(ctx, session, args.uid, args.part, args.lifetime)

    try:
        uidvalidity, linked = await ctx.services.imap.run(ctx.account, operation, read_only=True)
    except IMAPError as e:
        raise imap_tool_error(e, args.folder) from None
    text, truncated = _inline(linked) if args.inline_text else (None, False)
    if linked.url is None and text is None:
        raise ToolError(linked.error or "attachment storage is unavailable")
    return AttachmentLinkOutput(
        folder=args.folder,
        uid=args.uid,
        uidvalidity=uidvalidity,
        part=args.part,
        filename=linked.part.filename,
        content_type=linked.part.content_type,
        size=linked.size,
        sha256=linked.sha256,
        url=linked.url,
        expires_at=linked.expires_at,
        error=linked.error,
        text=text,
        text_truncated=truncated,
    )


GET_MAIL_ATTACHMENT_LINK: Tool[AttachmentLinkInput, AttachmentLinkOutput] = Tool(
    name="get_mail_attachment_link",
    title="Get attachment link",
    description=(
        "Get a fresh, short-lived download link for one attachment of a message "
        "(its part number comes from get_mail_message). The link can be passed to "
        "send_mail_message / create_draft_mail_message attachment_urls to forward the "
        "attachment. With inline_text, small text attachments are returned as text too."
    ),
    input_model=AttachmentLinkInput,
    output_model=AttachmentLinkOutput,
    handler=get_mail_attachment_link,
    scopes=frozenset({READ}),
    # It publishes the attachment behind a bearer link, so not "read-only"
    # even though the mailbox is untouched (docs/threat-model.rst, S-15).
    read_only=False,
    destructive=False,
    idempotent=True,
    # Like get_mail_message it hands back content from outside senders
    # (inline_text), and the link it makes is reachable by whoever holds it.
    open_world=True,
)

TOOLS = [GET_MAIL_ATTACHMENT_LINK]
