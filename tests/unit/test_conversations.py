"""
Issue 16 part B without sockets: the session's THREAD / RENAME / ENABLE
QRESYNC / CHANGEDSINCE commands against a scripted wire (StringTransport,
Clock), the folder state codec, and the tools' fallbacks on the in-memory
fake server (which has no THREAD, CONDSTORE or QRESYNC).
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from typing import Any

import pytest

from mailmcp._toolkit import ToolContext, ToolError
from mailmcp.mail._mailbox_api import IMAPError
from mailmcp.mail._untrusted import unmark_body
from mailmcp.testing import FakeIMAPPool, FakeIMAPServer, make_account, tool_services
from mailmcp.testing import _imap as _fake_imap
from mailmcp.tools import _state, all_tools
from mailmcp.tools._changes import MailboxChangesInput, get_mailbox_changes
from mailmcp.tools._folders import (
    CreateMailboxInput,
    DeleteMailboxInput,
    RenameMailboxInput,
    create_mailbox,
    delete_mailbox,
    rename_mailbox,
)
from mailmcp.tools._reading import ListMessagesInput, list_mail_messages
from mailmcp.tools._threads import ThreadInput, get_mail_thread, header_criteria
from tests.helpers import run
from tests.unit.imap_wire import CAPS, logged_in, opened, result_of
from tests.unit.imap_wire import run as start

QRESYNC_CAPS = CAPS + b" CONDSTORE QRESYNC ENABLE UNSELECT THREAD=REFERENCES"


def opened_q(exists: int = 3) -> Any:
    """A logged-in session on a CONDSTORE/QRESYNC/THREAD server with INBOX selected."""
    wire = logged_in(QRESYNC_CAPS)
    d = start(wire.session.select("INBOX"))
    assert wire.sent() == b'0002 SELECT "INBOX" (CONDSTORE)\r\n'
    wire.server(b"* %d EXISTS\r\n* OK [UIDVALIDITY 5] x\r\n* OK [UIDNEXT 42] x\r\n"
                b"* OK [HIGHESTMODSEQ 70] x\r\n" % exists)
    wire.ok(b"[READ-WRITE] done")
    assert result_of(d).highest_modseq == 70
    return wire


# -- the session's new commands on a scripted wire ---------------------------------


def test_thread_references_flattens_each_tree() -> None:
    """UID THREAD REFERENCES UTF-8: one list of UIDs per thread, nested branches included."""
    wire = opened_q()
    d = start(wire.session.uid_thread_references([b"ALL"]))
    assert wire.sent() == b"0003 UID THREAD REFERENCES UTF-8 ALL\r\n"
    wire.server(b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\n")
    wire.ok()
    assert result_of(d) == [[2], [3, 6, 4, 23, 44, 7, 96]]


@pytest.mark.parametrize("reply", [b"* THREAD (0)\r\n", b"* THREAD (1 abc)\r\n", b"* THREAD ((1)\r\n"])
def test_malformed_thread_is_an_error(reply: bytes) -> None:
    wire = opened_q()
    d = start(wire.session.uid_thread_references([b"ALL"]))
    wire.sent()
    wire.server(reply)
    wire.ok()
    with pytest.raises(IMAPError):
        result_of(d)


def test_thread_refused_without_the_capability() -> None:
    wire = opened()
    with pytest.raises(IMAPError, match="THREAD=REFERENCES"):
        result_of(start(wire.session.uid_thread_references([b"ALL"])))
    assert wire.sent() == b""


def test_enable_qresync_leaves_the_folder_then_vanished_counts_like_expunge() -> None:
    """
    ENABLE goes out after UNSELECT; afterwards an unsolicited VANISHED
    lowers the message count as EXPUNGE did, VANISHED (EARLIER) does not.
    """
    wire = opened_q(exists=10)
    d = start(wire.session.enable_qresync())
    assert wire.sent() == b"0003 UNSELECT\r\n"
    wire.ok()
    assert wire.sent() == b"0004 ENABLE QRESYNC\r\n"
    wire.server(b"* ENABLED QRESYNC\r\n")
    wire.ok()
    result_of(d)
    assert wire.session.qresync_enabled and wire.session.selected is None
    d = start(wire.session.examine("INBOX"))
    assert wire.sent() == b'0005 EXAMINE "INBOX" (CONDSTORE)\r\n'
    wire.server(b"* 10 EXISTS\r\n* OK [UIDVALIDITY 5] x\r\n* OK [UIDNEXT 20] x\r\n"
                b"* OK [HIGHESTMODSEQ 900] x\r\n")
    wire.ok()
    assert result_of(d).highest_modseq == 900
    d = start(wire.session.examine("INBOX"))
    assert wire.sent() == b"0006 NOOP\r\n"
    wire.server(b"* VANISHED 3:5,9\r\n* VANISHED (EARLIER) 1:2\r\n")
    wire.ok()
    assert result_of(d).exists == 6
    # Enabling twice is free.
    result_of(start(wire.session.enable_qresync()))
    assert wire.sent() == b""


def test_enable_qresync_refused_when_not_enabled() -> None:
    wire = logged_in(QRESYNC_CAPS)
    d = start(wire.session.enable_qresync())
    wire.sent()
    wire.ok()
    with pytest.raises(IMAPError, match="did not enable"):
        result_of(d)


def test_changed_since_reports_flags_and_vanished_within_range() -> None:
    wire = logged_in(QRESYNC_CAPS)
    wire.session._qresync = True
    d = start(wire.session.examine("INBOX"))
    wire.sent()
    wire.server(b"* 4 EXISTS\r\n* OK [UIDVALIDITY 5] x\r\n* OK [HIGHESTMODSEQ 90] x\r\n")
    wire.ok()
    result_of(d)
    d = start(wire.session.uid_fetch_changed((1, 40), 77))
    assert wire.sent() == b"0003 UID FETCH 1:40 (UID FLAGS) (CHANGEDSINCE 77 VANISHED)\r\n"
    wire.server(b"* VANISHED (EARLIER) 3,5:6,99\r\n"
                b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Flagged) MODSEQ (88))\r\n"
                b"* 2 FETCH (UID 57 FLAGS () MODSEQ (89))\r\n")
    wire.ok()
    changed, vanished = result_of(d)
    assert changed == {1: ("\\Seen", "\\Flagged")} and vanished == [3, 5, 6]


def test_rename_leaves_the_open_folder_and_quotes_utf7() -> None:
    wire = opened_q()
    d = start(wire.session.rename_mailbox("Rechnungen", "Rechnungen/Büro \"x\""))
    assert wire.sent() == b"0003 UNSELECT\r\n"
    wire.ok()
    assert wire.sent() == b'0004 RENAME "Rechnungen" "Rechnungen/B&APw-ro \\"x\\""\r\n'
    wire.ok()
    result_of(d)
    assert wire.session.selected is None
    with pytest.raises(IMAPError):
        result_of(start(wire.session.rename_mailbox("a\r\nX LOGOUT", "b")))
    assert wire.sent() == b""


# -- the state codec ---------------------------------------------------------------


def test_state_round_trips_with_a_snapshot() -> None:
    flags = {uid: frozenset({"\\Seen"} if uid % 3 else {"\\Flagged", "$Label1"}) for uid in range(1, 1501)}
    state = _state.FolderState(_state.folder_digest("INBOX"), 7, 1600, 1500, None, flags)
    encoded = state.encode()
    assert len(encoded) < 600  # a few bytes per message at most
    assert _state.decode(encoded, "INBOX") == state
    bare = _state.FolderState(_state.folder_digest("Заметки"), 7, 9, 3, 12345)
    assert _state.decode(bare.encode(), "Заметки") == bare


def test_a_state_without_snapshot_is_encoded_once_per_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Equal states without a snapshot share one encoding (the listing encodes
    the same numbers on every call); any changed number is encoded afresh
    and decodes to itself; the memo is bounded.
    """
    monkeypatch.setattr(_state, "ENCODED_MAX", 3)
    _state._ENCODED.clear()
    digest = _state.folder_digest("INBOX")
    first = _state.FolderState(digest, 7, 100, 99, 500).encode()
    assert _state.FolderState(digest, 7, 100, 99, 500).encode() is first
    for changed in (
        _state.FolderState(digest, 7, 101, 99, 500),
        _state.FolderState(digest, 7, 100, 98, 500),
        _state.FolderState(digest, 8, 100, 99, 500),
        _state.FolderState(digest, 7, 100, 99, 501),
        _state.FolderState(_state.folder_digest("Sent"), 7, 100, 99, 500),
    ):
        encoded = changed.encode()
        assert encoded != first
        assert _state.decode(encoded, "Sent" if changed.folder_digest != digest else "INBOX") == changed
        assert len(_state._ENCODED) <= 3


def _packed(data: Any) -> str:
    raw = json.dumps(data).encode() if not isinstance(data, bytes) else data
    return "ms1." + base64.urlsafe_b64encode(zlib.compress(raw)).decode().rstrip("=")


@pytest.mark.parametrize("since, why", [
    ("", "not a mailbox state"),
    ("ms2.abc", "not a mailbox state"),
    ("ms1.%%%", "damaged"),
    ("ms1." + "A" * 70_000, "too long"),
    (_packed(b"\0" * 10_000_000), "damaged or too large"),
    (_packed({"v": 1}), "damaged"),
    (_packed({"v": 1, "f": _state.folder_digest("INBOX"), "uv": 1, "next": 5, "n": 1,
              "x": 1}), "damaged"),
    (_packed({"v": 1, "f": _state.folder_digest("INBOX"), "uv": "1", "next": 5, "n": 1}), "damaged"),
    (_packed({"v": 1, "f": _state.folder_digest("INBOX"), "uv": 1, "next": 5, "n": 1,
              "u": [[1, 9]], "fs": [[]], "fi": [0] * 9}), "bad UID ranges"),
    (_packed({"v": 1, "f": _state.folder_digest("INBOX"), "uv": 1, "next": 5, "n": 1,
              "u": [[1, 2]], "fs": [[]], "fi": [0, 1]}), "inconsistent"),
    (_packed({"v": 1, "f": _state.folder_digest("INBOX"), "uv": 1, "next": 5, "n": 1,
              "u": [[1, 2]]}), "incomplete"),
    (_packed({"v": 1, "f": _state.folder_digest("Sent"), "uv": 1, "next": 5, "n": 1}),
     "another folder"),
])
def test_bad_states_are_refused(since: str, why: str) -> None:
    with pytest.raises(_state.StateError, match=why):
        _state.decode(since, "INBOX")


# -- the tools on the fake server (no THREAD, CONDSTORE, QRESYNC) -------------------


def mail(subject: str, message_id: str, date: str, body: str = "hi\n", refs: str = "") -> bytes:
    head = (f"From: Ann <ann@example.test>\r\nTo: me@example.test\r\nSubject: {subject}\r\n"
            f"Date: {date}\r\nMessage-ID: {message_id}\r\n")
    if refs:
        head += f"In-Reply-To: {refs.split()[-1]}\r\nReferences: {refs}\r\n"
    return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body).encode()


def world() -> tuple[FakeIMAPServer, ToolContext]:
    server = FakeIMAPServer()
    server.mailbox("INBOX")
    server.mailbox("Sent", "\\Sent")
    server.mailbox("Archive", "\\Archive")
    services = tool_services(imap=FakeIMAPPool(server))
    return server, ToolContext(account=make_account(), services=services)


def test_thread_by_headers_on_a_server_without_thread() -> None:
    """The header chain across INBOX, Sent and Archive, in date order, linked messages only."""
    server, ctx = world()
    inbox, sent, archive = (server.mailboxes[n] for n in ("INBOX", "Sent", "Archive"))
    archive.add(mail("Plan", "<1@x>", "Mon, 01 Sep 2025 10:00:00 +0000", "one\n"))
    sent.add(mail("Re: Plan", "<2@x>", "Tue, 02 Sep 2025 10:00:00 +0000", "two\n", "<1@x>"))
    inbox.add(mail("Plan", "<other@x>", "Tue, 02 Sep 2025 11:00:00 +0000"))
    seed = inbox.add(mail("Re: Plan", "<3@x>", "Wed, 03 Sep 2025 10:00:00 +0200", "three\n",
                          "<1@x> <2@x>"))
    inbox.add(mail("Re: Plan", "<4@x>", "Thu, 04 Sep 2025 10:00:00 -0700", "four\n", "<3@x>"))
    out = run(get_mail_thread(ctx, ThreadInput(uid=seed)))
    assert [(e.folder, unmark_body(e.snippet)) for e in out.messages] == [
        ("Archive", "one"), ("Sent", "two"), ("INBOX", "three"), ("INBOX", "four")]
    assert out.threaded_by == "headers" and out.total == 4
    assert not any(c[0] in ("UID STORE", "SELECT") for c in server.commands)


def test_header_criteria_quote_hostile_ids() -> None:
    criteria = header_criteria(['<a"b\\c@x>', "<d@x>"])
    assert criteria[0] == b"OR" and b'"<a\\"b\\\\c@x>"' in criteria
    assert criteria.count(b"HEADER") == 6


def test_changes_by_snapshot_on_the_fake() -> None:
    """New, changed and vanished messages by comparison with the snapshot the state carries."""
    server, ctx = world()
    inbox = server.mailboxes["INBOX"]
    for i in range(4):
        inbox.add(mail(f"n{i}", f"<n{i}@x>", "Mon, 01 Sep 2025 10:00:00 +0000"))
    listing = run(list_mail_messages(ctx, ListMessagesInput()))
    inbox.messages[0].flags.add("\\Seen")
    inbox.expunge(2)
    inbox.add(mail("late", "<late@x>", "Mon, 01 Sep 2025 11:00:00 +0000"))
    out = run(get_mailbox_changes(ctx, MailboxChangesInput(since=listing.state)))
    assert out.method == "snapshot" and out.complete
    assert [m.uid for m in out.new] == [5] and out.vanished == [2]
    assert [(c.uid, c.flags) for c in out.changed] == [(1, ["\\Seen"])]
    again = run(get_mailbox_changes(ctx, MailboxChangesInput(since=out.state)))
    assert (again.new, again.changed, again.vanished) == ([], [], [])


def test_changes_partial_for_a_big_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond the snapshot bound: new messages and a count of vanished ones, said to be incomplete."""
    monkeypatch.setattr(_state, "SNAPSHOT_MAX", 2)
    monkeypatch.setattr("mailmcp.tools._changes.SNAPSHOT_MAX", 2)
    server, ctx = world()
    inbox = server.mailboxes["INBOX"]
    for i in range(4):
        inbox.add(mail(f"n{i}", f"<n{i}@x>", "Mon, 01 Sep 2025 10:00:00 +0000"))
    listing = run(list_mail_messages(ctx, ListMessagesInput()))
    inbox.expunge(3)
    inbox.add(mail("late", "<late@x>", "Mon, 01 Sep 2025 11:00:00 +0000"))
    out = run(get_mailbox_changes(ctx, MailboxChangesInput(since=listing.state)))
    assert out.method == "partial" and not out.complete
    assert [m.uid for m in out.new] == [5] and out.vanished == []
    assert "1 message(s) from before are gone" in out.warnings[0]
    assert "cannot report changed flags" in out.warnings[1]


def test_changes_report_uidvalidity_change_on_the_fake() -> None:
    server, ctx = world()
    server.mailboxes["INBOX"].add(mail("a", "<a@x>", "Mon, 01 Sep 2025 10:00:00 +0000"))
    listing = run(list_mail_messages(ctx, ListMessagesInput()))
    server.mailboxes["INBOX"].uidvalidity += 1
    out = run(get_mailbox_changes(ctx, MailboxChangesInput(since=listing.state)))
    assert out.uidvalidity_changed and (out.new, out.changed, out.vanished) == ([], [], [])
    with pytest.raises(ToolError, match="another folder"):
        run(get_mailbox_changes(ctx, MailboxChangesInput(folder="Sent", since=listing.state)))


def test_folder_tools_on_the_fake() -> None:
    server, ctx = world()
    assert run(create_mailbox(ctx, CreateMailboxInput(name="Büro"))).name == "Büro"
    assert run(create_mailbox(ctx, CreateMailboxInput(name="2025", parent="Büro"))).name == "Büro/2025"
    renamed = run(rename_mailbox(ctx, RenameMailboxInput(name="Büro", new_name="Office")))
    assert renamed.name == "Office" and {"Office", "Office/2025"} <= set(server.mailboxes)
    server.mailboxes["Office/2025"].add(mail("x", "<x@x>", "Mon, 01 Sep 2025 10:00:00 +0000"))
    with pytest.raises(ToolError, match="still holds 1 message"):
        run(delete_mailbox(ctx, DeleteMailboxInput(name="Office/2025")))
    with pytest.raises(ToolError, match="Archive folder"):
        run(delete_mailbox(ctx, DeleteMailboxInput(name="Archive")))
    assert len(server.mailboxes["Office/2025"].messages) == 1
    server.mailboxes["Office/2025"].expunge(1)
    assert run(delete_mailbox(ctx, DeleteMailboxInput(name="Office/2025"))).deleted
    assert "Office/2025" not in server.mailboxes


def test_mail_filed_into_a_folder_while_it_is_deleted_is_not_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A message filed into the folder right after its emptiness was checked
    (a Sieve rule, another client) is not deleted with it: the folder is set
    aside, found holding mail, and given its name back with the message.
    When nothing comes in between, the folder is deleted and no set-aside
    folder is left behind.
    """
    server, ctx = world()
    run(create_mailbox(ctx, CreateMailboxInput(name="Receipts")))
    real_status = _fake_imap.FakeIMAPSession.status
    checked: list[str] = []

    async def status_then_delivery(self: Any, mailbox: str, items: Any) -> dict[str, int]:
        answer = await real_status(self, mailbox, items)
        checked.append(mailbox)
        if mailbox == "Receipts" and len(checked) == 1:
            server.mailboxes["Receipts"].add(mail("late", "<late@x>", "Mon, 01 Sep 2025 10:00:00 +0000"))
        return answer

    monkeypatch.setattr(_fake_imap.FakeIMAPSession, "status", status_then_delivery)
    with pytest.raises(ToolError, match="still holds 1 message"):
        run(delete_mailbox(ctx, DeleteMailboxInput(name="Receipts")))
    assert [b"Subject: late" in m.raw for m in server.mailboxes["Receipts"].messages] == [True]
    assert len(checked) == 2 and checked[1].startswith("mailmcp-deleting-")
    assert not [n for n in server.mailboxes if "mailmcp-deleting" in n]
    server.mailboxes["Receipts"].expunge(1)
    assert run(delete_mailbox(ctx, DeleteMailboxInput(name="Receipts"))).deleted
    assert "Receipts" not in server.mailboxes
    assert not [n for n in server.mailboxes if "mailmcp-deleting" in n]


def test_a_refused_delete_gives_the_folder_its_name_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the server refuses the DELETE of the set-aside folder, it is renamed back and the refusal told."""
    server, ctx = world()
    run(create_mailbox(ctx, CreateMailboxInput(name="Keep")))

    async def refuse(self: Any, mailbox: str) -> None:
        raise IMAPError("[CANNOT] not today")

    monkeypatch.setattr(_fake_imap.FakeIMAPSession, "delete_mailbox", refuse)
    with pytest.raises(ToolError, match="refused to delete folder 'Keep'"):
        run(delete_mailbox(ctx, DeleteMailboxInput(name="Keep")))
    assert "Keep" in server.mailboxes
    assert not [n for n in server.mailboxes if "mailmcp-deleting" in n]


def test_tool_registry_lists_the_new_tools_once() -> None:
    names = [t.name for t in all_tools()]
    assert len(names) == len(set(names)) == 17
    for name in ("get_mail_thread", "get_mailbox_changes", "create_mailbox", "rename_mailbox",
                 "delete_mailbox"):
        assert name in names


def test_fake_module_is_the_one_tested() -> None:
    assert FakeIMAPServer is _fake_imap.FakeIMAPServer


def test_an_oversized_snapshot_is_dropped_not_handed_out() -> None:
    """A state too big to be accepted back loses its snapshot (the next answer is partial)."""
    def keyword(uid: int) -> str:
        return "".join(hashlib.sha256(b"%d-%d" % (uid, i)).hexdigest() for i in range(3))

    flags = {uid: frozenset({keyword(uid)}) for uid in range(1, 1001)}
    state = _state.FolderState(_state.folder_digest("INBOX"), 7, 2000, 1000, None, flags)
    encoded = state.encode()
    assert len(encoded) <= _state.MAX_STATE_CHARS
    assert _state.decode(encoded, "INBOX").flags is None
