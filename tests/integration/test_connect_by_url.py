"""
Connecting by pasting one URL, against a real daemon with a default mail
profile (``--imap-host`` ...), real Dovecot/Postfix, the real ``mcp`` client
and a real Chromium on the login page: by Client ID Metadata Document and by
dynamic client registration, each then calling a tool.  Metadata documents
that lie, redirect, are too large or sit on a private address are refused
with an error page, and the loopback document server counts that nothing
else was fetched.  Claude's pinned documents need no fetch at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, generate_client

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("oauth_url_client.py")
CLAUDE = "https://claude.ai/oauth/mcp-oauth-client-metadata"


class DocumentServer:
    """Loopback http server of metadata documents, counting requests and connections."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.connections = 0
        self.documents: dict[str, tuple[int, dict[str, str], bytes]] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.hits[self.path] += 1
                status, headers, body = owner.documents.get(self.path, (404, {}, b"{}"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                owner.connections += 1
                super().process_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, path: str, document: Any, status: int = 200, **headers: str) -> str:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.documents[path] = (status, {"content-type": "application/json", **headers}, body)
        return self.base + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def documents() -> Iterator[DocumentServer]:
    server = DocumentServer()
    try:
        yield server
    finally:
        server.close()


def profile(services: Any) -> list[str]:
    return [
        "--imap-host",
        "localhost",
        "--imap-port",
        str(services.imaps_port),
        "--smtp-host",
        "localhost",
        "--smtp-port",
        str(services.smtps_port),
    ]


def run_client(config: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=str(ROOT),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def metadata_document(url: str, name: str) -> dict[str, Any]:
    return {
        "client_id": url,
        "client_name": name,
        "redirect_uris": ["http://127.0.0.1/callback"],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }


def test_mcp_client_connects_by_client_metadata_document(
    services, daemon_factory, documents
) -> None:
    """The mcp client with a client_metadata_url: Chromium logs in on a page naming the client, then list_mailboxes works; the document was fetched once."""
    url = documents.base + "/allowed/inhouse.json"
    documents.serve(
        "/allowed/inhouse.json",
        metadata_document(url, "In-house Agent"),
        **{"cache-control": "max-age=600"},
    )
    daemon = daemon_factory(
        services, *profile(services), "--client-metadata-allow", documents.base + "/allowed/"
    )
    out = run_client(
        {
            "base": daemon.base_url,
            "client_metadata_url": url,
            "client_name": "In-house Agent",
            "user": "alice@example.test",
            "password": "alicepw",
            "call_tool": "list_mailboxes",
        }
    )
    assert out["authorization_client_id"] == url
    assert out["client_id"] == url and out["registered_dynamically"] is False
    assert out["page_names_client"] is True
    assert out["page_redirect_host"] == "127.0.0.1:" + out["page_redirect_host"].split(":")[1]
    assert out["call_is_error"] is False, out["call_text"]
    assert "INBOX" in out["call_text"]
    assert out["got_refresh_token"] is True
    assert documents.hits == Counter({"/allowed/inhouse.json": 1})


def test_mcp_client_connects_by_dynamic_registration(services, daemon_factory) -> None:
    """The mcp client with no client information registers (short id), Chromium logs in, list_mailboxes works."""
    daemon = daemon_factory(services, *profile(services))
    out = run_client(
        {
            "base": daemon.base_url,
            "client_name": "Registering Agent",
            "auth_method": "client_secret_post",
            "user": "bob@example.test",
            "password": "bobpw",
            "call_tool": "list_mailboxes",
        }
    )
    assert out["registered_dynamically"] is True
    assert out["client_id"].startswith("mc_") and len(out["client_id"]) < 200
    assert out["page_names_client"] is True
    assert out["call_is_error"] is False, out["call_text"]
    assert "INBOX" in out["call_text"]


def authorize(
    daemon: Any, client_id: str, redirect_uri: str = "http://127.0.0.1:9/callback"
) -> tuple[int, str]:
    params = {
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "state": "s",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        "resource": daemon.base_url + "/mcp",
    }
    url = daemon.base_url + "/oauth/authorize?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_bad_metadata_documents_are_refused_without_fetching_anything_else(
    services, daemon_factory, documents
) -> None:
    """OA-41, OA-42, OA-43: a lying client_id, a foreign redirect URI, a redirect, a 6 KiB document, a private address: error page each, and only the named document was ever requested."""
    allowed = documents.base + "/allowed/"
    liar = documents.serve("/allowed/liar.json", metadata_document("https://claude.ai/x", "Liar"))
    other = allowed + "other.json"
    documents.serve(
        "/allowed/other.json",
        {**metadata_document(other, "Other"), "redirect_uris": ["https://attacker.example/cb"]},
    )
    moved = documents.serve(
        "/allowed/moved.json", b"", status=302, location=documents.base + "/allowed/target.json"
    )
    documents.serve("/allowed/target.json", metadata_document(allowed + "moved.json", "Target"))
    big = allowed + "big.json"
    documents.serve("/allowed/big.json", {**metadata_document(big, "Big"), "padding": "x" * 6000})
    daemon = daemon_factory(services, *profile(services), "--client-metadata-allow", allowed)

    cases = [
        (liar, "different client_id"),
        (other, "not registered for this client"),
        (moved, "redirects are not followed"),
        (big, "too large"),
    ]
    for url, says in cases:
        status, page = authorize(daemon, url)
        assert status == 400 and says in page, (url, page[-600:])
        assert "<title>" in page
    assert documents.hits == Counter(
        {
            "/allowed/liar.json": 1,
            "/allowed/other.json": 1,
            "/allowed/moved.json": 1,
            "/allowed/big.json": 1,
        }
    )

    # Outside the allow prefix the address rules apply: localhost is refused
    # before any connection is made.
    before = documents.connections
    private = f"https://localhost:{documents.port}/allowed/target.json"
    status, page = authorize(daemon, private)
    assert status == 400 and "not a public internet address" in page
    status, page = authorize(daemon, f"https://127.0.0.1:{documents.port}/doc.json")
    assert status == 400 and "not a public internet address" in page
    assert documents.connections == before
    assert documents.hits["/allowed/target.json"] == 0


def test_claude_pinned_document_needs_no_fetch(services, daemon_factory) -> None:
    """Claude's client id opens the login page for its callback with no network fetch (the daemon has no route out in the test either)."""
    daemon = daemon_factory(services, *profile(services))
    status, page = authorize(daemon, CLAUDE, "https://claude.ai/api/mcp/auth_callback")
    assert status == 200 and "Claude" in page and "claude.ai" in page
    status, page = authorize(daemon, CLAUDE, "https://evil.example/api/mcp/auth_callback")
    assert status == 400


def test_without_profile_metadata_urls_are_unknown(services, daemon_factory) -> None:
    """No default profile: the metadata advertises neither CIMD nor registration and Claude's id is unknown."""
    daemon = daemon_factory(services)
    with urllib.request.urlopen(
        daemon.base_url + "/.well-known/oauth-authorization-server", timeout=10
    ) as r:
        metadata = json.loads(r.read())
    assert "registration_endpoint" not in metadata
    assert "client_id_metadata_document_supported" not in metadata
    status, page = authorize(daemon, CLAUDE, "https://claude.ai/api/mcp/auth_callback")
    assert status == 400 and "not issued by this server" in page


def test_generated_ids_are_short_and_work_beside_a_profile(services, daemon_factory) -> None:
    """mailmcp-generate prints an id under 200 characters; it opens the login page of a daemon with a default profile and names its own servers."""
    daemon = daemon_factory(services, *profile(services))
    client = generate_client(daemon.state_dir, services, "--name", "Provisioned", "--public")
    assert len(client["client_id"]) < 200
    status, page = authorize(daemon, client["client_id"])
    assert status == 200 and "Provisioned" in page


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_generated_id_too_big_for_compact_form_is_filed_in_the_store(
    services, daemon_factory, store
) -> None:
    """With many redirect URIs mailmcp-generate files the client under a 25-character id in --store (SQLite or Redis); the daemon on that store opens it."""
    args = ("--store", services.redis_url) if store == "redis" else ()
    daemon = daemon_factory(services, *args)
    uris = [f"https://app{i}.example/a/rather/long/callback/path" for i in range(4)]
    client = generate_client(
        daemon.state_dir,
        services,
        *args,
        "--name",
        "Filed",
        "--public",
        *[a for u in [*uris, "http://127.0.0.1/callback"] for a in ("--redirect-uri", u)],
    )
    assert client["client_id"].startswith("mc_") and len(client["client_id"]) == 25
    status, page = authorize(daemon, client["client_id"], "http://127.0.0.1:9/callback")
    assert status == 200 and "Filed" in page
    status, page = authorize(daemon, "mc_" + "A" * 22, "http://127.0.0.1:9/callback")
    assert status == 400 and "not issued by this server" in page


def test_revoke_client_works_for_registered_and_metadata_ids(services, daemon_factory, documents) -> None:
    """--revoke-client takes a registered short id or a metadata URL as it is: its login page is refused afterwards."""
    from tests.integration.generate_cli import generate_json

    url = documents.serve("/allowed/revoked.json",
                          metadata_document(documents.base + "/allowed/revoked.json", "Soon Revoked"))
    daemon = daemon_factory(services, *profile(services), "--client-metadata-allow", documents.base + "/allowed/")
    request = urllib.request.Request(daemon.base_url + "/oauth/register", method="POST",
                                     data=json.dumps({"redirect_uris": ["http://127.0.0.1/callback"],
                                                      "token_endpoint_auth_method": "none"}).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        registered = json.loads(response.read())["client_id"]
    for client_id in (registered, url):
        assert authorize(daemon, client_id, "http://127.0.0.1:9/callback")[0] == 200
        generate_json(daemon.state_dir.parent, "--state-dir", str(daemon.state_dir), "--revoke-client", client_id)
        status, page = authorize(daemon, client_id, "http://127.0.0.1:9/callback")
        assert status == 403 and "revoked" in page
