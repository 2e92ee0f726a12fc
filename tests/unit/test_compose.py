"""Tests for `mailmcp.mail._compose`: building outgoing messages safely."""

from __future__ import annotations

import email
from email import policy

import pytest

from mailmcp.mail._compose import (
    ComposeError,
    OutgoingAttachment,
    compose,
    is_canonical_crlf,
    make_message_id,
    parse_addresses,
    parse_message_ids,
)


def build(**overrides: object) -> bytes:
    fields: dict[str, object] = dict(
        from_email="alice@example.test",
        from_name="Alice",
        to=parse_addresses("to", "bob@example.test"),
        subject="hi",
        text_body="hello",
        message_id="<m1@example.test>",
        date=1_700_000_000.0,
    )
    fields.update(overrides)
    return compose(**fields).wire_bytes  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [
    "bob@example.test\r\nRCPT TO:<x@evil.test>",
    "bob@example.test\nBcc: x@evil.test",
    "bob@example.test\x00",
    "Bob\u2028 <bob@example.test>",
    "bob@example.test\x85",
])
def test_control_characters_refused_before_parsing(value: str) -> None:
    """
    CR/LF/NUL and other line-breaking characters in an address field are
    refused outright; getaddresses would otherwise find x@evil.test (P-18).
    """
    with pytest.raises(ComposeError, match="control characters"):
        parse_addresses("to", value)


@pytest.mark.parametrize("value", ["a@b@c", "foo", "undisclosed-recipients:;", "@x.test", "a@", "a@-x.test",
                                   "a@x", "a@[127.0.0.1]", "a..b@x.test", ""])
def test_invalid_addresses_named_in_the_error(value: str) -> None:
    """Malformed addresses, group syntax and empty values are refused with the field named."""
    with pytest.raises(ComposeError, match="^to"):
        parse_addresses("to", value)


def test_addresses_with_display_names_and_idn() -> None:
    """Display names (even with commas) survive; IDN domains are punycode-encoded."""
    parsed = parse_addresses("to", ['"Doe, John" <j@example.test>', "user@bücher.de"])
    assert [(a.display_name, a.addr_spec) for a in parsed] == [
        ("Doe, John", "j@example.test"),
        ("", "user@xn--bcher-kva.de"),
    ]


def test_headers_encoded_and_required_fields_present() -> None:
    """Non-ASCII subject and name are RFC 2047 encoded; From, To, Date and Message-ID are set."""
    raw = build(subject="Grüße aus Köln", from_name="Jörg Müller")
    assert raw.isascii()
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "Grüße aus Köln"
    assert parsed["From"] == "Jörg Müller <alice@example.test>"
    assert parsed["To"] == "bob@example.test"
    assert parsed["Message-ID"] == "<m1@example.test>"
    assert parsed["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"


def test_full_name_with_newline_cannot_inject() -> None:
    """The account's full name is cleaned of control characters, never an injected header."""
    raw = build(from_name="Alice\r\nBcc: evil@x.test")
    assert b"\r\nBcc:" not in raw


@pytest.mark.parametrize("subject", ["hi\r\nBcc: evil@x.test", "a\nb", "nul\x00", "x" * 999, "\ud800"])
def test_bad_subjects_refused(subject: str) -> None:
    """Subjects with control characters, lone surrogates or over 998 characters are refused (TL-T2)."""
    with pytest.raises(ComposeError):
        build(subject=subject)


def test_bcc_only_in_copy_and_envelope() -> None:
    """Bcc is in the envelope and the filed copy, never in the wire bytes (TL-T5)."""
    message = compose(
        from_email="alice@example.test", from_name="", to=parse_addresses("to", "bob@example.test"),
        bcc=parse_addresses("bcc", "Secret <dave@example.test>"), subject="s", text_body="t",
        html_body="<p>t</p>", message_id="<m@example.test>", date=0.0,
    )
    assert b"dave" not in message.wire_bytes
    assert b"Bcc: Secret <dave@example.test>\r\n" in message.copy_bytes
    assert message.copy_bytes.replace(b"Bcc: Secret <dave@example.test>\r\n", b"") == message.wire_bytes
    assert message.recipients == ("bob@example.test", "dave@example.test")


def test_recipients_deduplicated_case_insensitively() -> None:
    """A recipient in both To and Cc gets one RCPT."""
    message = compose(
        from_email="alice@example.test", from_name="", to=parse_addresses("to", "Bob@example.test"),
        cc=parse_addresses("cc", "bob@EXAMPLE.test"), subject="s", text_body="t",
        message_id="<m@example.test>", date=0.0,
    )
    assert message.recipients == ("Bob@example.test",)


def test_too_many_recipients() -> None:
    """More than 50 recipients are refused (TL-T1)."""
    many = parse_addresses("to", [f"u{i}@example.test" for i in range(51)])
    with pytest.raises(ComposeError, match="too many"):
        build(to=many)


@pytest.mark.parametrize("body", ["a\r\n.\r\nb", "a\n.\nb", "a\r.\rb", "x" * 5000, ".\n" * 100, "ünï\r\n"])
def test_bodies_become_canonical_short_line_ascii(body: str) -> None:
    """
    Whatever line endings the body uses, the message has CRLF only (no bare
    CR/LF), lines of at most 78 octets, only ASCII, and decodes to the text.
    """
    raw = build(text_body=body, html_body="<p>" + body + "</p>")
    assert is_canonical_crlf(raw)
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    parsed = email.message_from_bytes(raw, policy=policy.default)
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n") == body.replace("\r\n", "\n").replace(
        "\r", "\n").rstrip("\n")


def test_body_with_nul_refused() -> None:
    """NUL in a body is refused."""
    with pytest.raises(ComposeError):
        build(text_body="a\x00b")


def test_html_alternative_structure() -> None:
    """With html_body the message is multipart/alternative, text first."""
    raw = build(html_body="<b>x</b>")
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert raw.count(b"MIME-Version") == 1


def test_attachments_added_with_safe_names_and_types() -> None:
    """Attachments get a sanitized filename and a valid MIME type (else application/octet-stream)."""
    raw = build(attachments=[
        OutgoingAttachment(b"\x00\x01", "data.bin", "application/x-thing"),
        OutgoingAttachment(b"hello", "evil\r\nname.txt", "text/plain\r\nX: y"),
    ])
    parsed = email.message_from_bytes(raw, policy=policy.default)
    parts = list(parsed.iter_attachments())
    assert [p.get_filename() for p in parts] == ["data.bin", "evil__name.txt"]
    assert [p.get_content_type() for p in parts] == ["application/x-thing", "application/octet-stream"]
    assert is_canonical_crlf(raw)


def test_reply_headers() -> None:
    """In-Reply-To and References are validated Message-IDs and set as given."""
    raw = build(in_reply_to=parse_message_ids("in_reply_to", "<a@x.test>"),
                references=parse_message_ids("references", ["<r@x.test> <a@x.test>"]))
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert parsed["In-Reply-To"] == "<a@x.test>"
    assert parsed["References"] == "<r@x.test> <a@x.test>"
    with pytest.raises(ComposeError):
        parse_message_ids("references", "not-an-id")


def test_message_ids_random_or_derived_from_key() -> None:
    """Without a key Message-IDs differ; with one they are stable per account and key."""
    assert make_message_id("alice@example.test") != make_message_id("alice@example.test")
    keyed = make_message_id("alice@example.test", "k1")
    assert keyed == make_message_id("Alice@example.test", "k1")
    assert keyed != make_message_id("alice@example.test", "k2")
    assert keyed != make_message_id("bob@example.test", "k1")
    assert keyed.endswith("@example.test>")
