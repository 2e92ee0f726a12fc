"""
``get_mail_message``'s head in one round trip: `Session.examine_uid_fetch`
writes the freshness NOOP and the ``UID FETCH`` together on a connection
with the folder open, and hands the FETCH back only when the NOOP brought
no news (issue 17).
"""

from __future__ import annotations

import pytest

from mailmcp.mail._mailbox_api import IMAPError
from tests.unit.imap_wire import opened, result_of, run

HEAD = "(UID FLAGS RFC822.SIZE ENVELOPE)"


def test_noop_and_uid_fetch_leave_in_one_write() -> None:
    """Both commands are written before any answer; the message comes back with the state."""
    wire = opened(exists=3)
    d = run(wire.session.examine_uid_fetch("INBOX", "9", HEAD))
    assert wire.sent() == b"0003 NOOP\r\n0004 UID FETCH 9 (UID FLAGS RFC822.SIZE ENVELOPE)\r\n"
    wire.server(b"0003 OK NOOP done\r\n")
    assert not d.called
    wire.server(b"* 3 FETCH (UID 9 FLAGS (\\Seen) RFC822.SIZE 20)\r\n0004 OK done\r\n")
    state, fetched = result_of(d)
    assert state.name == "INBOX" and state.exists == 3
    assert [(m.seq, m.uid, m.flags, m.size) for m in fetched] == [(3, 9, ("\\Seen",), 20)]
    assert not wire.protocol.busy


def test_dovecot_order_fetch_before_the_noop() -> None:
    """FETCH lines and its OK before the NOOP's OK (Dovecot): still counts."""
    wire = opened(exists=3)
    d = run(wire.session.examine_uid_fetch("INBOX", "9", HEAD))
    wire.sent()
    wire.server(b"* 3 FETCH (UID 9 FLAGS ())\r\n0004 OK Fetch completed\r\n0003 OK NOOP completed\r\n")
    state, fetched = result_of(d)
    assert [m.uid for m in fetched] == [9]


def test_a_missing_uid_is_an_empty_answer() -> None:
    """No such UID: the FETCH answers nothing, and that is the (usable) answer."""
    wire = opened(exists=3)
    d = run(wire.session.examine_uid_fetch("INBOX", "77", HEAD))
    wire.sent()
    wire.server(b"0003 OK done\r\n0004 OK done\r\n")
    _, fetched = result_of(d)
    assert fetched == []


def test_on_a_closed_folder_it_examines_first() -> None:
    """Not open here: a plain EXAMINE and nothing fetched ahead."""
    wire = opened(exists=3)
    d = run(wire.session.examine_uid_fetch("Archive", "9", HEAD))
    assert wire.sent() == b'0003 EXAMINE "Archive"\r\n'
    wire.server(b"* 7 EXISTS\r\n* OK [UIDVALIDITY 5] x\r\n")
    wire.ok(b"[READ-ONLY] done")
    state, fetched = result_of(d)
    assert (state.name, state.exists, state.uidvalidity, fetched) == ("Archive", 7, 5, None)


@pytest.mark.parametrize(
    "news",
    [
        b"* 4 EXISTS\r\n",
        b"* 3 EXPUNGE\r\n",  # maybe the very message
        b"* 3 FETCH (FLAGS (\\Flagged))\r\n",  # its flags changed elsewhere
        b"* 1 FETCH (UID 5 FLAGS (\\Seen))\r\n",  # another message's flags
        b"* OK [UIDVALIDITY 9] renumbered\r\n",
    ],
)
def test_any_news_from_the_noop_drops_the_answer(news: bytes) -> None:
    """Whatever the NOOP reports, the pipelined answer is not used: the caller fetches again."""
    wire = opened(exists=3)
    d = run(wire.session.examine_uid_fetch("INBOX", "9", HEAD))
    wire.sent()
    wire.server(b"* 3 FETCH (UID 9 FLAGS ())\r\n0004 OK Fetch completed\r\n")
    wire.server(news + b"0003 OK NOOP completed\r\n")
    state, fetched = result_of(d)
    assert fetched is None and state.name == "INBOX"
    if b"UIDVALIDITY" in news:
        assert state.uidvalidity == 9


def test_a_failed_fetch_is_handed_back_and_a_failed_noop_fails() -> None:
    """A refused FETCH comes back for the caller's retry; a refused NOOP is the call's error."""
    wire = opened(exists=3)
    d = run(wire.session.examine_uid_fetch("INBOX", "9", HEAD))
    wire.sent()
    wire.server(b"0003 OK done\r\n0004 NO [SERVERBUG] cannot parse this message\r\n")
    _, outcome = result_of(d)
    assert isinstance(outcome, IMAPError) and "cannot parse" in outcome.message
    d = run(wire.session.examine_uid_fetch("INBOX", "9", HEAD))
    assert wire.sent().count(b"\r\n") == 2
    wire.server(b"0005 BAD [CLIENTBUG] no\r\n0006 OK done\r\n")
    with pytest.raises(IMAPError, match="no"):
        result_of(d)
    assert not wire.protocol.busy and not wire.protocol.closed


def test_an_invalid_uid_set_is_refused_before_anything_is_sent() -> None:
    """The UID set is checked like any FETCH's: nothing leaves for a bad one."""
    wire = opened(exists=3)
    with pytest.raises(IMAPError, match="invalid message set"):
        result_of(run(wire.session.examine_uid_fetch("INBOX", "9 FLAGS", HEAD)))
    assert wire.sent() == b""


# -- with the body's FETCH too (a message read lately on this connection) ---------------


BODY = "(UID BODY.PEEK[1]<0.100>)"


def test_head_and_body_fetches_leave_with_the_noop_and_merge() -> None:
    """NOOP, head and body in one write; the message comes back with the items of both."""
    wire = opened(exists=3)
    d = run(wire.session.examine_uid_fetch("INBOX", "9", HEAD, BODY))
    assert wire.sent() == (
        b"0003 NOOP\r\n0004 UID FETCH 9 (UID FLAGS RFC822.SIZE ENVELOPE)\r\n"
        b"0005 UID FETCH 9 (UID BODY.PEEK[1]<0.100>)\r\n"
    )
    wire.server(
        b"* 3 FETCH (UID 9 FLAGS (\\Seen) RFC822.SIZE 20)\r\n0004 OK done\r\n"
        b"* 3 FETCH (UID 9 BODY[1]<0> {5}\r\nhello)\r\n0005 OK done\r\n0003 OK done\r\n"
    )
    state, fetched = result_of(d)
    (message,) = fetched
    assert (message.uid, message.flags, message.size) == (9, ("\\Seen",), 20)
    assert message.sections["1"] == b"hello"
    assert not wire.protocol.busy


def test_a_failed_body_fetch_drops_the_answer_and_a_failed_head_is_handed_back() -> None:
    """Only the body refused: None (the caller fetches both again); the head refused: its error."""
    wire = opened(exists=3)
    d = run(wire.session.examine_uid_fetch("INBOX", "9", HEAD, BODY))
    wire.sent()
    wire.server(b"0003 OK done\r\n* 3 FETCH (UID 9 FLAGS ())\r\n0004 OK done\r\n0005 NO no body\r\n")
    assert result_of(d)[1] is None
    d = run(wire.session.examine_uid_fetch("INBOX", "9", HEAD, BODY))
    wire.sent()
    wire.server(b"0006 OK done\r\n0007 NO [SERVERBUG] head\r\n0008 NO body\r\n")
    _, outcome = result_of(d)
    assert isinstance(outcome, IMAPError) and "head" in outcome.message
    assert not wire.protocol.busy


def test_with_the_body_an_unsolicited_fetch_still_drops_the_answer() -> None:
    """Three FETCH lines for two commands (flags changed elsewhere): not used."""
    wire = opened(exists=3)
    d = run(wire.session.examine_uid_fetch("INBOX", "9", HEAD, BODY))
    wire.sent()
    wire.server(
        b"* 3 FETCH (FLAGS (\\Flagged))\r\n0003 OK done\r\n"
        b"* 3 FETCH (UID 9 FLAGS ())\r\n0004 OK done\r\n"
        b"* 3 FETCH (UID 9 BODY[1]<0> {2}\r\nhi)\r\n0005 OK done\r\n"
    )
    assert result_of(d)[1] is None
