"""
Unit-level checks behind catalogue cases whose end-to-end tests live in
``tests/hostile/test_hostile_catalogue_tools.py``: the composed bytes of an
HTML-only message (TL-T4) and of a dot-stuffing trap body (TL-T3).
"""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage

from mailmcp.mail._compose import compose, parse_addresses
from mailmcp.mail._smtp import DotStuffer

SCRIPT_HTML = '<p>Hi</p><script>alert("x")</script>'


def _build(text_body: str, html_body: str | None) -> EmailMessage:
    message = compose(
        from_email="alice@example.test",
        from_name="Alice",
        to=parse_addresses("to", "bob@example.test"),
        subject="s",
        text_body=text_body,
        html_body=html_body,
        message_id="<m@example.test>",
        date=0.0,
    )
    parsed = email.message_from_bytes(message.wire_bytes, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_html_only_message_is_the_html_as_given() -> None:
    """TL-T4: an HTML-only send is one text/html part holding the HTML exactly (script included), with no
    blank text/plain alternative for readers to show instead."""
    for blank in ("", "  \n"):
        parsed = _build(blank, SCRIPT_HTML)
        assert parsed.get_content_type() == "text/html"
        assert parsed.get_content().rstrip("\r\n") == SCRIPT_HTML


def test_text_and_html_stay_alternatives() -> None:
    """TL-T4: with a text body too, the message stays multipart/alternative, text first, HTML as given."""
    parsed = _build("Hi", SCRIPT_HTML)
    assert parsed.get_content_type() == "multipart/alternative"
    text, html = parsed.iter_parts()
    assert text.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    assert html.get_content().rstrip("\r\n") == SCRIPT_HTML


def test_dot_lines_and_bare_line_ends_are_encoded_safely() -> None:
    """
    TL-T3: lone dots, CRLF.CRLF + MAIL FROM, bare CR and LF, a 5,000-char
    line and dot lines around 16 KiB in a body: the composed bytes have CRLF
    line ends only and lines of at most 998 octets and decode to the text
    sent; sent as DATA in chunks split at every offset 16,380-16,390, the
    dot-stuffed stream has no line that is just ``.`` (no early end of
    DATA) and un-stuffs to exactly the composed bytes -- also when a chunk
    boundary falls just before, on or after any line-leading dot.
    """
    pad = "p" * (16380 - 40)
    body = (
        "a\n.\nb\r\n.\r\nMAIL FROM:<x@evil.test>\r\nc\r.\rd\n"
        + "y" * 5000
        + "\n"
        + pad
        + "\n.\n.\n.\n.\n.."
    )
    message = compose(
        from_email="alice@example.test",
        from_name="",
        to=parse_addresses("to", "bob@example.test"),
        subject="s",
        text_body=body,
        message_id="<m@example.test>",
        date=0.0,
    )
    wire = message.wire_bytes
    assert (
        wire.replace(b"\r\n", b"").count(b"\r") == 0
        and wire.replace(b"\r\n", b"").count(b"\n") == 0
    )
    assert max(len(line) for line in wire.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(wire, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    decoded = parsed.get_content().replace("\r\n", "\n").rstrip("\n")
    assert decoded == body.replace("\r\n", "\n").replace("\r", "\n")
    dot_lines = [i for i, line in enumerate(wire.split(b"\r\n")) if line == b"."]
    assert dot_lines  # the traps survive composing: stuffing is what keeps them data
    dots = [i + 2 for i in range(len(wire)) if wire.startswith(b"\r\n.", i)]
    splits = set(range(16380, 16391)) | {d + k for d in dots for k in (-1, 0, 1)}
    for split in sorted(splits):
        stuffer = DotStuffer()
        stuffed = stuffer.feed(wire[:split]) + stuffer.feed(wire[split:])
        lines = stuffed.split(b"\r\n")
        assert b"." not in lines, split
        assert b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines) == wire
