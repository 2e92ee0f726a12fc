"""
Catalogue cases (docs/threat-model.rst, TL, MM, S3) that need a tool called
through MCP on a real ``twistd mailmcp``: huge folders on a scripted IMAP
server that logs every command line (TL-L2, TL-S4), UIDs after an expunge
on the real Dovecot (TL-S3), bodies and sender identity delivered through
the real Postfix (TL-T3, TL-T4, TL-T6), hostile attachment servers that must
never be contacted (TL-A3), and attachments of real messages stored in the
real SeaweedFS S3 (MM-08, MM-09, S3-05, S3-06).

Every test ends with the daemon still serving and no error in its log.
"""

from __future__ import annotations

import base64
import email
import email.policy
import imaplib
import json
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.endpoints import TCP4ServerEndpoint

from mailmcp.mail._untrusted import unmark_body
from tests.harness import Services, generate_client, scripted_imap_client
from tests.hostile import mcp_http
from tests.hostile.catalogue import snapshot
from tests.hostile.daemon_clients import error_lines
from tests.hostile.scripted_imap import ScriptedIMAP, ScriptedIMAPFactory
from tests.integration.mail_live import _inbox, fresh_users

pytestmark = pytest.mark.integration

#: UID = sequence number + UID_OFFSET on the big scripted folder, so a
#: sequence number mistaken for a UID is always caught.
UID_OFFSET = 1000


# -- a scripted IMAP server with a huge INBOX ----------------------------------------------------


def _expand(message_set: bytes, low: int, high: int, cap: int = 10_000) -> list[int]:
    """The numbers of an IMAP set within [low, high]; refuses to expand more than C{cap}."""
    out: list[int] = []
    for piece in message_set.split(b","):
        first, _, last = piece.partition(b":")
        a = high if first == b"*" else int(first)
        b = a if not last else (high if last == b"*" else int(last))
        a, b = max(min(a, b), low), min(max(a, b), high)
        if b - a + 1 > cap:
            raise AssertionError(f"unbounded FETCH of {message_set[:80]!r}")
        out.extend(range(a, b + 1))
    return out


class BigFolderIMAP(ScriptedIMAP):
    """`ScriptedIMAP` answering for an INBOX of ``factory.count`` messages (generated, not stored)."""

    factory: BigFolderFactory

    def caps(self) -> bytes:
        return super().caps() + (b" ESEARCH" if self.factory.esearch else b"")

    def lineReceived(self, line: bytes) -> None:
        _, _, rest = line.partition(b" ")
        self.uid_command = rest[:4].upper() == b"UID "
        self.arguments = rest.split(b" ", 2)[-1] if self.uid_command else rest.partition(b" ")[2]
        super().lineReceived(line)

    def answer(self, tag: bytes, verb: bytes) -> None:
        count = self.factory.count
        if verb in (b"EXAMINE", b"SELECT"):
            self.sendLine(b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)")
            self.sendLine(b"* %d EXISTS" % count)
            self.sendLine(b"* OK [UIDVALIDITY 77] ok")
            self.sendLine(b"* OK [UIDNEXT %d] ok" % (count + UID_OFFSET + 1))
        elif verb == b"FETCH":
            message_set = self.arguments.split(b" ", 1)[0]
            if self.uid_command:
                seqs = [
                    u - UID_OFFSET for u in _expand(message_set, UID_OFFSET + 1, UID_OFFSET + count)
                ]
            else:
                seqs = _expand(message_set, 1, count)
            self.transport.write(b"".join(self.summary(seq) for seq in seqs))
        elif verb == b"SEARCH":
            if b"RETURN (ALL)" in self.arguments.upper():
                self.sendLine(
                    b'* ESEARCH (TAG "%s") UID ALL %d:%d'
                    % (tag, UID_OFFSET + 1, UID_OFFSET + count)
                )
            else:
                self.sendLine(
                    b"* SEARCH " + b" ".join(b"%d" % (UID_OFFSET + s) for s in range(1, count + 1))
                )
        elif verb == b"LIST":
            self.sendLine(b'* LIST (\\HasNoChildren) "/" INBOX')
        self.sendLine(tag + b" OK done")

    @staticmethod
    def summary(seq: int) -> bytes:
        uid = seq + UID_OFFSET
        envelope = (
            b'("Tue, 01 Jul 2025 13:30:00 +0000" "message %d" (("Sender" NIL "s" "example.test")) '
            b'(("Sender" NIL "s" "example.test")) (("Sender" NIL "s" "example.test")) '
            b'((NIL NIL "alice" "example.test")) NIL NIL NIL "<m%d@example.test>")' % (uid, uid)
        )
        return (
            b'* %d FETCH (UID %d FLAGS (\\Seen) RFC822.SIZE 300 INTERNALDATE "01-Jul-2025 13:30:00 +0000" '
            b'ENVELOPE %s BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 1))\r\n'
            % (seq, uid, envelope)
        )


class BigFolderFactory(ScriptedIMAPFactory):
    protocol = BigFolderIMAP

    def __init__(self, count: int, esearch: bool) -> None:
        super().__init__("normal")
        self.count = count
        self.esearch = esearch

    def mailbox_lines(self) -> list[bytes]:
        """Every command line after login (what reached "the wire" for the tool)."""
        skip = (b"CAPABILITY", b"LOGIN", b"AUTHENTICATE", b"LOGOUT", b"NOOP", b"ID", b"ENABLE")
        return [
            line
            for line in self.lines
            if line.split(b" ", 1)[-1].split(b" ", 1)[0].upper() not in skip
        ]


@pytest.fixture
def big_folder() -> Iterator[Any]:
    started: list[tuple[BigFolderFactory, Any]] = []

    async def start(count: int, esearch: bool = False) -> tuple[BigFolderFactory, int]:
        factory = BigFolderFactory(count, esearch)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        started.append((factory, port))
        return factory, port.getHost().port

    yield start
    for factory, port in started:
        factory.close_all()
        pytest_twisted.blockon(port.stopListening())


async def scripted_token(daemon: Any, services: Services, port: int, source: str) -> str:
    """A token for a client of C{daemon} whose IMAP server is the scripted one on C{port}."""
    client = scripted_imap_client(daemon.state_dir, port, services)
    login = await threads.deferToThread(
        mcp_http.login, daemon.base_url, client, "alice@example.test", "alicepw", source
    )
    return str(login["access_token"])


def assert_healthy(daemon: Any) -> None:
    assert daemon.stop() == 0
    assert error_lines(daemon) == [], error_lines(daemon)[:3]


@pytest_twisted.ensureDeferred
async def test_list_100000_message_folder_is_one_bounded_fetch(
    services: Services, daemon_factory: Any, big_folder: Any
) -> None:
    """
    TL-L2: list_mail_messages on a 100,000-message folder (scripted IMAP
    server, UID = seq + 1000) answers with ``total`` 100000, ``has_more``
    and exactly ``per_page`` summaries keyed by UID, newest first.  The
    server's command log shows no SEARCH at all (no unbounded ``UID SEARCH
    ALL``), at most one EXAMINE per call (a pooled session may keep the
    folder open) and one FETCH per call whose set is just that page
    (``99901:100000``), and no command line is long.
    """
    factory, port = await big_folder(100_000)
    daemon = daemon_factory(services)
    token = await scripted_token(daemon, services, port, "127.7.0.1")
    factory.lines.clear()
    first = await threads.deferToThread(
        mcp_http.call,
        daemon.base_url,
        token,
        "list_mail_messages",
        {"folder": "INBOX", "per_page": 100},
    )
    assert first.get("isError") is not True, first
    out = first["structuredContent"]
    assert (out["total"], out["per_page"], out["has_more"]) == (100_000, 100, True)
    assert [m["uid"] for m in out["messages"]] == list(
        range(UID_OFFSET + 100_000, UID_OFFSET + 99_900, -1)
    )
    assert out["messages"][0]["subject"] == f"message {UID_OFFSET + 100_000}"
    last = await threads.deferToThread(
        mcp_http.call,
        daemon.base_url,
        token,
        "list_mail_messages",
        {"folder": "INBOX", "per_page": 100, "page": 1000},
    )
    assert last["structuredContent"]["has_more"] is False
    assert [m["uid"] for m in last["structuredContent"]["messages"]] == list(
        range(UID_OFFSET + 100, UID_OFFSET, -1)
    )
    commands = factory.mailbox_lines()
    assert not any(b"SEARCH" in line.upper() for line in commands), commands
    fetches = [line for line in commands if b"FETCH" in line.upper()]
    assert [line.split(b" ")[2] for line in fetches] == [b"99901:100000", b"1:100"], fetches
    assert sum(
        1 for line in commands if b"EXAMINE" in line.upper() or b"SELECT" in line.upper()
    ) in (1, 2)
    assert max(len(line) for line in factory.lines) < 1000
    assert_healthy(daemon)


@pytest.mark.parametrize(
    "count, esearch", [(100_000, False), (200_000, True)], ids=["100000-SEARCH", "200000-ESEARCH"]
)
@pytest_twisted.ensureDeferred
async def test_search_matching_every_message_is_truncated(
    services: Services, daemon_factory: Any, big_folder: Any, count: int, esearch: bool
) -> None:
    """
    TL-S4: a search that matches every message of a 100,000-message folder
    (plain ``* SEARCH`` answer) or a 200,000-message one (``ESEARCH``) returns
    the newest ``limit`` UIDs with ``total`` = all matches, ``returned`` =
    ``limit`` and ``truncated: true``.  The server sees exactly one SEARCH
    (the criteria asked for) and one FETCH whose set covers only the
    ``limit`` returned UIDs -- never the whole result.
    """
    factory, port = await big_folder(count, esearch)
    daemon = daemon_factory(services)
    token = await scripted_token(daemon, services, port, "127.7.0.2")
    factory.lines.clear()
    result = await threads.deferToThread(
        mcp_http.call,
        daemon.base_url,
        token,
        "search_mail_messages",
        {"folder": "INBOX", "query": "FROM sender", "limit": 40},
    )
    assert result.get("isError") is not True, result
    out = result["structuredContent"]
    newest = UID_OFFSET + count
    assert (out["total"], out["returned"], out["truncated"]) == (count, 40, True)
    assert out["uids"] == list(range(newest, newest - 40, -1))
    assert [m["uid"] for m in out["messages"]] == out["uids"]
    commands = factory.mailbox_lines()
    searches = [line for line in commands if b"SEARCH" in line.upper()]
    assert len(searches) == 1 and searches[0].endswith(b'FROM "sender"'), searches
    assert (b"RETURN (ALL)" in searches[0].upper()) is esearch
    fetches = [line for line in commands if b"FETCH" in line.upper()]
    assert len(fetches) == 1, fetches
    assert fetches[0].split(b" ")[3] == b"%d:%d" % (newest - 39, newest), fetches
    assert_healthy(daemon)


# -- real Dovecot and Postfix ----------------------------------------------------------------------


def _imap(services: Services, user: str, password: str) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        "localhost",
        services.imaps_port,
        ssl_context=ssl.create_default_context(cafile=str(services.ca_file)),
    )
    client.login(user, password)
    return client


def wait_for_inbox(
    services: Services, user: str, password: str, timeout: float = 30.0
) -> list[bytes]:
    """C{user}'s INBOX once it holds a message (Postfix delivers asynchronously); a hang guard only."""
    deadline = time.monotonic() + timeout
    while True:
        messages = _inbox(services, user, password)
        if messages or time.monotonic() > deadline:
            return messages
        time.sleep(0.2)


def _refusal(message: dict[str, Any] | None) -> str:
    """The reason of a refused tools/call: a -32602 error or an isError result (else fail)."""
    assert message is not None
    if "error" in message:
        assert message["error"]["code"] == -32602, message
        return json.dumps(message["error"]).lower()
    assert message["result"]["isError"] is True, message
    return mcp_http.text_of(message["result"]).lower()


def _user_token(daemon: Any, services: Services, user: str, password: str, source: str) -> str:
    client = generate_client(daemon.state_dir, services)
    return str(mcp_http.login(daemon.base_url, client, user, password, source)["access_token"])


def test_search_after_expunge_returns_uids_not_sequence_numbers(
    services: Services, daemon_factory: Any
) -> None:
    """
    TL-S3: in a Dovecot folder where sequence numbers and UIDs differ (UIDs
    1, 2 and 4 of six expunged by another client), search returns the UIDs
    3, 5, 6 -- not the sequence numbers 1..3 -- each summary carries the
    subject of that UID, get_mail_message(uid) returns the matching
    message, and a UID that exists only as a sequence number (2) is "no
    message" rather than another message.
    """
    [(user, password)] = fresh_users(services, 1)
    for i in range(1, 7):
        services.deliver(
            user,
            f"From: a@example.test\r\nTo: {user}\r\nSubject: seq case {i}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n\r\nbody of {i}\r\n".encode(),
        )
    with _imap(services, user, password) as other:
        other.select("INBOX")
        other.uid("STORE", "1,2,4", "+FLAGS.SILENT", "(\\Deleted)")
        other.expunge()
    daemon = daemon_factory(services)
    token = _user_token(daemon, services, user, password, "127.7.1.1")
    found = mcp_http.call(daemon.base_url, token, "search_mail_messages", {"subject": "seq case"})
    assert found.get("isError") is not True, found
    out = found["structuredContent"]
    assert out["uids"] == [6, 5, 3] and out["total"] == 3 and out["truncated"] is False
    assert [(m["uid"], m["subject"]) for m in out["messages"]] == [
        (6, "seq case 6"),
        (5, "seq case 5"),
        (3, "seq case 3"),
    ]
    one = mcp_http.call(
        daemon.base_url, token, "search_mail_messages", {"query": 'SUBJECT "seq case 5"'}
    )
    assert one["structuredContent"]["uids"] == [5]
    message = mcp_http.call(
        daemon.base_url, token, "get_mail_message", {"folder": "INBOX", "uid": 5}
    )
    assert message["structuredContent"]["subject"] == "seq case 5"
    assert "body of 5" in unmark_body(message["structuredContent"]["body"])
    gone = mcp_http.call(daemon.base_url, token, "get_mail_message", {"folder": "INBOX", "uid": 2})
    assert gone["isError"] is True and "uid 2" in mcp_http.text_of(gone).lower()
    assert_healthy(daemon)


def _dot_body() -> str:
    """A body with every dot-stuffing trap: lone dots, CRLF.CRLF, bare CR/LF, a 5,000-char line, and
    ``.`` lines at each offset from 16,380 to 16,390 (across the 16 KiB chunk boundary)."""
    head = (
        "first\n.\nsecond\r\n.\r\nMAIL FROM:<x@evil.test>\r\nRCPT TO:<y@evil.test>\r\nthird\r.\rfourth\n"
        "..two dots\n. dot space\n" + "y" * 5000 + "\n"
    )
    pad = 16380 - len(head) - 1
    body = head + "p" * pad + "\n"
    assert len(body) == 16380
    for _ in range(6):
        body += ".\n"  # a dot line at 16380, 16382, ... 16390
    body += "x\n.\n" * 3 + "tail\n.\n.."
    return body


def _text_part(raw: bytes, subtype: str = "plain") -> str:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    part = parsed.get_body(preferencelist=(subtype,))
    assert part is not None, raw[:2000]
    content = part.get_content()
    assert isinstance(content, str)
    return content


def test_body_size_cap_and_dot_stuffing_arrive_byte_exact(
    services: Services, daemon_factory: Any
) -> None:
    """
    TL-T3: a 30 MiB ``text_body`` is refused (-32602 naming text_body) and
    nothing is sent; a body full of dot-stuffing traps (lone ``.`` lines,
    ``\\r\\n.\\r\\n`` followed by ``MAIL FROM``, bare CR and LF, a 5,000-char
    line, dot lines at offsets 16,380-16,390) goes through the real Postfix
    as exactly one message, whose decoded text equals what was sent (line
    ends normalised to LF), with no bare CR or LF on the wire copy, and no
    second (smuggled) message arrives.
    """
    (user, password), (rcpt, rcpt_pw) = fresh_users(services, 2)
    daemon = daemon_factory(services)
    token = _user_token(daemon, services, user, password, "127.7.1.2")
    status, huge = mcp_http.rpc(
        daemon.base_url,
        token,
        "tools/call",
        {
            "name": "send_mail_message",
            "arguments": {"to": rcpt, "subject": "huge", "text_body": "a" * (30 << 20)},
        },
        timeout=120,
    )
    assert status == 200
    assert "text_body" in _refusal(huge)
    body = _dot_body()
    sent = mcp_http.call(
        daemon.base_url,
        token,
        "send_mail_message",
        {"to": rcpt, "subject": "dots", "text_body": body},
    )
    assert sent.get("isError") is not True, sent
    [raw] = wait_for_inbox(services, rcpt, rcpt_pw)
    text = _text_part(raw)
    assert (
        re.search("\r(?!\n)|(?<!\r)\n", text) is None
    )  # CRLF line ends only, in the decoded text too
    assert text.replace("\r\n", "\n").rstrip("\n") == body.replace("\r\n", "\n").replace("\r", "\n")
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", raw) is None
    time.sleep(1.0)  # a smuggled second transaction would have been delivered by now
    received = _inbox(services, rcpt, rcpt_pw)
    assert len(received) == 1 and b"Subject: huge" not in received[0]
    assert_healthy(daemon)


def test_html_body_with_script_is_sent_as_given_never_rendered(
    services: Services, daemon_factory: Any
) -> None:
    """
    TL-T4: an ``html_body`` holding ``<script>`` is the user's own mail: the
    recipient receives the HTML part exactly as given (script included),
    as the only body part (an HTML-only send carries no blank text/plain
    alternative that readers would show instead).
    mailmcp itself never renders it: reading that message back through
    get_mail_message gives text (body_format text/html converted), with no
    script element and no script code.
    """
    (user, password), (rcpt, rcpt_pw) = fresh_users(services, 2)
    daemon = daemon_factory(services)
    token = _user_token(daemon, services, user, password, "127.7.1.3")
    html = '<html><body><p>Hello <b>there</b></p><script>alert("owned")</script></body></html>'
    sent = mcp_http.call(
        daemon.base_url,
        token,
        "send_mail_message",
        {"to": rcpt, "subject": "html", "text_body": "", "html_body": html},
    )
    assert sent.get("isError") is not True, sent
    [raw] = wait_for_inbox(services, rcpt, rcpt_pw)
    assert _text_part(raw, "html").rstrip("\r\n") == html
    assert (
        email.message_from_bytes(raw, policy=email.policy.default).get_content_type() == "text/html"
    )
    rcpt_token = _user_token(daemon, services, rcpt, rcpt_pw, "127.7.1.4")
    [uid] = mcp_http.call(daemon.base_url, rcpt_token, "search_mail_messages", {"subject": "html"})[
        "structuredContent"
    ]["uids"]
    read = mcp_http.call(
        daemon.base_url, rcpt_token, "get_mail_message", {"folder": "INBOX", "uid": uid}
    )
    out = read["structuredContent"]
    assert out["body_format"] == "text/html"
    assert "Hello" in unmark_body(out["body"]) and "there" in unmark_body(out["body"])
    assert "<script" not in unmark_body(out["body"]) and "alert(" not in unmark_body(out["body"])
    assert_healthy(daemon)


def test_sender_identity_cannot_be_overridden(services: Services, daemon_factory: Any) -> None:
    """
    TL-T6: send_mail_message has no sender parameter.  ``from``, ``email``,
    ``sender`` and ``reply_to`` override attempts are refused (-32602 naming
    the field) and send nothing; a normal send arrives through Postfix with
    ``From`` and the envelope sender (``Return-Path``) both the
    authenticated user.
    """
    (user, password), (rcpt, rcpt_pw) = fresh_users(services, 2)
    daemon = daemon_factory(services)
    token = _user_token(daemon, services, user, password, "127.7.1.5")
    schema = next(
        t
        for t in mcp_http.rpc(daemon.base_url, token, "tools/list")[1]["result"]["tools"]  # type: ignore[index]
        if t["name"] == "send_mail_message"
    )["inputSchema"]
    assert not {"from", "email", "sender", "from_"} & set(schema["properties"]), schema[
        "properties"
    ].keys()
    for field in ("from", "email", "sender", "from_"):
        _, refused = mcp_http.rpc(
            daemon.base_url,
            token,
            "tools/call",
            {
                "name": "send_mail_message",
                "arguments": {
                    "to": rcpt,
                    "subject": f"spoof {field}",
                    "text_body": "x",
                    field: "ceo@evil.test",
                },
            },
        )
        assert field in _refusal(refused), refused
    sent = mcp_http.call(
        daemon.base_url,
        token,
        "send_mail_message",
        {"to": rcpt, "subject": "genuine", "text_body": "hello"},
    )
    assert sent.get("isError") is not True, sent
    [raw] = wait_for_inbox(services, rcpt, rcpt_pw)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == "genuine"
    assert [a.addr_spec for a in parsed["From"].addresses] == [user]
    assert parsed["Return-Path"].strip("<>") == user
    assert b"evil.test" not in raw
    assert_healthy(daemon)


# -- attachment sources that must never be fetched (TL-A3) -----------------------------------------


class HostileSourceHandler(BaseHTTPRequestHandler):
    """
    A hostile attachment source: ``/10gib`` streams 10 GiB, ``/slow`` sends
    one byte a second, ``/cl1`` says ``Content-Length: 1`` then streams,
    ``/gzip`` is a gzip bomb (``Content-Encoding: gzip``), ``/ok`` answers
    at once.  Streams stop when the client goes away (or after 60 s).
    """

    server: HostileSourceServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/ok":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if self.path == "/10gib":
            self.send_header("Content-Length", str(10 << 30))
        elif self.path == "/cl1":
            self.send_header("Content-Length", "1")
        elif self.path == "/gzip":
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        chunk = b"\x1f\x8b\x08\x00" + b"\x00" * 65532 if self.path == "/gzip" else b"z" * 65536
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline and not self.server.closing:
                if self.path == "/slow":
                    self.wfile.write(b"s")
                    time.sleep(1.0)
                else:
                    self.wfile.write(chunk)
        except OSError:
            pass


class HostileSourceServer(ThreadingHTTPServer):
    daemon_threads = True
    closing = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HostileSourceHandler)
        self.connections = 0

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True


@pytest.fixture
def hostile_source() -> Iterator[HostileSourceServer]:
    server = HostileSourceServer()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    yield server
    server.closing = True
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_hostile_attachment_sources_are_never_fetched(
    services: Services, daemon_factory: Any, hostile_source: HostileSourceServer
) -> None:
    """
    TL-A3: a 10 GiB source, a slowloris (1 byte/s), ``Content-Length: 1``
    followed by an endless body, and a gzip bomb, each given as
    ``attachment_urls`` to send_mail_message and create_draft_mail_message.
    By design mailmcp makes no outbound fetch at all: ``attachment_urls``
    accepts only live links it issued itself to the caller (checked without
    I/O, then read from its own store; mailmcp.attachments._helpers
    .resolve_attachment_urls), so there is no byte cap or deadline to hit.
    Each call is refused naming the attachment, the hostile server records
    0 connections (it does count: one direct request is seen), nothing is
    sent or filed, and the daemon keeps serving.
    """
    (user, password), (rcpt, rcpt_pw) = fresh_users(services, 2)
    daemon = daemon_factory(services)
    token = _user_token(daemon, services, user, password, "127.7.2.1")
    before = snapshot(services, user, password)
    port = hostile_source.server_address[1]
    urls = [f"http://127.0.0.1:{port}/{p}" for p in ("10gib", "slow", "cl1", "gzip")]
    urls += [f"http://localhost:{port}/gzip", f"https://127.0.0.1:{port}/10gib"]
    for tool in ("send_mail_message", "create_draft_mail_message"):
        for url in urls:
            status, message = mcp_http.rpc(
                daemon.base_url,
                token,
                "tools/call",
                {
                    "name": tool,
                    "arguments": {
                        "to": rcpt,
                        "subject": "att",
                        "text_body": "x",
                        "attachment_urls": [url],
                    },
                },
                timeout=60,
            )
            assert status == 200
            reason = _refusal(message)
            assert "attachment" in reason, reason
    assert hostile_source.connections == 0
    assert snapshot(services, user, password) == before
    assert _inbox(services, rcpt, rcpt_pw) == []
    normal = mcp_http.call(daemon.base_url, token, "list_mail_messages", {"folder": "INBOX"})
    assert normal.get("isError") is not True
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ok", timeout=10) as response:
        assert response.read() == b"ok"
    assert hostile_source.connections == 1
    assert_healthy(daemon)


# -- attachments of real messages in the real SeaweedFS S3 -----------------------------------------

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testkey",
    "AWS_SECRET_ACCESS_KEY": "testsecret",
    "AWS_REGION": "us-east-1",
}
LINK_LIFETIME = 600


def s3_daemon(daemon_factory: Any, services: Services, prefix: str, *extra: str, **kw: Any) -> Any:
    env = dict(S3_ENV, MAILMCP_S3_ENDPOINT=services.s3_endpoint)
    return daemon_factory(
        services,
        "--attachments",
        f"s3://attachments/{prefix}",
        "--attachment-link-lifetime",
        str(LINK_LIFETIME),
        *extra,
        env=env,
        **kw,
    )


def s3_keys(services: Services, prefix: str) -> list[str]:
    from mailmcp.attachments import make_s3_client

    client, _ = make_s3_client(dict(S3_ENV, MAILMCP_S3_ENDPOINT=services.s3_endpoint))
    response = client.list_objects_v2(Bucket="attachments", Prefix=prefix + "/")
    return sorted(item["Key"] for item in response.get("Contents", []))


def with_attachments(to: str, subject: str, parts: list[tuple[str, str, bytes]]) -> bytes:
    """A multipart/mixed message: a text body, then (filename, content type, data) attachments, base64."""
    boundary = "b-" + uuid.uuid4().hex
    out = [
        f"From: Sender <sender@example.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe body text survives.\r\n".encode()
    ]
    for filename, content_type, data in parts:
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
        out.append(
            f'--{boundary}\r\nContent-Type: {content_type}; name="{filename}"\r\n'
            f'Content-Disposition: attachment; filename="{filename}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n".encode()
            + encoded
        )
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def http_get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def with_query(url: str, **changes: str | None) -> str:
    """C{url} with query parameters replaced (None: removed), the rest as they were."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


HTML_PAYLOAD = b"<html><script>alert(document.cookie)</script></html>"
SVG_PAYLOAD = (
    b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'
)


def test_active_attachments_stored_inert_once_with_signed_disposition(
    s3: Services, daemon_factory: Any
) -> None:
    """
    Through MCP on a daemon with ``--attachments s3://…`` (SeaweedFS, which
    checks signatures) and ``--attachment-link-lifetime 600``, a message
    with a ``text/html`` and an ``image/svg+xml`` attachment:

    MM-08: both are stored as ``application/octet-stream`` objects and the
    links download them byte for byte as ``application/octet-stream`` with
    ``Content-Disposition: attachment``.

    S3-05: reading the message again, asking for a link, and reading it
    once more from a restarted daemon (empty in-process caches) creates no
    second object: the bucket holds exactly the two objects.

    S3-06: every link expires within the configured 600 s even when a
    longer lifetime is asked for; ``response-content-disposition=attachment``
    is part of what is signed: changing it to ``inline`` or dropping it
    makes S3 refuse the link (403).
    """
    from mailmcp.attachments import make_s3_client

    services = s3
    [(user, password)] = fresh_users(services, 1)
    services.deliver(
        user,
        with_attachments(
            user,
            "active",
            [("page.html", "text/html", HTML_PAYLOAD), ("logo.svg", "image/svg+xml", SVG_PAYLOAD)],
        ),
    )
    prefix = "cat-" + uuid.uuid4().hex[:8]
    daemon = s3_daemon(daemon_factory, services, prefix)
    token = _user_token(daemon, services, user, password, "127.7.3.1")
    read = mcp_http.call(daemon.base_url, token, "get_mail_message", {"folder": "INBOX", "uid": 1})
    out = read["structuredContent"]
    assert "The body text survives." in unmark_body(out["body"])
    by_name = {a["filename"]: a for a in out["attachments"]}
    assert set(by_name) == {"page.html", "logo.svg"}
    payloads = {"page.html": HTML_PAYLOAD, "logo.svg": SVG_PAYLOAD}
    # MM-08
    for name, attachment in by_name.items():
        assert attachment["url"], attachment
        status, headers, body = http_get(attachment["url"])
        assert status == 200 and body == payloads[name]
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"].startswith("attachment;")
    keys = s3_keys(services, prefix)
    assert len(keys) == 2
    client, _ = make_s3_client(dict(S3_ENV, MAILMCP_S3_ENDPOINT=services.s3_endpoint))
    for key in keys:
        assert (
            client.head_object(Bucket="attachments", Key=key)["ContentType"]
            == "application/octet-stream"
        )
        assert "html" not in key and "svg" not in key
    # S3-06
    html_part = by_name["page.html"]["part_id"]
    link = mcp_http.call(
        daemon.base_url,
        token,
        "get_mail_attachment_link",
        {"folder": "INBOX", "uid": 1, "part": html_part, "lifetime": 86400},
    )
    assert link.get("isError") is not True, link
    urls = [a["url"] for a in by_name.values()] + [link["structuredContent"]["url"]]
    for url in urls:
        query = parse_qs(urlsplit(url).query)
        assert 0 < int(query["X-Amz-Expires"][0]) <= LINK_LIFETIME
        assert query["response-content-disposition"][0].startswith("attachment;")
    url = link["structuredContent"]["url"]
    assert http_get(url)[0] == 200
    disposition = parse_qs(urlsplit(url).query)["response-content-disposition"][0]
    inline = disposition.replace("attachment", "inline", 1)
    assert http_get(with_query(url, **{"response-content-disposition": inline}))[0] == 403
    assert http_get(with_query(url, **{"response-content-disposition": None}))[0] == 403
    assert http_get(with_query(url, **{"X-Amz-Expires": "604800"}))[0] == 403
    # S3-05
    again = mcp_http.call(daemon.base_url, token, "get_mail_message", {"folder": "INBOX", "uid": 1})
    assert all(a["url"] for a in again["structuredContent"]["attachments"])
    assert s3_keys(services, prefix) == keys
    assert_healthy(daemon)
    # Same state and base URL: the same grant (owner) and token, on a new process.
    restarted = s3_daemon(
        daemon_factory, services, prefix, "--base-url", daemon.base_url, state_dir=daemon.state_dir
    )
    third = mcp_http.call(
        restarted.base_url, token, "get_mail_message", {"folder": "INBOX", "uid": 1}
    )
    assert all(a["url"] for a in third["structuredContent"]["attachments"]), third
    assert s3_keys(services, prefix) == keys
    assert_healthy(restarted)


def _mm09_setup(s3: Services, daemon_factory: Any, source: str) -> tuple[Any, str, str, str]:
    """A user with a 60 MB-attachment message (UID 1) and a 1,000-attachment one (UID 2), and an S3 daemon."""
    [(user, password)] = fresh_users(s3, 1)
    s3.deliver(
        user,
        with_attachments(
            user, "huge", [("big.bin", "application/octet-stream", os.urandom(60 * 1000 * 1000))]
        ),
    )
    s3.deliver(
        user,
        with_attachments(
            user,
            "many",
            [(f"f{i}.txt", "application/octet-stream", b"attachment %d" % i) for i in range(1000)],
        ),
    )
    prefix = "mm09-" + uuid.uuid4().hex[:8]
    daemon = s3_daemon(daemon_factory, s3, prefix)
    return daemon, _user_token(daemon, s3, user, password, source), prefix, user


def test_attachment_caps_keep_the_body(s3: Services, daemon_factory: Any) -> None:
    """
    MM-09: a message with one 60 MB attachment and one with 1,000
    attachments, read through MCP on an S3 daemon (25 MB and 20-attachment
    default caps).  The text body is still returned in full; the 60 MB
    attachment is listed with its size but gets no link and is never
    uploaded; of the 1,000 at most the count cap get links (and objects),
    the listing itself is capped with a warning.
    """
    daemon, token, prefix, _ = _mm09_setup(s3, daemon_factory, "127.7.4.1")
    huge = mcp_http.call(
        daemon.base_url, token, "get_mail_message", {"folder": "INBOX", "uid": 1}, timeout=120
    )
    assert huge.get("isError") is not True, huge
    out = huge["structuredContent"]
    assert unmark_body(out["body"]).strip() == "The body text survives." and out["truncated"] is False
    [big] = out["attachments"]
    assert big["filename"] == "big.bin" and big["size"] > 60 * 1000 * 1000 and big["url"] is None
    assert s3_keys(s3, prefix) == []
    many = mcp_http.call(
        daemon.base_url, token, "get_mail_message", {"folder": "INBOX", "uid": 2}, timeout=120
    )
    assert many.get("isError") is not True, many
    out = many["structuredContent"]
    assert unmark_body(out["body"]).strip() == "The body text survives."
    assert 20 <= len(out["attachments"]) < 1000
    assert any("parts" in w for w in out["warnings"]), out["warnings"]
    linked = [a for a in out["attachments"] if a["url"]]
    assert len(linked) == 20
    assert len(s3_keys(s3, prefix)) == 20
    assert_healthy(daemon)


def test_attachment_caps_are_explained(s3: Services, daemon_factory: Any) -> None:
    """
    MM-09: the catalogue's "attachment too large (N MB), not uploaded" --
    an attachment left without a link says why, in the text the model sees
    as well as in the structured result: the 60 MB one names the byte cap
    (its ``link_error`` and a warning), the attachments past the count cap
    say "too many attachments" (one warning for all of them, not 980).
    """
    daemon, token, _, _ = _mm09_setup(s3, daemon_factory, "127.7.4.2")
    huge = mcp_http.call(
        daemon.base_url, token, "get_mail_message", {"folder": "INBOX", "uid": 1}, timeout=120
    )
    text = mcp_http.text_of(huge).lower()
    assert "too large" in text or "byte cap" in text, text[:2000]
    [big] = huge["structuredContent"]["attachments"]
    assert big["url"] is None and "cap" in (big.get("link_error") or ""), big
    assert any("without a download link" in w for w in huge["structuredContent"]["warnings"])
    many = mcp_http.call(
        daemon.base_url, token, "get_mail_message", {"folder": "INBOX", "uid": 2}, timeout=120
    )
    warnings = many["structuredContent"]["warnings"]
    assert sum("too many attachments" in w for w in warnings) == 1, warnings
    unlinked = [a for a in many["structuredContent"]["attachments"] if a["url"] is None]
    assert unlinked and all("too many attachments" in (a.get("link_error") or "") for a in unlinked)
    assert_healthy(daemon)


# -- the S3 store itself (S3-01, S3-03) ------------------------------------------------------------


class SlowDownProxyHandler(BaseHTTPRequestHandler):
    """Forwards to the real SeaweedFS unchanged (Host included, so SigV4 still holds), except that the
    first ``server.slowdowns`` PutObject requests are answered ``503 SlowDown``."""

    protocol_version = "HTTP/1.1"
    server: SlowDownProxy
    SLOWDOWN = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def relay(self) -> None:
        import http.client

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(self.command)
        if self.command == "PUT" and self.server.slowdowns > 0:
            self.server.slowdowns -= 1
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(self.SLOWDOWN)))
            self.end_headers()
            self.wfile.write(self.SLOWDOWN)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        try:
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in ("expect", "connection")
            }
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            length = (
                response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            )
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = relay


class SlowDownProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), SlowDownProxyHandler)
        self.upstream_port = upstream_port
        self.slowdowns = 0
        self.requests: list[str] = []


@pytest.fixture
def slowdown_proxy(s3: Services) -> Iterator[SlowDownProxy]:
    proxy = SlowDownProxy(s3.s3_port)
    thread = threading.Thread(
        target=proxy.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()
    thread.join(10)


@pytest.fixture
def store_pool() -> Iterator[Any]:
    from twisted.python.threadpool import ThreadPool

    pool = ThreadPool(minthreads=0, maxthreads=2, name="catalogue-s3")
    pool.start()
    yield pool
    pool.stop()


@pytest_twisted.ensureDeferred
async def test_s3_slowdown_is_retried_a_bounded_number_of_times(
    s3: Services, slowdown_proxy: SlowDownProxy, store_pool: Any
) -> None:
    """
    S3-01: the S3 store built as the daemon builds it (``make_s3_client``,
    ``MAILMCP_S3_ENDPOINT``) talks to the real SeaweedFS through a loopback
    proxy that answers PutObject ``503 SlowDown`` three times: the fourth
    attempt stores the object (botocore's standard retry mode: bounded,
    exponential backoff with jitter; ``retries={"max_attempts": 3}`` there
    means three retries, four attempts in all).  When S3 keeps answering SlowDown the
    put fails with "storage unavailable" after exactly the same bounded
    number of attempts -- never a retry loop.
    """
    from mailmcp.attachments import AttachmentError, S3AttachmentStore, S3Settings, make_s3_client
    from mailmcp.oauth._keyring import KeyRing, new_master_key

    proxy = slowdown_proxy
    client, credentials = make_s3_client(
        dict(S3_ENV, MAILMCP_S3_ENDPOINT=f"http://127.0.0.1:{proxy.server_port}")
    )
    prefix = "slow-" + uuid.uuid4().hex[:8]
    store = S3AttachmentStore(
        client,
        credentials,
        S3Settings(f"s3://attachments/{prefix}"),
        KeyRing([new_master_key()]),
        reactor,
        store_pool,
    )
    proxy.slowdowns = 3
    stored = await store.put("grant-slow", b"retried content", "text/plain")
    assert proxy.requests.count("PUT") == 4 and proxy.slowdowns == 0
    assert stored.created and store.puts == 1
    assert s3_keys(s3, prefix) == [stored.key]
    proxy.requests.clear()
    proxy.slowdowns = 1000
    with pytest.raises(AttachmentError, match="unavailable"):
        await store.put("grant-slow", b"never stored", "text/plain")
    assert proxy.requests.count("PUT") == 4
    assert s3_keys(s3, prefix) == [stored.key]


class ExpiringSTS:
    """
    A botocore credential provider handing out refreshable (STS-style)
    credentials on a clock the test moves; once they are past their expiry
    the refresh fails, as when STS is unreachable or the role was revoked.
    """

    METHOD = "catalogue-sts"
    CANONICAL_NAME = "catalogue-sts"

    def __init__(self) -> None:
        import datetime

        self.now = datetime.datetime.now(datetime.UTC)
        self.expiry = self.now + datetime.timedelta(hours=1)
        self.refreshes = 0

    def refresh(self) -> dict[str, str]:
        self.refreshes += 1
        raise RuntimeError("STS unreachable: credentials could not be refreshed")

    def load(self) -> Any:
        from botocore.credentials import RefreshableCredentials

        return RefreshableCredentials(
            access_key=S3_ENV["AWS_ACCESS_KEY_ID"],
            secret_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            token=None,
            expiry_time=self.expiry,
            refresh_using=self.refresh,
            method=self.METHOD,
            time_fetcher=lambda: self.now,
        )

    def expire(self) -> None:
        import datetime

        self.now = self.expiry + datetime.timedelta(minutes=5)


def sts_store(s3: Services, sts: ExpiringSTS, prefix: str, pool: Any) -> Any:
    """An S3 store whose boto3 client gets its credentials from C{sts} (client options as make_s3_client)."""
    import boto3
    import botocore.session
    from botocore.config import Config as BotoConfig

    from mailmcp.attachments import S3AttachmentStore, S3Settings
    from mailmcp.oauth._keyring import KeyRing, new_master_key

    core = botocore.session.Session()
    core.get_component("credential_provider").insert_before("env", sts)
    session = boto3.session.Session(botocore_session=core, region_name="us-east-1")
    client = session.client(
        "s3",
        endpoint_url=s3.s3_endpoint,
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )
    credentials = session.get_credentials()
    return S3AttachmentStore(
        client,
        credentials.get_frozen_credentials,
        S3Settings(f"s3://attachments/{prefix}"),
        KeyRing([new_master_key()]),
        reactor,
        pool,
        link_lifetime=600,
    )


@pytest_twisted.ensureDeferred
async def test_expired_credentials_give_a_clear_error_and_no_dead_link(
    s3: Services, store_pool: Any
) -> None:
    """
    S3-03: with STS-style credentials that have expired and cannot be
    refreshed, minting a link for an object stored earlier, storing new
    content and checking a link all fail with the store's clear
    "storage unavailable" `AttachmentError` -- never a botocore exception
    and never a URL (which S3 would refuse).  Through get_mail_message on
    the real Dovecot, an attachment read before the expiry (so known to the
    stored-part index) and one never read come back with ``url: null`` while
    the body is still returned; nothing new reaches the bucket.
    """
    from mailmcp._account import MailAccount
    from mailmcp._tls import MailTLS
    from mailmcp._toolkit import ToolContext
    from mailmcp.attachments import AttachmentError
    from mailmcp.attachments._helpers import StoredPartIndex, store_and_link
    from mailmcp.mail.imap import IMAPPool
    from mailmcp.oauth._clients import MailServer
    from mailmcp.testing import tool_services
    from mailmcp.tools._reading import GetMessageInput, get_mail_message

    sts = ExpiringSTS()
    prefix = "sts-" + uuid.uuid4().hex[:8]
    store = sts_store(s3, sts, prefix, store_pool)
    [(user, password)] = fresh_users(s3, 1)
    s3.deliver(
        user,
        with_attachments(user, "one", [("a.bin", "application/octet-stream", b"first attachment")]),
    )
    s3.deliver(
        user,
        with_attachments(
            user, "two", [("b.bin", "application/octet-stream", b"second attachment")]
        ),
    )
    account = MailAccount(
        owner="grant-" + uuid.uuid4().hex,
        email=user,
        full_name="STS",
        imap=MailServer(host="localhost", port=s3.imaps_port, security="tls"),
        imap_username=user,
        imap_password=password,
        smtp=MailServer(host="localhost", port=s3.smtps_port, security="tls"),
        smtp_username=user,
        smtp_password=password,
    )
    imap = IMAPPool(reactor, MailTLS(s3.ca_file), command_timeout=15.0)
    ctx = ToolContext(
        account=account,
        services=tool_services(
            reactor=reactor,
            imap=imap,
            attachments=store,
            attachment_index=StoredPartIndex(),
        ),
    )
    try:
        before = await get_mail_message(ctx, GetMessageInput(folder="INBOX", uid=1))
        [attachment] = before.attachments
        assert attachment.url and http_get(attachment.url)[0] == 200
        obj = await store.put(account.owner, b"stored before expiry", "text/plain")
        live = store.link(account.owner, obj, "x.txt", "text/plain")
        keys = s3_keys(s3, prefix)
        assert len(keys) == 2

        sts.expire()
        with pytest.raises(AttachmentError, match="unavailable"):
            store.link(account.owner, obj, "x.txt", "text/plain")
        with pytest.raises(AttachmentError, match="unavailable"):
            await store.put(account.owner, b"new after expiry", "text/plain")
        with pytest.raises(AttachmentError):
            store.check(account.owner, live)
        linked = await store_and_link(ctx, b"also new", "y.txt", "text/plain")
        assert linked.url is None and "unavailable" in (linked.error or "")
        for uid in (1, 2):
            after = await get_mail_message(ctx, GetMessageInput(folder="INBOX", uid=uid))
            assert "The body text survives." in unmark_body(after.body)
            assert [a.url for a in after.attachments] == [None]
            assert "unavailable" in (after.attachments[0].link_error or ""), after.attachments
        assert sts.refreshes >= 1
        assert s3_keys(s3, prefix) == keys
    finally:
        if imap.running or imap.open_connections:
            await imap.stopService()
