"""
The attachment MACs are computed with ``hmac.digest`` (the one-shot C path,
issue 17): the same bytes as before, so links issued before still verify
and stored objects keep their owner tags.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock

from mailmcp.attachments._common import LINK_PURPOSE, OWNER_PURPOSE, owner_tag
from mailmcp.attachments._links import DOWNLOAD_PREFIX, LinkClaims, LinkCodec, _b64e
from mailmcp.oauth._keyring import KeyRing, new_master_key

BASE = "https://mail-mcp.example.com"


def test_owner_tag_is_the_hmac_it_always_was() -> None:
    """An HMAC-SHA256 of the owner under the oldest key's owner subkey, hex, 32 characters."""
    ring = KeyRing([new_master_key()]).with_new_key()
    key = ring.subkey(ring.kids[0], OWNER_PURPOSE)
    for owner in ("grant-a", "gränt-ü", ""):
        expected = hmac.new(key, owner.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
        assert owner_tag(ring, owner) == expected


def test_link_signature_is_the_hmac_it_always_was() -> None:
    """The ?sig= of a signed link is the truncated HMAC-SHA256 of "kid.payload" under the link subkey."""
    ring = KeyRing([new_master_key()])
    clock = Clock()
    clock.advance(1_000_000)
    codec = LinkCodec(ring, clock, BASE)
    url = codec.sign(LinkClaims(owner_tag(ring, "o"), "ab" * 32, 12, "r.pdf", "application/pdf", 1_000_600))
    parts = urlsplit(url)
    token = parts.path.removeprefix(DOWNLOAD_PREFIX)
    kid, _, payload = token.partition(".")
    key = ring.subkey(kid, LINK_PURPOSE)
    full = hmac.new(key, f"{kid}.{payload}".encode("ascii"), hashlib.sha256).digest()
    (sig,) = parse_qs(parts.query)["sig"]
    assert full.startswith(codec._mac(kid, payload)) and sig == _b64e(codec._mac(kid, payload))
    assert codec.verify_token(token, sig).size == 12
