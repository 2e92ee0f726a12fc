"""
Short client ids, dynamic registration (RFC 7591) and Client ID Metadata
Documents through the OAuth app on a `StubTreq` (no sockets): what the
metadata advertises, what registration answers, how ids are found, that
metadata documents are checked, cached within bounds and pinned ones never
fetched, and that ids issued before keep working.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from mailmcp.oauth._cimd import (
    MAX_CACHE,
    MAX_ENTRIES,
    MIN_CACHE,
    PINNED_DIR,
    ClientMetadataError,
    ClientMetadataResolver,
    is_public_address,
    load_pinned,
    max_age,
    parse_document,
)
from mailmcp.oauth._clients import (
    COMPACT_PREFIX,
    DEFAULT_REDIRECT_URIS,
    open_client,
    provision_client,
    provision_short_client,
)
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.oauth._registration import ClientDirectory
from mailmcp.oauth._tokens import InvalidToken, TokenCodec
from tests.unit.oauth_helpers import IMAP, REDIRECT, SMTP, make_server

CLAUDE = "https://claude.ai/oauth/mcp-oauth-client-metadata"
CLAUDE_CODE = "https://claude.ai/oauth/claude-code-client-metadata"
DOC_URL = "https://tools.example/oauth/client.json"


class FakeFetcher:
    """Stands in for the network: answers from a dict and counts fetches."""

    def __init__(self, documents: dict[str, tuple[Any, int]]) -> None:
        self.documents = documents
        self.fetched: list[tuple[str, bool]] = []

    def fetch(self, url: str, checked: bool) -> Deferred[tuple[Any, int]]:
        self.fetched.append((url, checked))
        if url not in self.documents:
            return fail(ClientMetadataError("The client's metadata address answered HTTP 404."))
        return succeed(self.documents[url])


def doc(url: str = DOC_URL, **over: Any) -> dict[str, Any]:
    document = {
        "client_id": url,
        "client_name": "Tool Example",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "none",
    }
    document.update(over)
    return document


def open_server(
    tmp_path: Path, documents: dict[str, tuple[Any, int]] | None = None, allow: tuple[str, ...] = ()
) -> tuple[Any, FakeFetcher]:
    server = make_server(tmp_path, default_imap=IMAP, default_smtp=SMTP)
    fetcher = FakeFetcher(documents or {})
    resolver = ClientMetadataResolver(server.clock, fetcher, load_pinned([PINNED_DIR]), allow)  # type: ignore[arg-type]
    server.app._clients = ClientDirectory(server.config, server.codec, server.store, resolver)
    return server, fetcher


def register(server: Any, body: Any, **headers: str) -> tuple[Any, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response, answer = server.request(
        "POST", "/oauth/register", data=raw, headers={"content-type": "application/json", **headers}
    )
    return response, json.loads(answer)


# -- metadata -------------------------------------------------------------


def test_metadata_advertises_cimd_and_registration_with_a_default_profile(tmp_path: Path) -> None:
    """With a default mail profile the AS metadata says CIMD is supported, keeps none, and names the registration endpoint."""
    server, _ = open_server(tmp_path)
    response, body = server.request("GET", "/.well-known/oauth-authorization-server")
    metadata = json.loads(body)
    assert metadata["client_id_metadata_document_supported"] is True
    assert "none" in metadata["token_endpoint_auth_methods_supported"]
    assert metadata["registration_endpoint"] == "https://mail.example.test/oauth/register"


def test_without_default_profile_cimd_and_registration_are_off(tmp_path: Path) -> None:
    """No default profile: nothing advertised, /oauth/register refuses, a metadata URL is an unknown client."""
    server = make_server(tmp_path)
    metadata = json.loads(server.request("GET", "/.well-known/oauth-authorization-server")[1])
    assert "client_id_metadata_document_supported" not in metadata
    assert "registration_endpoint" not in metadata
    response, answer = register(server, {"redirect_uris": [REDIRECT]})
    assert response.code == 404 and answer["error"] == "invalid_request"
    response, body = server.request(
        "GET", "/oauth/authorize", params=server.authorize_params(client_id=CLAUDE)
    )
    assert response.code == 400 and b"not issued by this server" in body


# -- registration -----------------------------------------------------------


def test_registration_of_a_confidential_client_and_its_login(tmp_path: Path) -> None:
    """A client_secret_post registration answers 201 with a short id and secret; that client logs in to the default profile and redeems its code."""
    server, _ = open_server(tmp_path)
    response, answer = register(
        server,
        {
            "redirect_uris": [REDIRECT],
            "client_name": "Inspector",
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["authorization_code", "refresh_token"],
        },
    )
    assert response.code == 201, answer
    assert len(answer["client_id"]) < 200 and answer["client_id"].startswith("mc_")
    assert isinstance(answer["client_id_issued_at"], int)
    assert answer["client_secret_expires_at"] == 0 and answer["client_secret"]
    assert answer["redirect_uris"] == [REDIRECT]
    assert answer["token_endpoint_auth_method"] == "client_secret_post"
    server.client_id, server.client_secret = answer["client_id"], answer["client_secret"]
    _, body, _, _ = server.get_form(server.authorize_params())
    assert b"Inspector" in body and b"imap.example.test:993" in body
    tokens = server.tokens()
    assert tokens["access_token"] and tokens["refresh_token"]
    assert server.account(tokens["access_token"]).imap == IMAP


def test_registration_of_a_public_client_uses_pkce_only(tmp_path: Path) -> None:
    """A none registration gets no secret; its code redeems without one, and a made-up secret is refused."""
    server, _ = open_server(tmp_path)
    response, answer = register(
        server, {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
    )
    assert response.code == 201 and "client_secret" not in answer
    server.client_id, server.client_secret = answer["client_id"], None  # type: ignore[assignment]
    code, verifier = server.code_for()
    response, body = server.redeem(code, verifier, client_secret="guess")
    assert (response.code, body["error"]) == (401, "invalid_client")
    code, verifier = server.code_for()
    response, body = server.redeem(code, verifier)
    assert response.code == 200, body


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://app.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://127.0.0.1/*"]}, "invalid_redirect_uri"),
        (
            {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"},
            "invalid_client_metadata",
        ),
        (
            {"redirect_uris": [REDIRECT], "grant_types": ["client_credentials"]},
            "invalid_client_metadata",
        ),
        ({"redirect_uris": [REDIRECT], "response_types": ["token"]}, "invalid_client_metadata"),
        ({"redirect_uris": [REDIRECT], "client_name": "x" * 101}, "invalid_client_metadata"),
        (["not", "an", "object"], "invalid_client_metadata"),
        (b"{not json", "invalid_client_metadata"),
    ],
)
def test_bad_registrations_are_refused_and_store_nothing(
    tmp_path: Path, body: Any, error: str
) -> None:
    """Each bad registration answers 400 with its RFC 7591 error and files no client."""
    server, _ = open_server(tmp_path)
    response, answer = register(server, body)
    assert (response.code, answer["error"]) == (400, error), answer
    assert answer["error_description"]
    assert server.store.clients == {}


def test_registration_needs_json(tmp_path: Path) -> None:
    """A form-encoded registration is refused with invalid_client_metadata."""
    server, _ = open_server(tmp_path)
    response, body = server.request(
        "POST",
        "/oauth/register",
        data=b"redirect_uris=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.code == 400 and json.loads(body)["error"] == "invalid_client_metadata"


def test_registration_is_rate_limited_per_address(tmp_path: Path) -> None:
    """OA-44: past --registrations-per-address in an hour the next answers 429 with Retry-After; an hour later it works again."""
    server, _ = open_server(tmp_path)
    server.config = server.app._config = server.app._registration._config = __import__(
        "attrs"
    ).evolve(server.config, registrations_per_address=3)
    for _ in range(3):
        assert register(server, {"redirect_uris": [REDIRECT]})[0].code == 201
    response, answer = register(server, {"redirect_uris": [REDIRECT]})
    assert response.code == 429 and response.headers.getRawHeaders(b"retry-after")
    assert len(server.store.clients) == 3
    server.clock.advance(3601)
    assert register(server, {"redirect_uris": [REDIRECT]})[0].code == 201


def test_unknown_short_id_at_token_endpoint_is_invalid_client(tmp_path: Path) -> None:
    """An unknown (or unopenable) client at /oauth/token gets 401 invalid_client, so Claude re-registers."""
    server, _ = open_server(tmp_path)
    for client_id in (
        "mc_" + "A" * 22,
        COMPACT_PREFIX + "garbage",
        "eyJhbGciOi.x.y.z.w",
        DOC_URL + "x",
    ):
        response, body = server.token(
            {
                "grant_type": "authorization_code",
                "code": "c",
                "client_id": client_id,
                "code_verifier": "v" * 43,
            }
        )
        assert (response.code, body["error"]) == (401, "invalid_client"), client_id


# -- short ids ------------------------------------------------------------


def test_provisioned_ids_are_short_and_open_with_their_key_ring_only(tmp_path: Path) -> None:
    """A compact id is < 200 characters, opens to the same servers, URIs and secret; another key ring or one changed character cannot open it."""
    ring = KeyRing([new_master_key()])
    codec = TokenCodec(ring, __import__("twisted.internet.task", fromlist=["Clock"]).Clock())
    compact, _, secret = provision_short_client(
        codec, IMAP, SMTP, DEFAULT_REDIRECT_URIS, name="Laptop"
    )
    assert compact is not None and len(compact) < 200
    client = open_client(codec, compact)
    assert (client.imap, client.smtp, client.name) == (IMAP, SMTP, "Laptop")
    assert client.redirect_uris == DEFAULT_REDIRECT_URIS
    assert client.check_secret(secret) and not client.check_secret(secret + "x")
    other = TokenCodec(KeyRing([new_master_key()]), codec._clock)
    with pytest.raises(InvalidToken):
        open_client(other, compact)
    flipped = compact[:-3] + ("A" if compact[-3] != "A" else "B") + compact[-2:]
    with pytest.raises(InvalidToken):
        open_client(codec, flipped)


def test_provisioned_client_too_big_for_compact_form_is_filed(tmp_path: Path) -> None:
    """Many redirect URIs do not fit a compact id: the description goes to the store under a 25-character id."""
    ring = KeyRing([new_master_key()])
    codec = TokenCodec(ring, __import__("twisted.internet.task", fromlist=["Clock"]).Clock())
    uris = [f"https://app{i}.example/a/rather/long/callback/path" for i in range(5)]
    compact, sealed, _ = provision_short_client(codec, IMAP, SMTP, uris, public=True)
    assert compact is None
    client = open_client(codec, "mc_" + "x" * 22, sealed)
    assert client.redirect_uris == tuple(uris) and client.client_id == "mc_" + "x" * 22


def test_ids_issued_before_still_log_in(tmp_path: Path) -> None:
    """A long sealed JWE client id (as mailmcp-generate issued before) still completes the flow."""
    server, _ = open_server(tmp_path)
    long_id, secret = provision_client(server.codec, IMAP, SMTP, [REDIRECT], name="Old")
    assert len(long_id) > 500
    server.client_id, server.client_secret = long_id, secret  # type: ignore[assignment]
    assert server.tokens()["access_token"]


# -- metadata documents --------------------------------------------------


def test_cimd_client_logs_in_and_is_named_on_the_login_page(tmp_path: Path) -> None:
    """A metadata URL client: its client_name and the redirect host are on the page; the code redeems as a public client."""
    server, fetcher = open_server(tmp_path, {DOC_URL: (doc(), 3600)})
    server.client_id, server.client_secret = DOC_URL, None  # type: ignore[assignment]
    _, body, _, _ = server.get_form(server.authorize_params())
    assert b"Tool Example" in body and b"app.example" in body
    code, verifier = server.code_for()
    response, tokens = server.redeem(code, verifier)
    assert response.code == 200, tokens
    assert fetcher.fetched == [(DOC_URL, True)]  # once: the cache answered the rest


@pytest.mark.parametrize(
    ("document", "says"),
    [
        (doc(client_id="https://evil.example/c.json"), b"different client_id"),
        (doc(redirect_uris=["https://other.example/cb"]), b"not registered for this client"),
        (doc(token_endpoint_auth_method="private_key_jwt"), b"(PKCE) is supported"),
        (doc(redirect_uris="https://app.example/cb"), b"lists no redirect_uris"),
        (["a list"], b"not a JSON object"),
    ],
)
def test_bad_metadata_documents_get_an_error_page(
    tmp_path: Path, document: Any, says: bytes
) -> None:
    """A document that lies about its client_id, lacks the redirect URI or asks for another auth method: error page, no redirect."""
    server, _ = open_server(tmp_path, {DOC_URL: (document, 3600)})
    response, body = server.request(
        "GET", "/oauth/authorize", params=server.authorize_params(client_id=DOC_URL)
    )
    assert response.code == 400 and not response.headers.getRawHeaders(b"location")
    assert says in body, body


def test_metadata_url_must_be_https_with_a_path_unless_allowed(tmp_path: Path) -> None:
    """http or a bare host is refused without fetching; under an allow prefix plain http is fetched unchecked."""
    allowed = "http://127.0.0.1:9/clients/"
    server, fetcher = open_server(
        tmp_path, {allowed + "a.json": (doc(allowed + "a.json"), 60)}, (allowed,)
    )
    for url in ("https://tools.example", "https://tools.example/"):
        response, body = server.request(
            "GET", "/oauth/authorize", params=server.authorize_params(client_id=url)
        )
        assert response.code == 400 and b"https URL with a path" in body
    response, body = server.request(
        "GET",
        "/oauth/authorize",
        params=server.authorize_params(client_id="http://127.0.0.1:9/other.json"),
    )
    assert response.code == 400
    response, body = server.request(
        "GET", "/oauth/authorize", params=server.authorize_params(client_id=allowed + "a.json")
    )
    assert response.code == 200, body
    assert fetcher.fetched == [(allowed + "a.json", False)]


def test_claudes_pinned_documents_are_used_without_fetching(tmp_path: Path) -> None:
    """Claude's and Claude Code's documents are package data: their callbacks work (Claude Code on any loopback port) with no fetch."""
    server, fetcher = open_server(tmp_path)
    response, body = server.request(
        "GET",
        "/oauth/authorize",
        params=server.authorize_params(
            client_id=CLAUDE, redirect_uri="https://claude.ai/api/mcp/auth_callback"
        ),
    )
    assert response.code == 200 and b"Claude" in body and b"claude.ai" in body
    response, body = server.request(
        "GET",
        "/oauth/authorize",
        params=server.authorize_params(
            client_id=CLAUDE_CODE, redirect_uri="http://localhost:53124/callback"
        ),
    )
    assert response.code == 200 and b"Claude Code" in body
    response, body = server.request(
        "GET",
        "/oauth/authorize",
        params=server.authorize_params(
            client_id=CLAUDE, redirect_uri="https://evil.example/api/mcp/auth_callback"
        ),
    )
    assert response.code == 400
    assert fetcher.fetched == []


def test_client_metadata_dir_overrides_pinned_documents(tmp_path: Path) -> None:
    """A document in --client-metadata-dir with Claude's client_id replaces the pinned copy."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "claude.json").write_text(
        json.dumps(doc(CLAUDE, client_name="Our Claude"))
    )
    pinned = load_pinned([PINNED_DIR, tmp_path / "mine"])
    assert pinned[CLAUDE].client_name == "Our Claude"
    assert pinned[CLAUDE].redirect_uris == (REDIRECT,)
    assert pinned[CLAUDE_CODE].client_name == "Claude Code"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.json").write_text("{")
    with pytest.raises(ValueError, match="not usable"):
        load_pinned([tmp_path / "bad"])


def test_cache_follows_max_age_within_bounds(tmp_path: Path) -> None:
    """A fetched document is reused until its max-age (at least 5 minutes, at most 24 hours), then fetched again."""
    server, fetcher = open_server(tmp_path, {DOC_URL: (doc(), MIN_CACHE)})
    resolver = server.app._clients._metadata
    run = server.run
    run(Deferred.fromCoroutine(resolver.resolve(DOC_URL)))
    server.clock.advance(MIN_CACHE - 1)
    run(Deferred.fromCoroutine(resolver.resolve(DOC_URL)))
    assert len(fetcher.fetched) == 1
    server.clock.advance(2)
    run(Deferred.fromCoroutine(resolver.resolve(DOC_URL)))
    assert len(fetcher.fetched) == 2
    assert max_age(None) == MIN_CACHE and max_age("no-store") == MIN_CACHE
    assert max_age("public, max-age=60") == MIN_CACHE
    assert max_age("max-age=7200") == 7200
    assert max_age("max-age=99999999") == MAX_CACHE


def test_cache_holds_a_bounded_number_of_documents(tmp_path: Path) -> None:
    """More documents than MAX_ENTRIES: the least recently used ones are dropped."""
    urls = [f"https://tools.example/c/{i}.json" for i in range(MAX_ENTRIES + 5)]
    server, fetcher = open_server(tmp_path, {u: (doc(u), 3600) for u in urls})
    resolver = server.app._clients._metadata
    for url in urls:
        server.run(Deferred.fromCoroutine(resolver.resolve(url)))
    assert len(resolver._cache) == MAX_ENTRIES
    server.run(Deferred.fromCoroutine(resolver.resolve(urls[0])))
    assert len(fetcher.fetched) == len(urls) + 1


def test_document_rules() -> None:
    """parse_document: client_id equals the URL, redirect URIs https or loopback http, control characters stripped from the name."""
    parsed = parse_document(
        DOC_URL, doc(client_name="A\x00B\nC", redirect_uris=["http://localhost/cb", REDIRECT])
    )
    assert parsed.client_name == "ABC"
    with pytest.raises(ClientMetadataError, match="https, or http on a loopback"):
        parse_document(DOC_URL, doc(redirect_uris=["http://app.example/cb"]))
    with pytest.raises(ClientMetadataError, match="authorization_code"):
        parse_document(DOC_URL, doc(grant_types=["refresh_token"]))


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("172.16.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("not-an-ip", False),
    ],
)
def test_public_address_rule(address: str, public: bool) -> None:
    """Only globally routable unicast addresses may be fetched from (IPv4-mapped IPv6 unwrapped)."""
    assert is_public_address(address) is public


def test_failed_fetches_are_remembered_briefly(tmp_path: Path) -> None:
    """A URL that failed is not fetched again for FAILURE_CACHE seconds (a reloaded page, a URL sent again and again), then it is."""
    from mailmcp.oauth._cimd import FAILURE_CACHE

    server, fetcher = open_server(tmp_path)
    for _ in range(3):
        response, body = server.request(
            "GET", "/oauth/authorize", params=server.authorize_params(client_id=DOC_URL)
        )
        assert response.code == 400 and b"HTTP 404" in body
    assert len(fetcher.fetched) == 1
    server.clock.advance(FAILURE_CACHE + 1)
    fetcher.documents[DOC_URL] = (doc(), 3600)
    response, _ = server.request(
        "GET", "/oauth/authorize", params=server.authorize_params(client_id=DOC_URL)
    )
    assert response.code == 200 and len(fetcher.fetched) == 2


def test_store_outage_during_lookup_is_a_503_page(tmp_path: Path) -> None:
    """If the store cannot be read while looking up a short id, the page says "temporarily unavailable" (503), no traceback."""
    server, _ = open_server(tmp_path)

    def broken(client_id: str) -> Deferred[str | None]:
        return fail(ConnectionError("store down"))

    server.store.get_client = broken  # type: ignore[method-assign]
    response, body = server.request(
        "GET", "/oauth/authorize", params=server.authorize_params(client_id="mc_" + "B" * 22)
    )
    assert response.code == 503 and b"temporarily unavailable" in body and b"Traceback" not in body


# -- daemon options --------------------------------------------------------


def parse_daemon(tmp_path: Path, *argv: str, environ: dict[str, str] | None = None) -> Any:
    from mailmcp.tap import Options

    options = Options(environ=environ or {})
    options.parseOptions(["--state-dir", str(tmp_path / "state"), *argv])
    return options.config


def test_default_profile_options(tmp_path: Path) -> None:
    """--imap-host/--smtp-host make the default profile with mailmcp-generate's port defaults; none given, none made."""
    config = parse_daemon(
        tmp_path,
        "--imap-host",
        "IMAP.Example.com",
        "--smtp-host",
        "smtp.example.com",
        "--smtp-security",
        "starttls",
    )
    assert config.default_imap == IMAP.__class__("imap.example.com", 993, "tls")
    assert config.default_smtp == IMAP.__class__("smtp.example.com", 587, "starttls")
    config = parse_daemon(tmp_path)
    assert config.default_imap is None and config.default_smtp is None


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--imap-host", "imap.example.com"], "--smtp-host is required"),
        (["--smtp-host", "smtp.example.com"], "--imap-host is required"),
        (
            [
                "--imap-host",
                "imap.example.com",
                "--smtp-host",
                "s.example.com",
                "--imap-security",
                "plain",
            ],
            "plain would send passwords in clear text",
        ),
        (
            [
                "--imap-host",
                "i.example.com",
                "--smtp-host",
                "s.example.com",
                "--smtp-port",
                "99999",
            ],
            "between 1 and 65535",
        ),
        (["--imap-port", "993"], "needs --imap-host and --smtp-host"),
        (["--client-metadata-allow", "ftp://x/"], "http(s) URL prefix"),
        (["--client-metadata-dir", "/nonexistent/dir"], "is not a directory"),
    ],
)
def test_bad_profile_options_are_one_line_errors(
    tmp_path: Path, argv: list[str], says: str
) -> None:
    """Each bad setting is a UsageError naming the option."""
    from twisted.python import usage

    with pytest.raises(usage.UsageError, match=__import__("re").escape(says)):
        parse_daemon(tmp_path, *argv)


def test_client_metadata_allow_is_repeatable(tmp_path: Path) -> None:
    """--client-metadata-allow repeats on the command line and is space separated in the variable."""
    config = parse_daemon(
        tmp_path,
        "--client-metadata-allow",
        "http://127.0.0.1:1/a/",
        "--client-metadata-allow",
        "https://intra.example/b/",
    )
    assert config.client_metadata_allow == ("http://127.0.0.1:1/a/", "https://intra.example/b/")
    config = parse_daemon(
        tmp_path,
        environ={"MAILMCP_CLIENT_METADATA_ALLOW": "http://h.example/x/ http://h.example/y/"},
    )
    assert config.client_metadata_allow == ("http://h.example/x/", "http://h.example/y/")


def test_concurrent_requests_share_one_fetch(tmp_path: Path) -> None:
    """Three authorization requests for one uncached URL while it is being fetched: one fetch, all three answered."""
    server, fetcher = open_server(tmp_path)
    pending: Deferred[tuple[Any, int]] = Deferred()
    fetcher.fetch = lambda url, checked: (fetcher.fetched.append((url, checked)), pending)[1]  # type: ignore[method-assign]
    resolver = server.app._clients._metadata
    results: list[Any] = []
    for _ in range(3):
        Deferred.fromCoroutine(resolver.resolve(DOC_URL)).addBoth(results.append)
    assert results == [] and len(fetcher.fetched) == 1
    pending.callback((doc(), 3600))
    assert [r.client_name for r in results] == ["Tool Example"] * 3


def test_compact_id_carries_the_scope_cap() -> None:
    """A --scope cap sealed in a compact id comes back as the client's scopes; no cap means all five."""
    from twisted.internet.task import Clock

    from mailmcp._scopes import FULL

    codec = TokenCodec(KeyRing([new_master_key()]), Clock())
    capped = frozenset({"mail.read", "mail.draft"})
    compact, _, _ = provision_short_client(codec, IMAP, SMTP, DEFAULT_REDIRECT_URIS, scopes=capped)
    assert compact is not None and len(compact) < 200
    assert open_client(codec, compact).scopes == capped
    plain, _, _ = provision_short_client(codec, IMAP, SMTP, DEFAULT_REDIRECT_URIS)
    assert plain is not None and open_client(codec, plain).scopes == FULL
