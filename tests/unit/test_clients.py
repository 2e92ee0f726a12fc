"""
Provisioned OAuth clients: redirect URI registration rules, matching (exact,
except loopback registrations where any port and, with ``/*``, any path are
allowed, RFC 8252), secrets checked by hash, and client ids that open only
with the key ring that sealed them.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from mailmcp.oauth._clients import (
    DEFAULT_REDIRECT_URIS,
    MailServer,
    hash_secret,
    is_loopback_host,
    open_client,
    provision_client,
    redirect_uri_matches,
    validate_redirect_uri,
)
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.oauth._tokens import InvalidToken, TokenCodec

IMAP = MailServer(host="imap.example.com", port=993, security="tls")
SMTP = MailServer(host="smtp.example.com", port=465, security="tls")


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(KeyRing([new_master_key()]), Clock())


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True), ("LOCALHOST", True), ("app.localhost", True),
        ("127.0.0.1", True), ("127.9.8.7", True), ("::1", True), ("[::1]", True),
        ("localhost.", True), ("app.localhost.", True),
        ("example.com", False), ("10.0.0.1", False), ("localhost.example.com", False),
        ("0.0.0.0", False), ("::", False), ("127.0.0.1.nip.io", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    """Only localhost names and loopback literals count as loopback."""
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    "uri",
    [
        "https://claude.ai/api/mcp/auth_callback",
        "https://example.com:8443/cb?x=1",
        "http://127.0.0.1/*",
        "http://localhost:33418/callback",
        "http://[::1]/cb",
    ],
)
def test_valid_redirect_uris(uri: str) -> None:
    """https anywhere, http on loopback only."""
    assert validate_redirect_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/cb",
        "https://example.com/cb#frag",
        "javascript:alert(1)",
        "/relative/path",
        "ftp://example.com/cb",
        "https:///nohost",
        "http://10.0.0.1/cb",
    ],
)
def test_invalid_redirect_uris(uri: str) -> None:
    """Everything else is refused with a one-line reason."""
    with pytest.raises(ValueError) as raised:
        validate_redirect_uri(uri)
    assert "\n" not in str(raised.value)


MATCHES = [
    # exact match for non-loopback registrations
    ("https://claude.ai/api/mcp/auth_callback", "https://claude.ai/api/mcp/auth_callback", True),
    ("https://claude.ai/api/mcp/auth_callback", "https://claude.ai/api/mcp/auth_callback/", False),
    ("https://claude.ai/api/mcp/auth_callback", "https://claude.ai/api/mcp/auth_callback?x=1", False),
    ("https://claude.ai/api/mcp/auth_callback", "https://CLAUDE.ai/api/mcp/auth_callback", False),
    ("https://claude.ai/api/mcp/auth_callback", "https://claude.ai:443/api/mcp/auth_callback", False),
    ("https://claude.ai/api/mcp/auth_callback", "http://claude.ai/api/mcp/auth_callback", False),
    ("https://claude.ai/api/mcp/auth_callback", "https://claude.ai.evil.example/api/mcp/auth_callback", False),
    ("https://example.com:8443/cb", "https://example.com:9443/cb", False),
    # loopback with a wildcard path: any port, any path
    ("http://127.0.0.1/*", "http://127.0.0.1:53682/callback", True),
    ("http://127.0.0.1/*", "http://127.0.0.1/", True),
    ("http://127.0.0.1/*", "http://127.0.0.1:1/a/b?c=d", True),
    ("http://localhost/*", "http://localhost:6274/oauth/callback", True),
    ("http://localhost/*", "http://LOCALHOST:6274/oauth/callback", True),
    ("http://127.0.0.1/*", "http://localhost:5000/cb", False),
    ("http://localhost/*", "http://127.0.0.1:5000/cb", False),
    ("http://127.0.0.1/*", "https://127.0.0.1:5000/cb", False),
    ("http://127.0.0.1/*", "http://127.0.0.1:5000/cb#frag", False),
    ("http://127.0.0.1/*", "http://user:pw@127.0.0.1:5000/cb", False),
    ("http://127.0.0.1/*", "http://127.0.0.1:99999/cb", False),
    ("http://127.0.0.1/*", "http://127.0.0.1:port/cb", False),
    ("http://127.0.0.1/*", "http://127.0.0.1.evil.example/cb", False),
    ("http://localhost/*", "http://localhost.evil.example:80/cb", False),
    # loopback with a fixed path: any port, that exact path and query
    ("http://127.0.0.1/callback", "http://127.0.0.1:4000/callback", True),
    ("http://127.0.0.1/callback", "http://127.0.0.1/callback", True),
    ("http://127.0.0.1/callback", "http://127.0.0.1:4000/callback/x", False),
    ("http://127.0.0.1/callback", "http://127.0.0.1:4000/other", False),
    ("http://127.0.0.1/callback", "http://127.0.0.1:4000/callback?x=1", False),
    ("http://[::1]/cb", "http://[::1]:7000/cb", True),
    # https loopback is matched exactly (RFC 8252 relaxes only http loopback)
    ("https://localhost/cb", "https://localhost:8443/cb", False),
]


@pytest.mark.parametrize(("registered", "candidate", "expected"), MATCHES)
def test_redirect_uri_matches(registered: str, candidate: str, expected: bool) -> None:
    """Exact string match, except the loopback any-port (and ``/*`` any-path) rule."""
    assert redirect_uri_matches(registered, candidate) is expected


def test_default_redirect_uris() -> None:
    """The defaults are Claude's two callbacks and loopback on any port."""
    assert DEFAULT_REDIRECT_URIS == (
        "https://claude.ai/api/mcp/auth_callback",
        "https://claude.com/api/mcp/auth_callback",
        "http://127.0.0.1/*",
        "http://localhost/*",
    )


def test_provision_and_open(codec: TokenCodec) -> None:
    """
    A client id records servers, security, redirect URIs and the secret's
    hash (not the secret); the secret checks out, a wrong one does not.
    """
    client_id, secret = provision_client(codec, IMAP, SMTP, DEFAULT_REDIRECT_URIS, name="Work")
    assert secret is not None and len(secret) >= 40
    assert secret not in client_id
    client = open_client(codec, client_id)
    assert client.client_id == client_id
    assert client.imap == IMAP
    assert client.smtp == SMTP
    assert client.redirect_uris == DEFAULT_REDIRECT_URIS
    assert client.secret_hash == hash_secret(secret)
    assert client.name == "Work"
    assert not client.is_public
    assert client.check_secret(secret)
    assert not client.check_secret(secret + "x")
    assert not client.check_secret("")
    assert not client.check_secret(None)
    assert client.allows_redirect("http://localhost:1234/callback")
    assert client.allows_redirect("https://claude.com/api/mcp/auth_callback")
    assert not client.allows_redirect("https://evil.example/api/mcp/auth_callback")


def test_public_client(codec: TokenCodec) -> None:
    """A public client has no secret and accepts only an absent or empty one."""
    client_id, secret = provision_client(codec, IMAP, SMTP, ["https://a.example/cb"], public=True)
    assert secret is None
    client = open_client(codec, client_id)
    assert client.is_public
    assert client.check_secret(None)
    assert client.check_secret("")
    assert not client.check_secret("anything")


def test_two_clients_differ(codec: TokenCodec) -> None:
    """Provisioning twice for the same servers gives distinct ids and secrets."""
    first = provision_client(codec, IMAP, SMTP, DEFAULT_REDIRECT_URIS)
    second = provision_client(codec, IMAP, SMTP, DEFAULT_REDIRECT_URIS)
    assert first[0] != second[0]
    assert first[1] != second[1]


def test_provision_refuses_bad_redirect(codec: TokenCodec) -> None:
    """An unregistrable redirect URI is refused at provisioning time."""
    with pytest.raises(ValueError):
        provision_client(codec, IMAP, SMTP, ["http://evil.example/cb"])


def test_foreign_client_id(codec: TokenCodec) -> None:
    """A client id sealed by another key ring does not open."""
    other = TokenCodec(KeyRing([new_master_key()]), Clock())
    client_id, _ = provision_client(other, IMAP, SMTP, DEFAULT_REDIRECT_URIS)
    with pytest.raises(InvalidToken):
        open_client(codec, client_id)


def test_other_token_kind_is_not_a_client(codec: TokenCodec) -> None:
    """An access token with client-like claims is not a client id."""
    token = codec.seal("access", {"imap": IMAP.to_claims(), "smtp": SMTP.to_claims(),
                                  "redirect_uris": [], "secret_hash": None}, 60)
    with pytest.raises(InvalidToken):
        open_client(codec, token)


@pytest.mark.parametrize(
    "claims",
    [
        {"smtp": SMTP.to_claims(), "redirect_uris": []},
        {"imap": "x", "smtp": SMTP.to_claims(), "redirect_uris": []},
        {"imap": {**IMAP.to_claims(), "security": "ssl"}, "smtp": SMTP.to_claims(), "redirect_uris": []},
        {"imap": {**IMAP.to_claims(), "port": "993"}, "smtp": SMTP.to_claims(), "redirect_uris": []},
        {"imap": IMAP.to_claims(), "smtp": SMTP.to_claims(), "redirect_uris": "https://a/cb"},
        {"imap": IMAP.to_claims(), "smtp": SMTP.to_claims(), "redirect_uris": [1]},
        {"imap": IMAP.to_claims(), "smtp": SMTP.to_claims(), "redirect_uris": [], "secret_hash": 5},
    ],
)
def test_malformed_client_claims(codec: TokenCodec, claims: dict[str, object]) -> None:
    """Authentic but malformed client claims are InvalidToken, not a crash."""
    with pytest.raises(InvalidToken):
        open_client(codec, codec.seal("client", claims, None))


def test_open_none(codec: TokenCodec) -> None:
    """A missing client id is InvalidToken."""
    with pytest.raises(InvalidToken):
        open_client(codec, None)
