"""
Split-knowledge credentials and the grant life cycle, on the memory store
and a `Clock`.
"""

from __future__ import annotations

import secrets

import pytest
from twisted.internet.task import Clock

from mailmcp.oauth._clients import MailServer, open_client, provision_client
from mailmcp.oauth._grants import (
    CodeRequest,
    Credentials,
    GrantService,
    OAuthError,
    canonical_resource,
    client_ref,
    new_grant_key,
    open_credentials,
    pkce_s256,
    seal_credentials,
)
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.oauth._throttle import address_key, username_key
from mailmcp.oauth._tokens import InvalidToken, TokenCodec
from mailmcp.testing import MemoryGrantStore

MCP = "https://mail.example.test/mcp"
IMAP = MailServer("imap.example.test", 993, "tls")
SMTP = MailServer("smtp.example.test", 465, "tls")


def creds(password: str = "pw-1") -> Credentials:
    return Credentials("a@example.test", "A", IMAP, "a", password, SMTP, "a", password)


def test_sealed_credentials_round_trip() -> None:
    """The grant key opens the row; the row alone shows no password."""
    key = new_grant_key()
    sealed = seal_credentials(key, "g1", creds("päss-wörd"))
    assert "päss-wörd".encode() not in sealed
    assert open_credentials(key, "g1", sealed).imap_password == "päss-wörd"


def test_sealed_credentials_bound_to_grant_and_key() -> None:
    """Another key, or the row moved under another grant id, does not open."""
    key = new_grant_key()
    sealed = seal_credentials(key, "g1", creds())
    with pytest.raises(InvalidToken):
        open_credentials(new_grant_key(), "g1", sealed)
    with pytest.raises(InvalidToken):
        open_credentials(key, "g2", sealed)
    with pytest.raises(InvalidToken):
        open_credentials(key, "g1", sealed[:-1] + bytes([sealed[-1] ^ 1]))


@pytest.mark.parametrize("value,expected", [
    (None, MCP), ("", MCP), (MCP, MCP), (MCP + "/", MCP), ("https://mail.example.test", MCP),
    ("https://mail.example.test/", MCP), ("HTTPS://MAIL.EXAMPLE.TEST/mcp", MCP),
    ("https://other.example/mcp", None), ("https://mail.example.test/other", None),
    ("https://mail.example.test.evil/mcp", None),
])
def test_canonical_resource(value, expected) -> None:
    """RFC 8707 resource: absent, trailing slash and origin-only mean the MCP URL; others are refused."""
    assert canonical_resource(value, MCP) == expected


def test_pkce_s256() -> None:
    """S256 is BASE64URL(SHA256(ascii(verifier))) without padding (RFC 7636 §4.2)."""
    import base64
    import hashlib

    verifier = secrets.token_urlsafe(64)
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).decode().rstrip("=")
    assert pkce_s256(verifier) == expected and len(expected) == 43


def test_throttle_keys_hide_usernames_and_group_ipv6() -> None:
    """Usernames are hashed (case-insensitive); IPv6 counts per /64; mapped IPv4 as IPv4."""
    assert username_key("Alice@Example.test ") == username_key("alice@example.test")
    assert "alice" not in username_key("alice@example.test")
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff")
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1")


@pytest.fixture
def service():
    clock = Clock()
    clock.advance(1_800_000_000)
    codec = TokenCodec(KeyRing([new_master_key()]), clock)
    store = MemoryGrantStore(clock)
    grants = GrantService(store, codec, MCP, code_lifetime=60, access_lifetime=3600, refresh_lifetime=86400)
    cid, secret = provision_client(codec, IMAP, SMTP, ["https://app.example/cb"])
    client = open_client(codec, cid)
    return clock, store, grants, client


def run(d):
    from twisted.internet.defer import Deferred

    out: list = []
    Deferred.fromCoroutine(d).addBoth(out.append)
    assert out
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_unredeemed_grant_expires_with_its_code(service) -> None:
    """A login whose code is never redeemed leaves a row that dies with the code."""
    clock, store, grants, client = service
    verifier = secrets.token_urlsafe(40)
    run(grants.login(CodeRequest(client, "https://app.example/cb", pkce_s256(verifier), MCP), creds()))
    (gid,) = store.grants
    clock.advance(70)
    assert store.get_grant(gid).result is None


def test_redeemed_grant_lives_until_absolute_cap(service) -> None:
    """Redemption extends the row to login time + refresh lifetime."""
    clock, store, grants, client = service
    verifier = secrets.token_urlsafe(40)
    code = run(grants.login(CodeRequest(client, "https://app.example/cb", pkce_s256(verifier), MCP), creds()))
    tokens = run(grants.redeem_code(client, code, "https://app.example/cb", verifier, None))
    (record,) = store.grants.values()
    assert record.expires == record.created + 86400
    assert run(grants.account_for(tokens.access_token)).imap_password == "pw-1"
    assert client_ref(client.client_id) == record.client_ref


def test_invalid_target_at_token(service) -> None:
    """A foreign resource at the token endpoint is invalid_target."""
    clock, store, grants, client = service
    verifier = secrets.token_urlsafe(40)
    code = run(grants.login(CodeRequest(client, "https://app.example/cb", pkce_s256(verifier), MCP), creds()))
    with pytest.raises(OAuthError) as e:
        run(grants.redeem_code(client, code, "https://app.example/cb", verifier, "https://evil.example/mcp"))
    assert e.value.error == "invalid_target"


def test_revoked_grant_kills_access(service) -> None:
    """Deleting the grant row revokes its access token at once."""
    clock, store, grants, client = service
    verifier = secrets.token_urlsafe(40)
    code = run(grants.login(CodeRequest(client, "https://app.example/cb", pkce_s256(verifier), MCP), creds()))
    tokens = run(grants.redeem_code(client, code, "https://app.example/cb", verifier, None))
    (gid,) = store.grants
    store.revoke_grant(gid)
    with pytest.raises(InvalidToken):
        run(grants.account_for(tokens.access_token))
