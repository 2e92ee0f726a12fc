"""
Unit tests of the writing tools' logic against the in-memory IMAP fake
(`mailmcp.testing`), extended here with working write commands, and a fake
SMTP sender with scripted outcomes.  The fake records every command, so each
test asserts exactly what was (and was not) done.
"""

from __future__ import annotations

import base64
import email
from email import policy
from typing import Any

import attrs
import pytest
from pydantic import ValidationError
from twisted.internet.task import Clock

from mailmcp._toolkit import ToolContext, ToolError
from mailmcp.attachments._common import Limits
from mailmcp.mail._mailbox_api import MailboxState
from mailmcp.mail._smtp import RecipientResult, SMTPOutcomeUnknown, SMTPSendFailed
from mailmcp.testing import (
    FakeIMAPPool,
    make_account,
    tool_services,
)
from mailmcp.tools._writing import (
    CREATE_DRAFT_MAIL_MESSAGE,
    DELETE_MAIL_MESSAGE,
    MOVE_MAIL_MESSAGE,
    SEND_MAIL_MESSAGE,
    TOOLS,
    UNKNOWN_OUTCOME_KEYWORD,
    UPDATE_MAIL_MESSAGE_FLAGS,
    DeleteInput,
    DraftInput,
    FlagsInput,
    MoveInput,
    SendInput,
)
from tests.helpers import run
from tests.unit.writable_imap import FakeSender, WritableServer, commands

SAMPLE = b"From: x@example.test\r\nSubject: sample\r\nMessage-ID: <s@example.test>\r\n\r\nbody\r\n"


@pytest.fixture
def server() -> WritableServer:
    s = WritableServer()
    s.mailbox("INBOX")
    s.mailbox("Drafts", "\\Drafts")
    s.mailbox("Sent", "\\Sent")
    s.mailbox("Trash", "\\Trash")
    s.mailbox("Archive", "\\Archive")
    return s


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender()


@pytest.fixture
def ctx(server: WritableServer, sender: FakeSender) -> ToolContext:
    clock = Clock()
    clock.advance(1_700_000_000)
    services = tool_services(reactor=clock, imap=FakeIMAPPool(server), smtp=sender)
    return ToolContext(account=make_account(full_name="Alice Example"), services=services)


# -- send --------------------------------------------------------------------


def test_send_delivers_without_bcc_and_files_the_copy_in_sent(
    ctx: ToolContext, server: WritableServer, sender: FakeSender
) -> None:
    """
    The wire bytes carry no Bcc header while every recipient is in the
    envelope; the Sent copy is the wire bytes plus the Bcc header, flagged
    \\Seen; the result reports each recipient and the copy's UID.
    """
    args = SendInput(to="Bob <bob@example.test>", cc=["carol@example.test"], bcc=["dave@example.test"],
                     subject="Grüße", text_body="hello\n.\nworld")
    result = run(SEND_MAIL_MESSAGE.handler(ctx, args))
    assert result.status == "sent"
    [(envelope_from, recipients, wire)] = sender.sent
    assert envelope_from == "alice@example.test"
    assert recipients == ("bob@example.test", "carol@example.test", "dave@example.test")
    assert b"dave@example.test" not in wire and b"Bcc" not in wire
    parsed = email.message_from_bytes(wire, policy=policy.default)
    assert parsed["From"] == "Alice Example <alice@example.test>"
    assert parsed["Subject"] == "Grüße"
    assert parsed["Message-ID"] == result.message_id
    assert parsed["Date"]
    [copy] = server.mailboxes["Sent"].messages
    assert copy.uid == result.sent_uid and result.sent_folder == "Sent"
    assert copy.flags == {"\\Seen"}
    assert copy.raw.replace(b"Bcc: dave@example.test\r\n", b"") == wire
    assert [r.address for r in result.recipients if r.accepted] == list(recipients)
    assert result.warnings == []


def test_send_without_bcc_files_exactly_the_wire_bytes(
    ctx: ToolContext, server: WritableServer, sender: FakeSender
) -> None:
    """With no Bcc, the Sent copy is byte-for-byte what went over SMTP."""
    run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", subject="x", text_body="y",
                                                 html_body="<p>y</p>")))
    assert server.mailboxes["Sent"].messages[0].raw == sender.sent[0][2]


def test_send_falls_back_to_a_folder_named_sent_items(ctx: ToolContext, server: WritableServer) -> None:
    """Without a \\Sent special-use folder, a folder named "Sent Items" is used."""
    del server.mailboxes["Sent"]
    server.mailbox("Sent Items")
    result = run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", subject="x")))
    assert result.sent_folder == "Sent Items"
    assert len(server.mailboxes["Sent Items"].messages) == 1


def test_failed_sent_append_is_a_warning(ctx: ToolContext, server: WritableServer, sender: FakeSender) -> None:
    """The mail left; an APPEND refused by the server only adds a warning (SM-08)."""
    server.refuse_append.add("Sent")
    result = run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", subject="x")))
    assert result.status == "sent"
    assert result.sent_uid is None
    assert any("not saved to Sent" in w and "OVERQUOTA" in w for w in result.warnings)
    assert len(sender.sent) == 1


def test_idempotency_key_prevents_a_second_send(ctx: ToolContext, server: WritableServer,
                                                sender: FakeSender) -> None:
    """
    The same idempotency_key gives the same Message-ID; the retry finds it in
    Sent with UID SEARCH HEADER Message-ID and sends nothing (SM-11).
    """
    args = SendInput(to="bob@example.test", subject="x", idempotency_key="order-42")
    first = run(SEND_MAIL_MESSAGE.handler(ctx, args))
    second = run(SEND_MAIL_MESSAGE.handler(ctx, args))
    assert first.status == "sent" and second.status == "already_sent"
    assert first.message_id == second.message_id
    assert second.sent_uid == first.sent_uid
    assert len(sender.sent) == 1
    searches = commands(server, "UID SEARCH")
    assert searches and all(c[1][:2] == (b"HEADER", b"Message-ID") for c in searches)


def test_different_idempotency_keys_send_separately(ctx: ToolContext, sender: FakeSender) -> None:
    """Different keys are different messages."""
    run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", idempotency_key="a")))
    run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", idempotency_key="b")))
    assert len(sender.sent) == 2


def test_unknown_outcome_is_reported_never_retried_and_blocks_a_keyed_retry(
    ctx: ToolContext, server: WritableServer, sender: FakeSender
) -> None:
    """
    Connection lost after DATA: an isError "unknown" result with the
    Message-ID, no draft, one send only; the copy is filed in Sent with a
    marker keyword, so a retry with the same key does not send (SM-05, SM-11).
    """
    sender.outcome = SMTPOutcomeUnknown("the connection was lost after the whole message was sent: "
                                        "delivery status unknown.", stage="after-data")
    args = SendInput(to="bob@example.test", subject="x", idempotency_key="k1")
    with pytest.raises(ToolError) as info:
        run(SEND_MAIL_MESSAGE.handler(ctx, args))
    assert "unknown" in info.value.message and "<mailmcp.k." in info.value.message
    assert len(sender.sent) == 1
    assert server.mailboxes["Drafts"].messages == []
    [copy] = server.mailboxes["Sent"].messages
    assert UNKNOWN_OUTCOME_KEYWORD in copy.flags
    sender.outcome = None
    again = run(SEND_MAIL_MESSAGE.handler(ctx, args))
    assert again.status == "already_sent"
    assert any("unknown delivery status" in w for w in again.warnings)
    assert len(sender.sent) == 1


def test_definite_failure_keeps_the_message_in_drafts(
    ctx: ToolContext, server: WritableServer, sender: FakeSender
) -> None:
    """A refused send is an error saying so, and the composed message is in Drafts with \\Draft (SM-01/03)."""
    sender.outcome = SMTPSendFailed(
        "the SMTP server refused recipients, nothing was sent: nobody@example.test (550 no such user)",
        stage="envelope", code=550,
        recipients=(RecipientResult("bob@example.test", 250, "ok"),
                    RecipientResult("nobody@example.test", 550, "no such user")),
    )
    with pytest.raises(ToolError) as info:
        run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to=["bob@example.test", "nobody@example.test"],
                                                     bcc="dave@example.test", subject="x")))
    text = info.value.message
    assert text.startswith("Not sent:") and "nobody@example.test (550)" in text and "'Drafts'" in text
    [draft] = server.mailboxes["Drafts"].messages
    assert draft.flags == {"\\Draft", "\\Seen"}
    assert b"Bcc: dave@example.test" in draft.raw
    assert server.mailboxes["Sent"].messages == []


def test_attachment_urls_refused_without_any_request(ctx: ToolContext, server: WritableServer,
                                                     sender: FakeSender) -> None:
    """Without the attachment store, any URL is refused before IMAP or SMTP is touched (TL-A1)."""
    for url in ("http://169.254.169.254/latest/meta-data/", "file:///etc/passwd"):
        with pytest.raises(ToolError) as info:
            run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", attachment_urls=[url])))
        assert "attachment_urls must be links issued by this server" in info.value.message
    assert sender.sent == [] and server.commands == []


def test_attachment_urls_resolved_through_the_store(ctx: ToolContext, sender: FakeSender) -> None:
    """Links the store accepts are attached with their filename and type; nothing is fetched."""
    from mailmcp.attachments._common import AttachmentRefused, ResolvedAttachment

    class Store:
        limits = None

        def check(self, owner: str, url: str) -> None:
            if not url.startswith("https://mcp.example/attachments/ok"):
                raise AttachmentRefused("not a link issued by this server")

        async def resolve(self, owner: str, url: str) -> ResolvedAttachment:
            return ResolvedAttachment(b"%PDF-1.4 fake", "report.pdf", "application/pdf")

    services = attrs.evolve(ctx.services, attachments=Store())
    ctx2 = ToolContext(account=ctx.account, services=services)
    run(SEND_MAIL_MESSAGE.handler(ctx2, SendInput(to="bob@example.test",
                                                  attachment_urls=["https://mcp.example/attachments/ok1"])))
    parsed = email.message_from_bytes(sender.sent[0][2], policy=policy.default)
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_content() == b"%PDF-1.4 fake"
    # send resolves through the same, tested resolver as every tool: it names the bad URL.
    with pytest.raises(ToolError, match=r"attachment_urls\[1\]: not a link issued"):
        run(SEND_MAIL_MESSAGE.handler(ctx2, SendInput(to="bob@example.test",
                                                      attachment_urls=["https://mcp.example/attachments/ok1",
                                                                       "http://127.0.0.1/"])))
    assert len(sender.sent) == 1


def test_inline_base64_attachments_are_attached(ctx: ToolContext, sender: FakeSender) -> None:
    """Inline base64 attachments arrive byte-exact with their filename and type, no store needed."""
    payload = bytes(range(256)) * 4
    inline = {"filename": "données.bin", "content_type": "application/octet-stream",
              "content_base64": base64.b64encode(payload).decode()}
    run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to="bob@example.test", attachments=[inline])))
    parsed = email.message_from_bytes(sender.sent[0][2], policy=policy.default)
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == "données.bin"
    assert attachment.get_content() == payload


@pytest.mark.parametrize("inline,reason", [
    ({"filename": "a.bin", "content_base64": "not base64!"}, "not valid base64"),
    ({"filename": "a.bin", "content_base64": "QUJD"}, None),
    ({"filename": "big.bin", "content_base64": base64.b64encode(b"x" * 3000).decode()}, "cap"),
])
def test_inline_attachments_checked_before_anything_is_sent(
    ctx: ToolContext, server: WritableServer, sender: FakeSender, inline: dict[str, str], reason: str | None
) -> None:
    """Bad base64 or an attachment over the cap is a clear ToolError and nothing is sent or saved."""
    limits = Limits(max_attachment_bytes=2048, max_message_bytes=4096)
    ctx2 = ToolContext(account=ctx.account, services=attrs.evolve(ctx.services, limits=limits))
    if reason is None:
        run(SEND_MAIL_MESSAGE.handler(ctx2, SendInput(to="bob@example.test", attachments=[inline])))
        assert len(sender.sent) == 1
        return
    with pytest.raises(ToolError, match=reason):
        run(SEND_MAIL_MESSAGE.handler(ctx2, SendInput(to="bob@example.test", attachments=[inline])))
    assert sender.sent == [] and commands(server, "APPEND") == []


def test_inline_attachment_fields_are_validated() -> None:
    """A filename with a line break or a malformed content type is invalid input."""
    with pytest.raises(ValueError):
        SendInput(to="bob@example.test", attachments=[{"filename": "a\r\nb", "content_base64": ""}])
    with pytest.raises(ValueError):
        SendInput(to="bob@example.test", attachments=[{"filename": "a", "content_type": "text/html; x",
                                                       "content_base64": ""}])


@pytest.mark.parametrize("field,value", [
    ("to", "a@x.test\r\nRCPT TO:<x@evil.test>"),
    ("to", "Bob\r\n <bob@example.test>"),
    ("to", "a@b@c"),
    ("to", "undisclosed-recipients:;"),
    ("subject", "hi\r\nBcc: evil@x.test"),
    ("subject", "nul\x00"),
    ("subject", "x" * 2000),
    ("cc", "carol@example.test\n"),
    ("in_reply_to", "<a@b>\r\nBcc: e@x"),
    ("text_body", "nul \x00 byte"),
])
def test_header_injection_inputs_are_invalid_params(field: str, value: str) -> None:
    """Control characters or malformed values in any header field are input errors (TL-T1, TL-T2)."""
    base: dict[str, Any] = {"to": "bob@example.test"}
    base[field] = value
    with pytest.raises(ValidationError):
        SendInput(**base)


def test_too_many_recipients_in_one_string_is_an_error(ctx: ToolContext, sender: FakeSender) -> None:
    """More than 50 recipients, even packed in one comma-separated string, is refused before sending."""
    many = ", ".join(f"u{i}@example.test" for i in range(51))
    with pytest.raises(ToolError):
        run(SEND_MAIL_MESSAGE.handler(ctx, SendInput(to=many)))
    assert sender.sent == []


def test_send_requires_a_recipient() -> None:
    """A send without any recipient is an input error."""
    with pytest.raises(ValidationError):
        SendInput(subject="x")


# -- drafts ------------------------------------------------------------------


def test_draft_is_appended_to_drafts_with_draft_flag(ctx: ToolContext, server: WritableServer) -> None:
    """A draft goes to the \\Drafts folder, flagged \\Draft \\Seen, and the new UID is returned."""
    result = run(CREATE_DRAFT_MAIL_MESSAGE.handler(ctx, DraftInput(to="bob@example.test", bcc="dave@example.test",
                                                                   subject="plan")))
    [draft] = server.mailboxes["Drafts"].messages
    assert result.folder == "Drafts" and result.uid == draft.uid
    assert result.uidvalidity == server.mailboxes["Drafts"].uidvalidity
    assert draft.flags == {"\\Draft", "\\Seen"}
    assert b"Bcc: dave@example.test" in draft.raw
    assert commands(server, "APPEND") == [("APPEND", "Drafts", ("\\Draft", "\\Seen"))]


def test_draft_without_recipients_is_fine(ctx: ToolContext, server: WritableServer) -> None:
    """Drafts may have no recipients yet."""
    result = run(CREATE_DRAFT_MAIL_MESSAGE.handler(ctx, DraftInput(subject="idea", text_body="later")))
    assert result.status == "saved"


def test_draft_with_idempotency_key_is_saved_once(ctx: ToolContext, server: WritableServer) -> None:
    """Repeating a draft with the same key reports the first draft instead of adding another."""
    args = DraftInput(subject="idea", idempotency_key="d1")
    first = run(CREATE_DRAFT_MAIL_MESSAGE.handler(ctx, args))
    second = run(CREATE_DRAFT_MAIL_MESSAGE.handler(ctx, args))
    assert second.status == "already_saved" and second.uid == first.uid
    assert len(server.mailboxes["Drafts"].messages) == 1


# -- delete ------------------------------------------------------------------


def test_delete_moves_to_trash_by_default(ctx: ToolContext, server: WritableServer) -> None:
    """Default delete is a UID MOVE to the \\Trash folder; no flag, no expunge."""
    uid = server.mailboxes["INBOX"].add(SAMPLE)
    result = run(DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="INBOX", uid=uid)))
    assert result.action == "moved_to_trash" and result.trash_folder == "Trash"
    assert result.trash_uid == server.mailboxes["Trash"].messages[0].uid
    assert server.mailboxes["INBOX"].messages == []
    assert not commands(server, "UID EXPUNGE", "UID STORE")


def test_permanent_delete_expunges_only_the_target(ctx: ToolContext, server: WritableServer) -> None:
    """
    permanent=true flags and UID EXPUNGEs only the target; another client's
    \\Deleted-flagged message in the same folder survives (TL-D1).
    """
    inbox = server.mailboxes["INBOX"]
    other = inbox.add(SAMPLE, {"\\Deleted"})
    target = inbox.add(SAMPLE)
    result = run(DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="INBOX", uid=target, permanent=True)))
    assert result.action == "deleted_permanently"
    assert [m.uid for m in inbox.messages] == [other]
    assert commands(server, "UID STORE") == [("UID STORE", (target,), "+FLAGS", ("\\Deleted",))]
    assert commands(server, "UID EXPUNGE") == [("UID EXPUNGE", (target,))]
    assert not commands(server, "EXPUNGE")


def test_delete_in_trash_is_permanent(ctx: ToolContext, server: WritableServer) -> None:
    """Deleting from Trash deletes for good (there is nowhere further to move it)."""
    uid = server.mailboxes["Trash"].add(SAMPLE)
    result = run(DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="Trash", uid=uid)))
    assert result.action == "deleted_permanently"
    assert server.mailboxes["Trash"].messages == []


def test_permanent_delete_without_uidplus_is_refused(ctx: ToolContext, server: WritableServer) -> None:
    """Without UIDPLUS the tool refuses rather than risk a bare EXPUNGE (TL-D2); nothing is flagged."""
    server.caps = frozenset({"IMAP4REV1", "MOVE"})
    inbox = server.mailboxes["INBOX"]
    uid = inbox.add(SAMPLE)
    with pytest.raises(ToolError) as info:
        run(DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="INBOX", uid=uid, permanent=True)))
    assert "UIDPLUS" in info.value.message
    assert not commands(server, "UID STORE", "UID EXPUNGE")
    assert inbox.messages[0].flags == set()


def test_delete_missing_uid_changes_nothing(ctx: ToolContext, server: WritableServer) -> None:
    """A UID that does not exist is 'not found', with no store and no expunge (TL-D3)."""
    server.mailboxes["INBOX"].add(SAMPLE)
    with pytest.raises(ToolError) as info:
        run(DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="INBOX", uid=99, permanent=True)))
    assert "not found" in info.value.message
    assert not commands(server, "UID STORE", "UID EXPUNGE", "UID MOVE")


def test_stale_uidvalidity_is_refused(ctx: ToolContext, server: WritableServer) -> None:
    """A UIDVALIDITY that no longer matches refuses every mutation (TL-U2)."""
    uid = server.mailboxes["INBOX"].add(SAMPLE)
    stale = server.mailboxes["INBOX"].uidvalidity + 1
    for tool, args in [
        (DELETE_MAIL_MESSAGE, DeleteInput(folder="INBOX", uid=uid, uidvalidity=stale)),
        (MOVE_MAIL_MESSAGE, MoveInput(folder="INBOX", uid=uid, destination="Archive", uidvalidity=stale)),
        (UPDATE_MAIL_MESSAGE_FLAGS, FlagsInput(folder="INBOX", uid=uid, add=["\\Seen"], uidvalidity=stale)),
    ]:
        with pytest.raises(ToolError) as info:
            run(tool.handler(ctx, args))  # type: ignore[arg-type]
        assert "stale" in info.value.message
    assert not commands(server, "UID STORE", "UID EXPUNGE", "UID MOVE")


def test_delete_missing_folder_is_clear(ctx: ToolContext) -> None:
    """A folder that does not exist says so and points at list_mailboxes (TL-F2)."""
    with pytest.raises(ToolError) as info:
        run(DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="Nope", uid=1)))
    assert "list_mailboxes" in info.value.message


# -- move --------------------------------------------------------------------


def test_move_returns_the_destination_uid(ctx: ToolContext, server: WritableServer) -> None:
    """A move reports the UID in the destination (COPYUID) and its UIDVALIDITY."""
    server.mailboxes["Archive"].add(SAMPLE)
    uid = server.mailboxes["INBOX"].add(SAMPLE)
    result = run(MOVE_MAIL_MESSAGE.handler(ctx, MoveInput(folder="INBOX", uid=uid, destination="Archive")))
    assert result.destination_uid == server.mailboxes["Archive"].messages[-1].uid == 2
    assert result.destination_uidvalidity == server.mailboxes["Archive"].uidvalidity
    assert server.mailboxes["INBOX"].messages == []


def test_move_to_missing_or_same_folder_is_refused(ctx: ToolContext, server: WritableServer) -> None:
    """A missing destination, or the source itself, is a clear error with nothing moved (TL-M1)."""
    uid = server.mailboxes["INBOX"].add(SAMPLE)
    for destination in ("Nowhere", "INBOX", "inbox"):
        with pytest.raises(ToolError):
            run(MOVE_MAIL_MESSAGE.handler(ctx, MoveInput(folder="INBOX", uid=uid, destination=destination)))
    assert not commands(server, "UID MOVE")


# -- flags -------------------------------------------------------------------


def test_flags_added_and_removed(ctx: ToolContext, server: WritableServer) -> None:
    """Allowed system flags and keywords are stored; the result shows the flags after the change."""
    uid = server.mailboxes["INBOX"].add(SAMPLE, {"\\Flagged"})
    result = run(UPDATE_MAIL_MESSAGE_FLAGS.handler(
        ctx, FlagsInput(folder="INBOX", uid=uid, add=["\\seen", "$Important"], remove=["\\Flagged"])))
    assert set(result.flags) == {"\\Seen", "$Important"}
    assert commands(server, "UID STORE") == [
        ("UID STORE", (uid,), "+FLAGS", ("\\Seen", "$Important")),
        ("UID STORE", (uid,), "-FLAGS", ("\\Flagged",)),
    ]


@pytest.mark.parametrize("flags", [["\\Deleted"], ["\\Recent"], ["\\Seen)\r\nX EXPUNGE"], ["a b"],
                                   ["x{5}"], ["*"], ["ok"] * 21, ["é"]])
def test_bad_flags_are_invalid_params(flags: list[str]) -> None:
    """\\Deleted, unknown system flags, injection attempts and non-atoms are input errors (TL-G1)."""
    with pytest.raises(ValidationError):
        FlagsInput(folder="INBOX", uid=1, add=flags)


@pytest.mark.parametrize("uid", ["5", "1:*", "1,2", -1, 0, 4294967296, 1.5, True, None, [1]])
def test_bad_uids_are_invalid_params(uid: Any) -> None:
    """UIDs must be JSON integers 1..4294967295, never strings, sets or booleans (TL-U1)."""
    with pytest.raises(ValidationError):
        DeleteInput(folder="INBOX", uid=uid)


@pytest.mark.parametrize("folder", ["", "INBOX\r\nX DELETE Trash", "a\x00b", "x" * 1001])
def test_bad_folders_are_invalid_params(folder: str) -> None:
    """Empty, over-long or control-character folder names are input errors (TL-F1)."""
    with pytest.raises(ValidationError):
        MoveInput(folder=folder, uid=1, destination="Archive")


def test_annotations_are_honest() -> None:
    """
    send/delete/move are destructive (a sent message cannot be called back);
    flags idempotent and not destructive; drafts only add; send is
    open-world and not idempotent.
    """
    by_name = {t.name: t.annotations() for t in TOOLS}
    assert by_name["send_mail_message"]["openWorldHint"] is True
    assert by_name["send_mail_message"]["idempotentHint"] is False
    assert by_name["send_mail_message"]["destructiveHint"] is True
    assert by_name["create_draft_mail_message"]["destructiveHint"] is False
    assert by_name["delete_mail_message"]["destructiveHint"] is True
    assert by_name["move_mail_message"]["destructiveHint"] is True
    assert by_name["update_mail_message_flags"]["idempotentHint"] is True
    assert by_name["update_mail_message_flags"]["destructiveHint"] is False
    assert all(a["readOnlyHint"] is False for a in by_name.values())


def test_tool_names_and_params_match_the_contract() -> None:
    """The seed's names and parameters (README.rst, Tools) are all there."""
    params = {t.name: set(t.input_model.model_fields) for t in TOOLS}
    compose_params = {"to", "subject", "text_body", "cc", "bcc", "html_body", "attachment_urls", "attachments",
                      "folder"}
    assert compose_params <= params["send_mail_message"]
    assert compose_params <= params["create_draft_mail_message"]
    assert {"folder", "uid"} <= params["delete_mail_message"]
    assert {"folder", "uid", "destination"} <= params["move_mail_message"]
    assert {"folder", "uid", "add", "remove"} <= params["update_mail_message_flags"]


def test_unused_state_helper() -> None:
    """MailboxState is what the fake hands back on SELECT (sanity check of the fixture)."""
    server = WritableServer()
    server.mailbox("INBOX")
    state = run(server.session().select("INBOX"))
    assert isinstance(state, MailboxState) and not state.read_only
