"""
`IMAPClientProtocol` and `Session` against a scripted server: no sockets,
a ``StringTransport`` for the wire and a ``Clock`` for every deadline.
Covers the misbehaving-server catalogue of docs/threat-model.rst (IM-01…IM-14)
and the P-05…P-08 traps.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from mailmcp.mail._mailbox_api import Appended, IMAPAuthError, IMAPError, IMAPNoSuchMailbox, Literal
from tests.unit.imap_wire import Wire, account, logged_in, opened, result_of, run


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport that records STARTTLS upgrades."""

    def __init__(self) -> None:
        super().__init__()
        self.tls_options: list[Any] = []

    def startTLS(self, options: Any) -> None:
        self.tls_options.append(options)


# -- greeting and connection setup --------------------------------------------------


def test_no_greeting_times_out() -> None:
    """IM-01: a server that never greets fails the greeting after the timeout and is dropped."""
    wire = Wire(timeout=10.0)
    d = run(wire.session.open(account(), None))
    wire.clock.advance(9.9)
    assert not d.called
    wire.clock.advance(0.2)
    with pytest.raises(IMAPError, match="did not answer greeting within 10 s") as caught:
        result_of(d)
    assert caught.value.transient
    assert wire.transport.disconnecting and wire.transport.value() == b""


def test_preauth_greeting_refused() -> None:
    """IM-14: a PREAUTH greeting is refused as a possible man in the middle; nothing is sent."""
    wire = Wire()
    d = run(wire.session.open(account(), None))
    wire.server(b"* PREAUTH [CAPABILITY IMAP4rev1] logged in already\r\n")
    with pytest.raises(IMAPError, match="PREAUTH"):
        result_of(d)
    assert wire.transport.value() == b""


def test_bye_greeting_is_transient_error() -> None:
    """A BYE greeting fails with the server's reason, marked transient."""
    wire = Wire()
    d = run(wire.session.open(account(), None))
    wire.server(b"* BYE Too many connections\r\n")
    with pytest.raises(IMAPError, match="Too many connections") as caught:
        result_of(d)
    assert caught.value.transient


def test_starttls_not_advertised_refuses_before_login() -> None:
    """IM-05: a starttls account on a server without STARTTLS never sends LOGIN."""
    wire = Wire(transport=TLSStringTransport())
    d = run(wire.session.open(account("starttls"), "options"))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
    with pytest.raises(IMAPError, match="does not offer STARTTLS"):
        result_of(d)
    assert wire.transport.value() == b""


def test_starttls_refused_by_server_never_logs_in() -> None:
    """IM-05: STARTTLS answered BAD fails closed; no LOGIN, no AUTHENTICATE."""
    wire = Wire(transport=TLSStringTransport())
    d = run(wire.session.open(account("starttls"), "options"))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
    assert wire.sent() == b"0001 STARTTLS\r\n"
    wire.server(b"0001 BAD not now\r\n")
    with pytest.raises(IMAPError, match="refused STARTTLS"):
        result_of(d)
    assert wire.transport.value() == b""


def test_starttls_upgrades_with_verifying_options_before_login() -> None:
    """STARTTLS: the given (verifying) options are used and capabilities re-read before LOGIN."""
    transport = TLSStringTransport()
    wire = Wire(transport=transport)
    d = run(wire.session.open(account("starttls"), "verifying-options"))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n")
    assert wire.sent() == b"0001 STARTTLS\r\n"
    wire.ok()
    assert transport.tls_options == ["verifying-options"]
    assert wire.sent() == b"0002 CAPABILITY\r\n"
    wire.server(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n0002 OK done\r\n")
    assert wire.sent().startswith(b"0003 LOGIN ")
    wire.server(b"0003 OK [CAPABILITY IMAP4rev1 UIDPLUS] in\r\n")
    result_of(d)
    assert wire.session.capabilities == frozenset({"IMAP4REV1", "UIDPLUS"})


def test_tls_failure_during_starttls_reports_tls_and_sends_no_credentials() -> None:
    """IM-05/06: a certificate failure after STARTTLS is a clear TLS error; LOGIN never written."""
    from OpenSSL import SSL

    wire = Wire(transport=TLSStringTransport())
    d = run(wire.session.open(account("starttls"), "options"))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
    wire.ok()
    wire.sent()
    wire.protocol.connectionLost(
        Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
    )
    with pytest.raises(
        IMAPError, match="TLS .*certificate verify failed.*no credentials"
    ) as caught:
        result_of(d)
    assert not caught.value.transient
    assert b"LOGIN" not in wire.transport.value()


def test_plain_security_only_on_loopback() -> None:
    """``plain`` is refused for a non-loopback host even after a good greeting."""
    wire = Wire()
    d = run(wire.session.open(account("plain", host="imap.example.test"), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    with pytest.raises(IMAPError, match="loopback"):
        result_of(d)
    assert wire.transport.value() == b""


def test_login_quotes_credentials_and_logs_them_redacted() -> None:
    """LOGIN quotes user and password (escaping \\ and \") and the command log shows neither."""
    wire = Wire()
    d = run(wire.session.open(account(password='pa"ss\\word'), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    assert wire.sent() == b'0001 LOGIN "alice@example.test" "pa\\"ss\\\\word"\r\n'
    wire.server(b"0001 OK [CAPABILITY IMAP4rev1] in\r\n")
    result_of(d)
    assert wire.events == [("LOGIN", "<credentials redacted>")]


def test_non_ascii_password_uses_authenticate_plain_with_continuation() -> None:
    """A UTF-8 password goes through AUTHENTICATE PLAIN (continuation form without SASL-IR)."""
    import base64

    wire = Wire()
    d = run(wire.session.open(account(password="pässwörd"), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
    assert wire.sent() == b"0001 AUTHENTICATE PLAIN\r\n"
    wire.server(b"+ \r\n")
    expected = base64.b64encode(b"\0alice@example.test\0" + "pässwörd".encode())
    assert wire.sent() == expected + b"\r\n"
    wire.server(b"0001 OK [CAPABILITY IMAP4rev1] in\r\n")
    result_of(d)
    assert wire.events == [("AUTHENTICATE", "PLAIN <credentials redacted>")]


def test_sasl_ir_sends_initial_response_inline() -> None:
    """With SASL-IR the PLAIN response rides on the AUTHENTICATE line (one round trip)."""
    wire = Wire()
    d = run(wire.session.open(account(password="pässwörd"), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] ready\r\n")
    assert wire.sent().startswith(b"0001 AUTHENTICATE PLAIN AGFsaWNl")
    wire.server(b"0001 OK [CAPABILITY IMAP4rev1] in\r\n")
    result_of(d)


def test_logindisabled_without_plain_refuses() -> None:
    """IM-07: LOGINDISABLED and no AUTH=PLAIN: no LOGIN is attempted at all."""
    wire = Wire()
    d = run(wire.session.open(account(), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] ready\r\n")
    with pytest.raises(IMAPAuthError, match="no login method"):
        result_of(d)
    assert wire.transport.value() == b""


@pytest.mark.parametrize(
    ("reply", "auth", "transient"),
    [
        (b"NO [AUTHENTICATIONFAILED] Authentication failed.", True, False),
        (b"NO [UNAVAILABLE] Try later", False, True),
    ],
)
def test_login_refusals_are_distinct(reply: bytes, auth: bool, transient: bool) -> None:
    """IM-04: bad credentials are IMAPAuthError; a temporary refusal is a transient IMAPError."""
    wire = Wire()
    d = run(wire.session.open(account(), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    wire.server(b"0001 " + reply + b"\r\n")
    with pytest.raises(IMAPError) as caught:
        result_of(d)
    assert isinstance(caught.value, IMAPAuthError) is auth
    assert caught.value.transient is transient


def test_control_characters_in_credentials_refused() -> None:
    """P-03: CR/LF/NUL in stored credentials are refused before anything is written."""
    wire = Wire()
    d = run(wire.session.open(account(password="pw\r\nX1 DELETE INBOX"), None))
    wire.server(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    with pytest.raises(IMAPAuthError, match="control characters"):
        result_of(d)
    assert wire.transport.value() == b""


# -- deadlines, bounds, broken connections ----------------------------------------------


def test_stalled_command_times_out_and_aborts() -> None:
    """IM-02/P-05: a command unanswered within the deadline fails and the connection is aborted."""
    wire = opened(timeout=30.0)
    d = run(wire.session.fetch("1:3", "(UID FLAGS)"))
    wire.clock.advance(29)
    assert not d.called
    wire.clock.advance(2)
    with pytest.raises(IMAPError, match="did not answer UID FETCH within 30 s") as caught:
        result_of(d)
    assert caught.value.transient
    assert wire.transport.disconnected
    assert not wire.session.usable
    with pytest.raises(IMAPError):
        result_of(run(wire.session.noop()))


def test_slow_trickle_hits_the_overall_deadline() -> None:
    """IM-15: data arriving slowly does not extend a command's deadline."""
    wire = opened(timeout=30.0)
    d = run(wire.session.fetch("1", "(UID BODY.PEEK[])"))
    wire.server(b"* 1 FETCH (UID 5 BODY[] {1000}\r\n")
    for _ in range(40):
        wire.clock.advance(1)
        wire.server(b"x")
    with pytest.raises(IMAPError, match="did not answer"):
        result_of(d)


def test_huge_literal_announcement_drops_connection() -> None:
    """IM-08/P-07: a literal above the cap is refused before any of it is buffered."""
    wire = opened(max_literal=1024 * 1024)
    d = run(wire.session.fetch("1", "(UID BODY.PEEK[])"))
    wire.server(b"* 1 FETCH (UID 5 BODY[] {99999999999}\r\n" + b"x" * 5000)
    with pytest.raises(IMAPError, match="99999999999-byte literal"):
        result_of(d)
    assert wire.transport.disconnected
    assert wire.protocol._literal_chunks == []


def test_many_literals_in_one_response_are_bounded() -> None:
    """Literals each under the cap cannot add up past the response bound in one response."""
    wire = opened(max_literal=1000, max_response=2500)
    d = run(wire.session.fetch("1", "(UID BODY.PEEK[1] BODY.PEEK[2] BODY.PEEK[3])"))
    wire.server(
        b"* 1 FETCH (UID 5 BODY[1] {900}\r\n" + b"a" * 900 + b" BODY[2] {900}\r\n" + b"b" * 900
    )
    assert not d.called
    wire.server(b" BODY[3] {900}\r\n")
    with pytest.raises(IMAPError, match="exceeded 2500 bytes"):
        result_of(d)
    assert wire.transport.disconnected


def test_overlong_line_drops_connection() -> None:
    """IM-09/P-06: a line over the bound fails cleanly (never a silent disconnect)."""
    wire = opened(max_line=4096)
    d = run(wire.session.uid_search([b"ALL"]))
    wire.server(b"* SEARCH " + b"1 " * 3000)
    with pytest.raises(IMAPError, match="longer than 4096 bytes"):
        result_of(d)


def test_long_search_line_within_bound_is_fine() -> None:
    """IM-09: a 64 KiB ``* SEARCH`` line (10,000 UIDs) is handled with the default bound."""
    wire = opened(caps=b"IMAP4rev1 UIDPLUS")
    d = run(wire.session.uid_search([b"ALL"]))
    wire.server(b"* SEARCH " + b" ".join(b"%d" % i for i in range(1, 10001)) + b"\r\n")
    wire.ok()
    assert result_of(d) == list(range(1, 10001))


def test_connection_lost_mid_literal() -> None:
    """IM-03: a reset inside a FETCH literal is a transient 'lost while reading' error."""
    wire = opened()
    d = run(wire.session.fetch("1", "(UID BODY.PEEK[])"))
    wire.server(b"* 1 FETCH (UID 5 BODY[] {100}\r\nonly part")
    wire.protocol.connectionLost(Failure(ConnectionLost()))
    with pytest.raises(IMAPError, match="lost while reading a message") as caught:
        result_of(d)
    assert caught.value.transient


def test_bye_mid_command() -> None:
    """IM-04: ``* BYE`` then a close fails the command with the server's reason."""
    wire = opened()
    d = run(wire.session.noop())
    wire.server(b"* BYE Server shutting down\r\n")
    wire.protocol.connectionLost(Failure(ConnectionLost()))
    with pytest.raises(IMAPError, match="closed the connection: Server shutting down") as caught:
        result_of(d)
    assert caught.value.transient


def test_unknown_tag_drops_connection() -> None:
    """A tagged reply for a command never sent means the stream is out of sync: drop it."""
    wire = opened()
    d = run(wire.session.noop())
    wire.server(b"ZZZZ OK what\r\n")
    with pytest.raises(IMAPError, match="never sent"):
        result_of(d)
    assert wire.transport.disconnected


def test_malformed_fetch_is_an_error_not_a_crash() -> None:
    """A FETCH with unbalanced parentheses fails the call with IMAPError."""
    wire = opened()
    d = run(wire.session.fetch("1", "(UID FLAGS)"))
    wire.server(b"* 1 FETCH (UID 5 FLAGS (\\Seen)\r\n")
    wire.ok()
    with pytest.raises(IMAPError, match="malformed FETCH"):
        result_of(d)


# -- responses: state, UIDs, literals -----------------------------------------------------


def test_repeat_examine_costs_one_noop_and_tracks_exists() -> None:
    """A second examine/select of the open folder sends only NOOP; EXISTS/EXPUNGE update counts."""
    wire = opened(exists=3)
    d = run(wire.session.select("INBOX"))
    assert wire.sent() == b"0003 NOOP\r\n"
    wire.server(b"* 5 EXISTS\r\n* 2 EXPUNGE\r\n")
    wire.ok()
    state = result_of(d)
    assert state.exists == 4 and state.uidvalidity == 1700000000
    d = run(wire.session.examine("inbox"))
    assert wire.sent() == b"0004 NOOP\r\n"
    wire.ok()
    assert result_of(d).exists == 4


def test_unsolicited_uidvalidity_change_is_tracked() -> None:
    """An untagged OK [UIDVALIDITY n] while a folder is open updates the state callers see."""
    wire = opened()
    d = run(wire.session.noop())
    wire.server(b"* OK [UIDVALIDITY 1800000000] renumbered\r\n* OK [HIGHESTMODSEQ 77] x\r\n")
    wire.ok()
    result_of(d)
    state = wire.session.selected
    assert state is not None
    assert (state.uidvalidity, state.uidnext, state.highest_modseq) == (1800000000, None, 77)


def test_examine_then_write_upgrades_to_select() -> None:
    """A STORE on an EXAMINEd folder re-opens it with SELECT first."""
    wire = logged_in()
    d = run(wire.session.examine("Archive"))
    assert wire.sent() == b'0002 EXAMINE "Archive"\r\n'
    wire.server(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\n")
    wire.ok(b"[READ-ONLY] done")
    assert result_of(d).read_only
    d = run(wire.session.uid_store([9], "+FLAGS", ["\\Seen"]))
    assert wire.sent() == b'0003 SELECT "Archive"\r\n'
    wire.server(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\n")
    wire.ok(b"[READ-WRITE] done")
    assert wire.sent() == b"0004 UID STORE 9 +FLAGS.SILENT (\\Seen)\r\n"
    wire.ok()
    assert result_of(d) == {}


def test_uidvalidity_change_on_upgrade_refuses_the_write() -> None:
    """If the folder was renumbered between EXAMINE and SELECT, the write is refused."""
    wire = logged_in()
    d = run(wire.session.examine("Archive"))
    wire.server(b"* OK [UIDVALIDITY 7] x\r\n")
    wire.ok(b"[READ-ONLY] done")
    result_of(d)
    wire.sent()
    d = run(wire.session.uid_expunge([9]))
    wire.server(b"* OK [UIDVALIDITY 8] x\r\n")
    wire.ok(b"[READ-WRITE] done")
    with pytest.raises(IMAPError, match="UIDVALIDITY"):
        result_of(d)
    assert wire.sent() == b'0003 SELECT "Archive"\r\n'  # and no UID EXPUNGE


def test_missing_mailbox_on_select() -> None:
    """SELECT answered NO is IMAPNoSuchMailbox, and no mailbox stays open."""
    wire = opened()
    d = run(wire.session.select("Nope"))
    wire.server(wire.tag() + b" NO [NONEXISTENT] Mailbox doesn't exist: Nope\r\n")
    with pytest.raises(IMAPNoSuchMailbox, match="Nope"):
        result_of(d)
    assert wire.session.selected is None


def test_fetch_ignores_unrequested_uids_and_merges_split_responses() -> None:
    """IM-10/IM-11: unsolicited FETCHes for other UIDs are ignored; split ones are merged."""
    wire = opened()
    d = run(wire.session.fetch("10:11", "(UID FLAGS RFC822.SIZE)"))
    assert wire.sent() == b"0003 UID FETCH 10:11 (UID FLAGS RFC822.SIZE)\r\n"
    wire.server(
        b"* 1 FETCH (UID 10 FLAGS (\\Seen) RFC822.SIZE 100)\r\n"
        b"* 4 EXISTS\r\n"
        b"* 3 FETCH (UID 99 FLAGS (\\Deleted))\r\n"
        b"* 2 FETCH (UID 11 RFC822.SIZE 200)\r\n"
        b"* 2 FETCH (UID 11 FLAGS ())\r\n"
    )
    wire.ok()
    messages = result_of(d)
    assert [(m.seq, m.uid, m.flags, m.size) for m in messages] == [
        (1, 10, ("\\Seen",), 100),
        (2, 11, (), 200),
    ]
    assert wire.session.selected.exists == 4  # type: ignore[union-attr]


def test_fetch_is_always_peek_and_asks_for_uid() -> None:
    """P-01 side effects: BODY[ becomes BODY.PEEK[, UID is added, RFC822 is refused."""
    wire = opened()
    d = run(wire.session.fetch("3", "(BODY[HEADER.FIELDS (SUBJECT)] BODY[1]<0.100>)", uid=False))
    assert (
        wire.sent()
        == b"0003 FETCH 3 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[1]<0.100>)\r\n"
    )
    wire.server(
        b"* 3 FETCH (UID 9 BODY[HEADER.FIELDS (SUBJECT)] {15}\r\nSubject: hi\r\n\r\n BODY[1]<0> {5}\r\nhello)\r\n"
    )
    wire.ok()
    (message,) = result_of(d)
    assert message.uid == 9 and message.seq == 3
    assert message.sections == {"HEADER.FIELDS (SUBJECT)": b"Subject: hi\r\n\r\n", "1": b"hello"}
    with pytest.raises(IMAPError, match="mark messages seen"):
        result_of(run(wire.session.fetch("3", "(RFC822.TEXT)")))


def test_data_split_at_every_byte_gives_the_same_result() -> None:
    """The receive loop is independent of how TCP splits the stream (literals included)."""
    wire = opened()
    d = run(wire.session.fetch("9", "(UID BODY.PEEK[])"))
    payload = (
        b"* 1 FETCH (UID 9 BODY[] {12}\r\nab\r\n{3}\r\n)\r\n FLAGS (\\Seen))\r\n"
        + wire.tag()
        + b" OK done\r\n"
    )
    for i in range(len(payload)):
        wire.server(payload[i : i + 1])
    (message,) = result_of(d)
    assert message.sections == {"": b"ab\r\n{3}\r\n)\r\n"} and message.flags == ("\\Seen",)


def test_esearch_all_is_expanded() -> None:
    """UID SEARCH uses RETURN (ALL) with ESEARCH and expands the returned set."""
    wire = opened()
    d = run(wire.session.uid_search([b"UNSEEN"]))
    assert wire.sent() == b"0003 UID SEARCH RETURN (ALL) UNSEEN\r\n"
    wire.server(b'* ESEARCH (TAG "0003") UID ALL 3:5,9\r\n')
    wire.ok()
    assert result_of(d) == [3, 4, 5, 9]


def test_esearch_absurd_set_refused() -> None:
    """A server claiming four billion matches gets an error, not a four-billion-element list."""
    wire = opened()
    d = run(wire.session.uid_search([b"ALL"]))
    wire.server(b'* ESEARCH (TAG "0003") UID ALL 1:4294967295\r\n')
    wire.ok()
    with pytest.raises(IMAPError, match="malformed UID set|too many"):
        result_of(d)


def test_non_ascii_search_uses_synchronising_literal_without_literal_plus() -> None:
    """Without LITERAL+ the literal waits for the server's continuation."""
    wire = opened(caps=b"IMAP4rev1 UIDPLUS")
    d = run(wire.session.uid_search([b"SUBJECT", Literal("日本".encode()), b"UNSEEN"]))
    assert wire.sent() == b"0003 UID SEARCH CHARSET UTF-8 SUBJECT {6}\r\n"
    wire.server(b"+ go ahead\r\n")
    assert wire.sent() == "日本".encode() + b" UNSEEN\r\n"
    wire.server(b"* SEARCH 4 2\r\n")
    wire.ok()
    assert result_of(d) == [2, 4]
    assert wire.events[-1] == ("UID SEARCH", "CHARSET UTF-8 SUBJECT {6 bytes} UNSEEN")


def test_non_ascii_search_with_literal_plus_is_one_write() -> None:
    """With LITERAL+ the whole command goes out at once as ``{n+}``."""
    wire = opened()
    d = run(wire.session.uid_search([b"FROM", Literal("jürgen".encode())]))
    assert (
        wire.sent() == b"0003 UID SEARCH RETURN (ALL) CHARSET UTF-8 FROM {7+}\r\nj\xc3\xbcrgen\r\n"
    )
    wire.ok()
    assert result_of(d) == []


def test_badcharset_gives_a_clear_error() -> None:
    """A server refusing CHARSET UTF-8 (NO [BADCHARSET]) gives an actionable message."""
    wire = opened()
    d = run(wire.session.uid_search([b"SUBJECT", Literal("é".encode())]))
    wire.server(wire.tag() + b" NO [BADCHARSET (US-ASCII)] unsupported charset\r\n")
    with pytest.raises(IMAPError, match="cannot search for non-ASCII"):
        result_of(d)


def test_no_uidplus_refuses_expunge_and_move() -> None:
    """IM-13: without UIDPLUS neither UID EXPUNGE nor a COPY-based move is attempted."""
    wire = opened(caps=b"IMAP4rev1")
    for attempt in (wire.session.uid_expunge([3]), wire.session.uid_move([3], "Trash")):
        with pytest.raises(IMAPError, match="UIDPLUS"):
            result_of(run(attempt))
    assert wire.transport.value() == b""


def test_move_without_move_extension_uses_copy_store_uid_expunge() -> None:
    """Without MOVE (but with UIDPLUS): UID COPY, UID STORE +FLAGS.SILENT \\Deleted, UID EXPUNGE."""
    wire = opened(caps=b"IMAP4rev1 UIDPLUS")
    d = run(wire.session.uid_move([3, 4, 5, 9], "Trash"))
    assert wire.sent() == b'0003 UID COPY 3:5,9 "Trash"\r\n'
    wire.ok(b"[COPYUID 77 3:5,9 100:103] done")
    assert wire.sent() == b"0004 UID STORE 3:5,9 +FLAGS.SILENT (\\Deleted)\r\n"
    wire.ok()
    assert wire.sent() == b"0005 UID EXPUNGE 3:5,9\r\n"
    wire.ok()
    assert result_of(d) == {3: 100, 4: 101, 5: 102, 9: 103}
    assert not any(line.endswith(b" EXPUNGE") for line in wire.transport.value().split(b"\r\n"))


def test_move_reads_untagged_copyuid() -> None:
    """UID MOVE's COPYUID arrives untagged (RFC 6851) and is not dropped."""
    wire = opened()
    d = run(wire.session.uid_move([7], "Archive"))
    assert wire.sent() == b'0003 UID MOVE 7 "Archive"\r\n'
    wire.server(b"* OK [COPYUID 5 7 12] Moved UIDs.\r\n* 1 EXPUNGE\r\n")
    wire.ok()
    assert result_of(d) == {7: 12}
    assert wire.session.selected.exists == 2  # type: ignore[union-attr]


def test_append_waits_for_continuation_and_returns_appenduid() -> None:
    """APPEND without LITERAL+ sends the message only after ``+``; APPENDUID is returned."""
    wire = logged_in(caps=b"IMAP4rev1 UIDPLUS")
    d = run(
        wire.session.append(
            "Drafts", b"Subject: x\r\n\r\nbody\r\n", ["\\Draft"], "01-Jul-2025 13:30:00 +0000"
        )
    )
    assert wire.sent() == b'0002 APPEND "Drafts" (\\Draft) "01-Jul-2025 13:30:00 +0000" {20}\r\n'
    wire.server(b"+ Ready\r\n")
    assert wire.sent() == b"Subject: x\r\n\r\nbody\r\n\r\n"
    wire.ok(b"[APPENDUID 1700000000 17] Append completed.")
    assert result_of(d) == Appended(1700000000, 17)


def test_append_to_missing_mailbox() -> None:
    """APPEND answered NO [TRYCREATE] is IMAPNoSuchMailbox."""
    wire = logged_in()
    d = run(wire.session.append("Nope", b"x"))
    wire.server(b"0002 NO [TRYCREATE] Mailbox doesn't exist\r\n")
    with pytest.raises(IMAPNoSuchMailbox):
        result_of(d)


def test_list_decodes_names_and_survives_invalid_utf7() -> None:
    """IM-12: LIST names are decoded from modified UTF-7; invalid ones come back escaped."""
    wire = logged_in()
    d = run(wire.session.list_mailboxes())
    assert wire.sent() == b'0002 LIST "" "*"\r\n'
    wire.server(
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
        b'* LIST (\\HasChildren) "/" "R&AOk-sum&AOk-"\r\n'
        b'* LIST () "/" {8}\r\n&ZeVnLA-\r\n'
        b'* LIST () NIL "bad &!!!- name"\r\n'
        b'* LIST (\\Noselect) "/" 2024\r\n'
    )
    wire.ok()
    boxes = result_of(d)
    assert [b.name for b in boxes] == ["INBOX", "Sent", "Résumé", "日本", "bad &!!!- name", "2024"]
    assert boxes[1].special_use == "\\Sent"
    assert boxes[4].delimiter is None
    assert not boxes[5].selectable


def test_status_parses_numbers() -> None:
    """STATUS returns the counters as ints; unknown items are refused before sending."""
    wire = logged_in()
    d = run(wire.session.status("Résumé", ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]))
    assert wire.sent() == b'0002 STATUS "R&AOk-sum&AOk-" (MESSAGES UIDNEXT UIDVALIDITY)\r\n'
    wire.server(b'* STATUS "R&AOk-sum&AOk-" (MESSAGES 3 UIDNEXT 10 UIDVALIDITY 1700000000)\r\n')
    wire.ok()
    assert result_of(d) == {"MESSAGES": 3, "UIDNEXT": 10, "UIDVALIDITY": 1700000000}
    with pytest.raises(IMAPError):
        result_of(run(wire.session.status("INBOX", ["MESSAGES) X1 DELETE"])))


@pytest.mark.parametrize(
    "name",
    ["INBOX\r\nX4 DELETE Trash", "a\x00b", "", "x" * 2000],
)
def test_hostile_mailbox_names_refused(name: str) -> None:
    """P-04: control characters, empty and over-long names are refused, never mangled."""
    wire = logged_in()
    for attempt in (
        wire.session.examine(name),
        wire.session.append(name, b"x"),
        wire.session.status(name, ["MESSAGES"]),
    ):
        with pytest.raises(IMAPError):
            result_of(run(attempt))
    assert wire.transport.value() == b""


def test_mailbox_name_quoting() -> None:
    """Quotes and backslashes in a name are escaped inside a quoted string."""
    wire = logged_in()
    run(wire.session.examine('We "say" \\ hi'))
    assert wire.sent() == b'0002 EXAMINE "We \\"say\\" \\\\ hi"\r\n'


def test_each_command_is_a_log_event_with_secrets_redacted() -> None:
    """
    At ``--log-level debug`` every command emits a log event (name,
    arguments); LOGIN's are redacted.
    """
    from twisted.logger import capturedLogs, formatEvent

    from mailmcp._logging import set_log_level

    set_log_level("debug")
    try:
        with capturedLogs() as events:
            wire = logged_in()
            run(wire.session.select("INBOX"))
    finally:
        set_log_level("info")
    commands = [(e["imap_command"], e["imap_arguments"]) for e in events if "imap_command" in e]
    assert commands == [("LOGIN", "<credentials redacted>"), ("SELECT", '"INBOX"')]
    text = "\n".join(formatEvent(e) for e in events)
    assert "secret" not in text and "alice@example.test" not in text
    assert 'C: 0002 SELECT "INBOX"' in text


def test_commands_are_not_logged_at_the_default_level() -> None:
    """At the default ``info`` level the per-command trace is not even built."""
    from twisted.logger import capturedLogs

    with capturedLogs() as events:
        wire = logged_in()
        run(wire.session.select("INBOX"))
    assert wire.sent().endswith(b'SELECT "INBOX"\r\n')
    assert [e for e in events if "imap_command" in e] == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=80))
def test_any_chunking_of_a_mixed_stream_parses_the_same(cuts: list[int]) -> None:
    """However TCP splits a stream of FETCHes with literals, the results are identical."""
    wire = opened()
    d = run(wire.session.fetch("1:3", "(UID FLAGS BODY.PEEK[1])", uid=False))
    tag = wire.tag()
    stream = (
        b"* 1 FETCH (UID 7 FLAGS (\\Seen) BODY[1] {5}\r\nab\r\nc)\r\n"
        b"* 2 FETCH (UID 8 FLAGS () BODY[1] {0}\r\n)\r\n"
        b"* 4 EXISTS\r\n"
        b'* 3 FETCH (UID 9 FLAGS (\\Flagged) BODY[1] "quoted")\r\n' + tag + b" OK done\r\n"
    )
    position = 0
    for cut in cuts:
        wire.server(stream[position : position + cut])
        position += cut
    wire.server(stream[position:])
    messages = result_of(d)
    assert [(m.uid, m.flags, m.sections) for m in messages] == [
        (7, ("\\Seen",), {"1": b"ab\r\nc"}),
        (8, (), {"1": b""}),
        (9, ("\\Flagged",), {"1": b"quoted"}),
    ]


def test_list_status_in_one_round_trip() -> None:
    """With LIST-STATUS, folders and their counters come from one LIST command."""
    wire = logged_in(caps=b"IMAP4rev1 LIST-EXTENDED SPECIAL-USE LIST-STATUS")
    d = run(wire.session.list_mailboxes_status(["MESSAGES", "UNSEEN"]))
    assert (
        wire.sent()
        == b'0002 LIST "" "*" RETURN (SPECIAL-USE CHILDREN STATUS (MESSAGES UNSEEN))\r\n'
    )
    wire.server(
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n* STATUS INBOX (MESSAGES 5 UNSEEN 2)\r\n'
        b'* LIST (\\Noselect \\HasChildren) "/" "R&AOk-sum&AOk-"\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "/" "R&AOk-sum&AOk-/Sent"\r\n'
        b'* STATUS "R&AOk-sum&AOk-/Sent" (MESSAGES 1 UNSEEN 0)\r\n'
    )
    wire.ok()
    result = [(box.name, counts) for box, counts in result_of(d)]
    assert result == [
        ("INBOX", {"MESSAGES": 5, "UNSEEN": 2}),
        ("Résumé", {}),
        ("Résumé/Sent", {"MESSAGES": 1, "UNSEEN": 0}),
    ]


def test_list_status_fallback_without_the_extension() -> None:
    """Without LIST-STATUS: LIST, then one STATUS per selectable folder."""
    wire = logged_in()
    d = run(wire.session.list_mailboxes_status(["MESSAGES"]))
    assert wire.sent() == b'0002 LIST "" "*"\r\n'
    wire.server(b'* LIST () "/" INBOX\r\n* LIST (\\Noselect) "/" Parent\r\n')
    wire.ok()
    assert wire.sent() == b'0003 STATUS "INBOX" (MESSAGES)\r\n'
    wire.server(b"* STATUS INBOX (MESSAGES 4)\r\n")
    wire.ok()
    assert [(box.name, counts) for box, counts in result_of(d)] == [
        ("INBOX", {"MESSAGES": 4}),
        ("Parent", {}),
    ]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_from_the_server_never_escapes_as_an_exception(garbage: bytes) -> None:
    """Arbitrary server bytes mid-FETCH end in an IMAPError (or nothing yet), never a crash."""
    wire = opened(max_line=256, max_literal=64)
    d = run(wire.session.fetch("1:*", "(UID FLAGS ENVELOPE)"))
    wire.server(garbage)
    wire.server(b"\r\n" + wire.tag() + b" OK done\r\n")
    outcomes: list[Any] = []
    d.addBoth(outcomes.append)
    if outcomes and isinstance(outcomes[0], Failure):
        assert outcomes[0].check(IMAPError)


# -- NOOP pipelined with the listing FETCH (issue 17) -------------------------------------

LISTING = "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)"


def last_two(exists: int) -> str | None:
    return f"{exists - 1}:{exists}" if exists >= 2 else None


def test_examine_fetch_sends_noop_and_fetch_in_one_write() -> None:
    """On the open folder, NOOP and FETCH leave before any answer: one round trip."""
    wire = opened(exists=3)
    d = run(wire.session.examine_fetch("INBOX", last_two, LISTING))
    assert wire.sent() == (
        b"0003 NOOP\r\n"
        b"0004 FETCH 2:3 (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)\r\n"
    )
    assert [c for c, _ in wire.events[-2:]] == ["NOOP", "FETCH"]
    wire.server(b"0003 OK NOOP done\r\n")
    assert not d.called
    wire.server(
        b"* 2 FETCH (UID 8 FLAGS (\\Seen) RFC822.SIZE 10)\r\n"
        b"* 3 FETCH (UID 9 FLAGS () RFC822.SIZE 20)\r\n"
        b"0004 OK FETCH done\r\n"
    )
    state, fetched = result_of(d)
    assert state.exists == 3 and state.name == "INBOX"
    assert [(m.seq, m.uid, m.flags, m.size) for m in fetched] == [
        (2, 8, ("\\Seen",), 10),
        (3, 9, (), 20),
    ]
    assert not wire.protocol.busy


def test_examine_fetch_untagged_lines_go_to_the_command_running() -> None:
    """EXISTS answered to the NOOP updates the count; FETCH lines after its OK belong to the FETCH."""
    wire = opened(exists=3)
    d = run(wire.session.examine_fetch("INBOX", last_two, LISTING))
    wire.sent()
    # New mail: the NOOP reports it, so the numbers 2:3 asked for are stale.
    wire.server(b"* 4 EXISTS\r\n0003 OK NOOP done\r\n")
    wire.server(b"* 2 FETCH (UID 8)\r\n* 3 FETCH (UID 9)\r\n0004 OK FETCH done\r\n")
    state, fetched = result_of(d)
    assert state.exists == 4
    assert fetched is None  # the caller fetches again for the new count


def test_examine_fetch_on_a_closed_folder_examines_first() -> None:
    """Not open on this connection: a plain EXAMINE, nothing fetched ahead."""
    wire = opened(exists=3)
    d = run(wire.session.examine_fetch("Archive", last_two, LISTING))
    assert wire.sent() == b'0003 EXAMINE "Archive"\r\n'
    wire.server(b"* 7 EXISTS\r\n* OK [UIDVALIDITY 5] x\r\n")
    wire.ok(b"[READ-ONLY] done")
    state, fetched = result_of(d)
    assert (state.name, state.exists, fetched) == ("Archive", 7, None)


def test_examine_fetch_reports_a_failed_fetch_and_a_failed_noop() -> None:
    """A refused FETCH is handed back for the caller's retry; a refused NOOP fails the call."""
    wire = opened(exists=3)
    d = run(wire.session.examine_fetch("INBOX", last_two, LISTING))
    wire.sent()
    wire.server(b"0003 OK done\r\n0004 NO [SERVERBUG] cannot parse this message\r\n")
    state, outcome = result_of(d)
    assert state.exists == 3
    assert isinstance(outcome, IMAPError) and "cannot parse" in outcome.message
    d = run(wire.session.examine_fetch("INBOX", last_two, LISTING))
    assert wire.sent().count(b"\r\n") == 2
    wire.server(b"0005 BAD [CLIENTBUG] no\r\n0006 OK done\r\n")
    with pytest.raises(IMAPError, match="no"):
        result_of(d)
    assert not wire.protocol.busy and not wire.protocol.closed


def test_pipelining_never_skips_a_literal_or_a_queue() -> None:
    """A command with a literal waits its turn even when asked to pipeline."""
    from mailmcp.mail.imap._client import RawCommand

    wire = opened(exists=3)
    first = wire.protocol.send(RawCommand(b"NOOP"))
    second = wire.protocol.send(
        RawCommand(b"APPEND", [b' "INBOX" ', Literal(b"x")]), pipeline=True
    )
    assert wire.sent() == b"0003 NOOP\r\n"
    wire.server(b"0003 OK done\r\n")
    assert wire.sent().startswith(b"0004 APPEND ")
    wire.server(b"0004 OK done\r\n")
    assert result_of(first) is not None and result_of(second) is not None


def test_pipelined_commands_may_finish_out_of_order() -> None:
    """A tagged OK for the second command before the first's still completes both."""
    from mailmcp.mail.imap._client import RawCommand

    wire = opened(exists=3)
    first = wire.protocol.send(RawCommand(b"NOOP"))
    second = wire.protocol.send(RawCommand(b"CHECK"), pipeline=True)
    assert wire.sent() == b"0003 NOOP\r\n0004 CHECK\r\n"
    wire.server(b"0004 OK check\r\n")
    assert second.called and not first.called and wire.protocol.busy
    wire.server(b"0003 OK noop\r\n")
    assert first.called and not wire.protocol.busy


def test_examine_fetch_when_the_server_runs_the_fetch_first() -> None:
    """Dovecot's order: FETCH lines and its OK before the NOOP's OK; the page still counts."""
    wire = opened(exists=3)
    d = run(wire.session.examine_fetch("INBOX", last_two, LISTING))
    wire.sent()
    wire.server(
        b"* 2 FETCH (UID 8 FLAGS ())\r\n* 3 FETCH (UID 9 FLAGS ())\r\n"
        b"0004 OK Fetch completed\r\n0003 OK NOOP completed\r\n"
    )
    state, fetched = result_of(d)
    assert state.exists == 3 and [m.uid for m in fetched] == [8, 9]


@pytest.mark.parametrize(
    "news",
    [
        b"* 4 EXISTS\r\n",  # new mail reported after the FETCH ran on the old view
        b"* 1 EXPUNGE\r\n* 3 EXISTS\r\n",  # same count, different messages
        b"* 3 FETCH (FLAGS (\\Flagged))\r\n",  # flags changed by another client
        b"* OK [UIDVALIDITY 9] renumbered\r\n",
    ],
)
def test_examine_fetch_drops_the_page_when_the_noop_brings_news(news: bytes) -> None:
    """Any news from the NOOP makes the pipelined page stale: nothing returned, the caller refetches."""
    wire = opened(exists=3)
    d = run(wire.session.examine_fetch("INBOX", last_two, LISTING))
    wire.sent()
    wire.server(b"* 2 FETCH (UID 8 FLAGS ())\r\n* 3 FETCH (UID 9 FLAGS ())\r\n0004 OK Fetch completed\r\n")
    wire.server(news + b"0003 OK NOOP completed\r\n")
    state, fetched = result_of(d)
    assert fetched is None and state.name == "INBOX"
