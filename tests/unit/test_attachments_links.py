"""
Unit tests for the pure parts of the attachment store: link signing and
checking, filename and content-type hygiene.  No sockets, no disk.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from mailmcp.attachments import (
    AttachmentRefused,
    content_disposition,
    safe_content_type,
    sanitise_filename,
)
from mailmcp.attachments._common import owner_tag
from mailmcp.attachments._links import EXPIRED, LinkClaims, LinkCodec
from mailmcp.mail._filenames import MAX_FILENAME_CHARS
from mailmcp.oauth._keyring import KeyRing, new_master_key

BASE = "https://mail-mcp.example.com"


def make_codec(ring: KeyRing | None = None, clock: Clock | None = None) -> tuple[LinkCodec, Clock, KeyRing]:
    ring = ring or KeyRing([new_master_key()])
    clock = clock or Clock()
    clock.advance(1_000_000)
    return LinkCodec(ring, clock, BASE), clock, ring


def claims(ring: KeyRing, owner: str = "grant-a", expires: int = 1_000_600, filename: str = "r.pdf") -> LinkClaims:
    return LinkClaims(owner_tag(ring, owner), "ab" * 32, 1234, filename, "application/pdf", expires)


def test_round_trip() -> None:
    """A link the codec signed verifies back to exactly the same claims."""
    codec, _, ring = make_codec()
    original = claims(ring)
    url = codec.sign(original)
    assert url.startswith(BASE + "/attachments/")
    assert codec.verify_url(url) == original


def test_signature_is_in_the_query_string() -> None:
    """The path alone (what the access log records) is not a working link."""
    codec, _, ring = make_codec()
    url = codec.sign(claims(ring))
    path, _, query = url.partition("?")
    assert query.startswith("sig=")
    with pytest.raises(AttachmentRefused):
        codec.verify_url(path)


def test_expired_link_is_refused() -> None:
    """After its expiry a link is refused with the 'expired' message."""
    codec, clock, ring = make_codec()
    url = codec.sign(claims(ring))
    clock.advance(601)
    with pytest.raises(AttachmentRefused) as e:
        codec.verify_url(url)
    assert e.value.message == EXPIRED


def test_tampered_payload_is_refused() -> None:
    """Changing anything in the signed payload (a longer expiry) breaks the link."""
    codec, _, ring = make_codec()
    url = codec.sign(claims(ring))
    path, _, query = url.partition("?")
    kid, _, payload = path.rsplit("/", 1)[1].partition(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body[-1] += 10_000
    forged = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).rstrip(b"=").decode()
    with pytest.raises(AttachmentRefused):
        codec.verify_url(f"{BASE}/attachments/{kid}.{forged}?{query}")


@given(st.integers(min_value=0, max_value=200))
def test_any_flipped_character_is_refused(position: int) -> None:
    """Flipping any one character of a link makes it unacceptable."""
    codec, _, ring = make_codec()
    url = codec.sign(claims(ring))
    position = position % len(url)
    replacement = "0" if url[position].lower() != "0" else "1"
    flipped = url[:position] + replacement + url[position + 1:]
    with pytest.raises(AttachmentRefused):
        codec.verify_url(flipped)


def test_other_base_url_refused() -> None:
    """The same token on another host, scheme or port is not ours."""
    codec, _, ring = make_codec()
    url = codec.sign(claims(ring))
    for other in (
        url.replace("https://", "http://"),
        url.replace("mail-mcp.example.com", "mail-mcp.example.com.evil.test"),
        url.replace("mail-mcp.example.com", "mail-mcp.example.com:444"),
        url + "#x",
        url + "&sig=again",
        " " + url,
    ):
        with pytest.raises(AttachmentRefused):
            codec.verify_url(other)


def test_old_key_still_verifies_after_rotation() -> None:
    """A link signed before a key rotation stays valid until it expires."""
    codec, clock, ring = make_codec()
    url = codec.sign(claims(ring))
    rotated = LinkCodec(ring.with_new_key(), clock, BASE)
    assert rotated.verify_url(url) == claims(ring)


def test_link_from_another_key_ring_refused() -> None:
    """A link signed by another deployment's keys is refused."""
    codec, clock, ring = make_codec()
    stranger = LinkCodec(KeyRing([new_master_key()]), clock, BASE)
    with pytest.raises(AttachmentRefused):
        codec.verify_url(stranger.sign(claims(ring)))


def test_owner_tags_differ_and_hide_the_owner() -> None:
    """Owner tags are per-owner, stable, and do not contain the owner id."""
    ring = KeyRing([new_master_key()])
    a, b = owner_tag(ring, "grant-a"), owner_tag(ring, "grant-b")
    assert a != b and len(a) == 32 and "grant" not in a
    assert owner_tag(ring.with_new_key(), "grant-a") == a


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\evil.exe", "evil.exe"),
        ("..", "attachment"),
        ("", "attachment"),
        (None, "attachment"),
        ("report\u202egnp.exe", "reportgnp.exe"),
        ("a\r\nContent-Type: text/html", "html"),
        ("a\r\nb\x00c.txt", "abc.txt"),
        ('x"; filename=y', "x_; filename=y"),
        (".hidden", "hidden"),
        ("résumé.pdf", "résumé.pdf"),
        ("nul.txt", "_nul.txt"),
        ("com1", "_com1"),
    ],
)
def test_sanitise_filename(raw: str | None, expected: str) -> None:
    """Filenames lose directories, controls, bidi overrides and quoting tricks."""
    assert sanitise_filename(raw) == expected


def test_long_filename_keeps_extension() -> None:
    """A 2,000-byte filename is cut to the cap, keeping its extension (S3-04)."""
    name = sanitise_filename("x" * 2000 + ".pdf")
    assert len(name) == MAX_FILENAME_CHARS and name.endswith(".pdf")


def test_content_disposition_rfc6266() -> None:
    """Always 'attachment', with an ASCII fallback and an exact UTF-8 filename*."""
    value = content_disposition('Grüße "2026".pdf')
    assert value.startswith("attachment; filename=\"")
    assert value.isascii()
    assert unquote(value.split("filename*=UTF-8''", 1)[1]) == "Grüße _2026_.pdf"


@pytest.mark.parametrize(
    "given_type, served",
    [
        ("text/html", "application/octet-stream"),
        ("TEXT/HTML; charset=utf-8", "application/octet-stream"),
        ("image/svg+xml", "application/octet-stream"),
        ("application/xhtml+xml", "application/octet-stream"),
        ("application/javascript", "application/octet-stream"),
        ("text/javascript", "application/octet-stream"),
        ("application/xml", "application/octet-stream"),
        ("application/vnd.foo+xml", "application/octet-stream"),
        ("multipart/related", "application/octet-stream"),
        ("message/rfc822", "application/octet-stream"),
        ("nonsense", "application/octet-stream"),
        ("text/plain\r\nX-Evil: 1", "application/octet-stream"),
        ("", "application/octet-stream"),
        ("application/pdf", "application/pdf"),
        ("image/png", "image/png"),
        ("text/plain; charset=ISO-8859-1; name=x", "text/plain; charset=iso-8859-1"),
    ],
)
def test_safe_content_type(given_type: str, served: str) -> None:
    """Active types are served as application/octet-stream; inert ones as they are."""
    assert safe_content_type(given_type) == served
