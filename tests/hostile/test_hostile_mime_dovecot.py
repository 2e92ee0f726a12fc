"""
Hostile messages (docs/threat-model.rst, MM) stored in the real Dovecot and read
through the real IMAP pool and the reading tools, for the cases the other
suites do not drive through a real server: encoded-word bombs (MM-03),
unknown charsets and UTF-16 without a BOM (MM-04), garbage base64 (MM-05),
deep ``message/rfc822`` and broken boundaries (MM-10), huge headers
(MM-11), address bombs and confusing display names (MM-12), a large
HTML-only body (MM-14), absurd dates (MM-15) and RFC 2047 in the listing
(MM-16).

Each: listing and reading answer without an exception, within a few
seconds, with bounded output, and the next call works.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
import pytest_twisted

from mailmcp.mail._untrusted import unmark_body
from mailmcp.tools._reading import (
    GetMessageInput,
    ListMessagesInput,
    get_mail_message,
    list_mail_messages,
)
from tests.harness import Services
from tests.integration.dovecot_wire import Wire

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loaded(services: Services) -> Iterator[tuple[Wire, dict[str, int]]]:
    """One fresh account holding every hostile message; maps case id to UID."""
    wire = Wire(services)
    uids: dict[str, int] = {}
    for index, (case, raw) in enumerate(MESSAGES.items(), start=1):
        wire.deliver(raw)
        uids[case] = index
    yield wire, uids
    pytest_twisted.blockon(wire.pool.stopService())


def head(subject: str, extra: str = "", content_type: str = "text/plain; charset=utf-8") -> bytes:
    return (f"From: Hostile <h@example.test>\r\nTo: victim@example.test\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Jul 2025 13:30:00 +0000\r\nMIME-Version: 1.0\r\n{extra}"
            f"Content-Type: {content_type}\r\n").encode()


def rfc822_nest(depth: int) -> bytes:
    inner = b"Subject: core\r\n\r\ncore text\r\n"
    for _ in range(depth):
        inner = b"Content-Type: message/rfc822\r\n\r\n" + inner
    return head("rfc822 nest", content_type="message/rfc822")[: -len(b"Content-Type: message/rfc822\r\n")] + \
        b"Content-Type: message/rfc822\r\n\r\n" + inner


MESSAGES: dict[str, bytes] = {
    "MM-03": head("=?utf-8?q?a?= " * 20000 + "end") + b"\r\nbody\r\n",
    "MM-04-x-evil": head("evil charset", content_type='text/plain; charset="x-evil"') + b"\r\nhello \xe9\xff\r\n",
    "MM-04-utf16": head("utf16", content_type="text/plain; charset=utf-16")
    + b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes("hé there".encode("utf-16-be")),
    "MM-04-utf7": head("utf7", content_type="text/plain; charset=utf-7") + b"\r\n+AGEAYgBj-\r\n",
    "MM-05": head("bad base64") + b"Content-Transfer-Encoding: base64\r\n\r\n!!!!not*base64===\r\nQUJD=\r\n",
    "MM-10-rfc822": rfc822_nest(50),
    "MM-10-noclose": head("no closing boundary", content_type='multipart/mixed; boundary="b"')
    + b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n--b\r\nContent-Type: text/plain\r\n\r\nsecond",
    "MM-10-longboundary": head("long boundary", content_type=f'multipart/mixed; boundary="{"x" * 200}"')
    + b"\r\n--" + b"x" * 200 + b"\r\nContent-Type: text/plain\r\n\r\ninside\r\n--" + b"x" * 200 + b"--\r\n",
    "MM-11-longline": head("long header", extra="X-Long: " + "a" * 200_000 + "\r\n") + b"\r\nbody\r\n",
    "MM-11-manyfields": head("many fields", extra="".join(f"X-F{i}: v\r\n" for i in range(10_000))) + b"\r\nbody\r\n",
    "MM-12": (b"From: " + b", ".join(b"u%d@example.test" % i for i in range(10_000))
              + b'\r\nTo: "evil@attacker.example" <victim@example.test>, group: a@b.example, c@d.example;\r\n'
              b"Subject: address bomb\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nbody\r\n"),
    "MM-14": head("big html", content_type="text/html; charset=utf-8") + b"\r\n<html><body>"
    + b"<p>paragraph of text</p>\r\n" * 120_000 + b"</body></html>\r\n",
    "MM-15": head("far future").replace(b"Date: Tue, 01 Jul 2025 13:30:00 +0000",
                                         b"Date: Tue, 01 Jul 99999 13:30:00 +0000") + b"\r\nbody\r\n",
    "MM-16": head("=?UTF-8?B?w4TDlsOc?= =?iso-8859-1?q?caf=E9?=") + b"\r\nbody\r\n",
}


@pytest_twisted.ensureDeferred
async def test_listing_hostile_folder_is_bounded(loaded: tuple[Wire, dict[str, int]]) -> None:
    """list_mail_messages over all the hostile messages: one page, decoded subjects, bounded fields, MM-16 decoded."""
    wire, uids = loaded
    started = time.monotonic()
    listing = await list_mail_messages(wire.ctx, ListMessagesInput(per_page=100))
    assert time.monotonic() - started < 10
    assert listing.total == len(MESSAGES)
    by_uid = {m.uid: m for m in listing.messages}
    assert by_uid[uids["MM-16"]].subject == "ÄÖÜcafé"  # RFC 2047: space between encoded words is dropped
    assert by_uid[uids["MM-15"]].date is None
    for message in listing.messages:
        assert message.subject is None or len(message.subject) <= 10_000
        assert len(message.from_) <= 1000


@pytest.mark.parametrize("case", sorted(MESSAGES))
@pytest_twisted.ensureDeferred
async def test_reading_hostile_message_is_bounded(loaded: tuple[Wire, dict[str, int]], case: str) -> None:
    """get_mail_message of each hostile message: a result within 10 s, bounded body and lists, then the next call works."""
    wire, uids = loaded
    started = time.monotonic()
    message = await get_mail_message(wire.ctx, GetMessageInput(uid=uids[case]))
    assert time.monotonic() - started < 10, case
    assert len(unmark_body(message.body)) <= 200_000
    assert message.subject is None or ("\r" not in message.subject and "\n" not in message.subject)
    assert len(message.from_) <= 1000 and len(message.to) <= 1000
    if case == "MM-04-utf16":
        assert unmark_body(message.body).strip() == "hé there"
    elif case == "MM-04-x-evil":
        assert unmark_body(message.body).startswith("hello ")
    elif case == "MM-04-utf7":
        assert unmark_body(message.body).strip() == "abc"
    elif case == "MM-10-noclose":
        assert "first part" in unmark_body(message.body)
    elif case == "MM-10-longboundary":
        assert "inside" in unmark_body(message.body)
    elif case == "MM-12":
        assert {"name": "evil@attacker.example", "email": "victim@example.test"} in [
            {"name": a.name, "email": a.email} for a in message.to]
    elif case == "MM-14":
        assert message.truncated and message.next_offset and "paragraph of text" in unmark_body(message.body)
    elif case == "MM-15":
        assert message.date is None and message.date_raw and "99999" in message.date_raw
    again = await list_mail_messages(wire.ctx, ListMessagesInput(per_page=1))
    assert again.total == len(MESSAGES)
