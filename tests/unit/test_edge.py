"""
What clients trip on, socket-free: the 2026-07-28 era's answer to
``initialize``, CORS on ``/mcp`` through the router, root aliases and the
paths of a base URL with a path.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq

from mailmcp._paths import (
    authorization_server_metadata_url,
    metadata_paths,
    resource_metadata_url,
    strip_base_path,
)
from mailmcp.testing import tool_services
from mailmcp.web._cors import CORSPolicy
from mailmcp.web._router import Router
from tests.unit.mcp_client import (
    BASE,
    INITIALIZE,
    MODERN,
    PV,
    TOKEN,
    Client,
    _result,
    make_app,
    make_config,
    modern,
    modern_headers,
)

INSPECTOR = "https://inspector.example.test"


@pytest.fixture
def client() -> Client:
    return Client(make_app()[0])


# -- era routing --------------------------------------------------------------


def test_initialize_declaring_2026_in_header_is_404_method_not_found(client: Client) -> None:
    """initialize with MCP-Protocol-Version: 2026-07-28 is 404 -32601, as for any removed method."""
    code, body = client.rpc(INITIALIZE, headers={b"mcp-protocol-version": [MODERN.encode()]})
    assert code == 404
    assert body["error"]["code"] == -32601
    assert body["id"] == 1
    assert "result" not in body


def test_initialize_declaring_2026_in_meta_is_404_method_not_found(client: Client) -> None:
    """initialize whose params._meta names 2026-07-28 (full envelope and headers, or _meta alone) is 404 -32601."""
    message = modern("initialize", INITIALIZE["params"])
    code, body = client.rpc(message, headers=modern_headers("initialize"))
    assert (code, body["error"]["code"]) == (404, -32601)
    message = json.loads(json.dumps(INITIALIZE))
    message["params"]["_meta"] = {PV: MODERN}
    code, body = client.rpc(message)
    assert (code, body["error"]["code"]) == (404, -32601)


@pytest.mark.parametrize(
    "headers, meta",
    [
        ({}, None),
        ({b"mcp-protocol-version": [b"2025-11-25"]}, None),
        ({}, {"progressToken": 1}),
        ({}, {PV: "2025-11-25"}),
    ],
)
def test_initialize_without_2026_declaration_stays_handshake(
    client: Client, headers: dict[bytes, list[bytes]], meta: Any
) -> None:
    """initialize without a 2026-07-28 declaration is the legacy handshake (200, negotiated version)."""
    message = json.loads(json.dumps(INITIALIZE))
    if meta is not None:
        message["params"]["_meta"] = meta
    code, body = client.rpc(message, headers=headers)
    assert code == 200
    assert body["result"]["protocolVersion"] == "2025-11-25"


# -- CORS on /mcp through the router ------------------------------------------


def router_stub(**config: Any) -> StubTreq:
    app, _ = make_app()
    policy = CORSPolicy.from_config(make_config(**config))
    return StubTreq(Router([("/mcp", app.resource())], cors=policy))


def request(stub: StubTreq, method: str, headers: dict[bytes, list[bytes]], body: bytes | None = None) -> Any:
    d = stub.request(method, f"{BASE}/mcp", data=body, headers=headers)
    stub.flush()
    response = _result(d)
    return response, _result(response.content())


def test_mcp_preflight_answered_without_token() -> None:
    """A preflight from an allowed origin is 204 with the origin echoed and MCP headers allowed; no token needed."""
    response, _ = request(router_stub(), "OPTIONS", {
        b"origin": [INSPECTOR.encode()],
        b"access-control-request-method": [b"POST"],
        b"access-control-request-headers": [b"authorization, content-type, mcp-protocol-version"],
    })
    assert response.code == 204
    headers = response.headers
    assert headers.getRawHeaders(b"access-control-allow-origin") == [INSPECTOR.encode()]
    allowed = headers.getRawHeaders(b"access-control-allow-headers")[0]
    for name in (b"authorization", b"content-type", b"mcp-protocol-version", b"mcp-session-id"):
        assert name in allowed
    assert b"POST" in headers.getRawHeaders(b"access-control-allow-methods")[0]
    assert headers.getRawHeaders(b"vary") == [b"Origin"]


def test_mcp_401_carries_cors_so_the_browser_reads_the_challenge() -> None:
    """A 401 to an allowed origin echoes it and exposes WWW-Authenticate."""
    response, _ = request(router_stub(), "POST", {
        b"origin": [INSPECTOR.encode()], b"content-type": [b"application/json"]}, b"{}")
    assert response.code == 401
    headers = response.headers
    assert headers.getRawHeaders(b"access-control-allow-origin") == [INSPECTOR.encode()]
    exposed = headers.getRawHeaders(b"access-control-expose-headers")[0].lower()
    for name in (b"www-authenticate", b"mcp-session-id", b"mcp-protocol-version"):
        assert name in exposed
    assert headers.getRawHeaders(b"vary") == [b"Origin"]
    assert headers.getRawHeaders(b"www-authenticate")[0].startswith(b"Bearer resource_metadata=")


def test_mcp_authenticated_call_carries_cors() -> None:
    """An authenticated call from an allowed origin is served with its origin echoed."""
    response, body = request(router_stub(), "POST", {
        b"origin": [INSPECTOR.encode()], b"content-type": [b"application/json"],
        b"authorization": [b"Bearer " + TOKEN.encode()]},
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode())
    assert response.code == 200, body
    assert response.headers.getRawHeaders(b"access-control-allow-origin") == [INSPECTOR.encode()]


def test_disallowed_origin_gets_no_cors_and_mcp_still_refuses_it() -> None:
    """OA-31: a foreign origin: preflight 403 without CORS headers; the call itself still 403 (Origin check)."""
    evil = [b"https://evil.example"]
    stub = router_stub()
    response, _ = request(stub, "OPTIONS", {b"origin": evil, b"access-control-request-method": [b"POST"]})
    assert response.code == 403
    assert not response.headers.hasHeader(b"access-control-allow-origin")
    response, _ = request(stub, "POST", {
        b"origin": evil, b"content-type": [b"application/json"],
        b"authorization": [b"Bearer " + TOKEN.encode()]}, b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    assert response.code == 403
    assert not response.headers.hasHeader(b"access-control-allow-origin")
    assert not response.headers.hasHeader(b"access-control-expose-headers")


def test_no_allowed_origins_means_no_cors_for_other_sites() -> None:
    """Without --allowed-origins, the Inspector's origin is not answered (never *)."""
    response, _ = request(router_stub(allowed_origins=()), "OPTIONS", {
        b"origin": [INSPECTOR.encode()], b"access-control-request-method": [b"POST"]})
    assert response.code == 403
    assert not response.headers.hasHeader(b"access-control-allow-origin")


# -- paths ----------------------------------------------------------------------


def test_path_inserted_metadata_urls() -> None:
    """RFC 8414 §3.1 / RFC 9728 §3.1 insertion for a base URL with a path, and none without."""
    assert authorization_server_metadata_url("https://host/mail") == (
        "https://host/.well-known/oauth-authorization-server/mail")
    assert resource_metadata_url("https://host/mail") == (
        "https://host/.well-known/oauth-protected-resource/mail/mcp")
    assert resource_metadata_url("https://host") == "https://host/.well-known/oauth-protected-resource/mcp"
    assert metadata_paths("https://host/mail")["/.well-known/oauth-authorization-server/mail"] == "server"


@pytest.mark.parametrize(
    "path, expected",
    [
        (b"/mail/mcp", b"/mcp"),
        (b"/mail", b"/"),
        (b"/mail?x=1", b"/?x=1"),
        (b"/mail/oauth/token?a", b"/oauth/token?a"),
        (b"/mailbox/mcp", b"/mailbox/mcp"),
        (b"/.well-known/oauth-authorization-server/mail", b"/.well-known/oauth-authorization-server/mail"),
        (b"/mcp", b"/mcp"),
    ],
)
def test_strip_base_path(path: bytes, expected: bytes) -> None:
    """Only a whole leading path segment equal to the base path is taken off."""
    assert strip_base_path(path, b"/mail") == expected


def test_mcp_challenge_names_path_inserted_metadata() -> None:
    """Under a base URL with a path, the 401 challenge points at the path-inserted PRM URL."""
    from mailmcp.mcp._app import MCPApp
    from mailmcp.testing import FakeTokenVerifier, echo_tool

    config = make_config(base_url="https://host.example/mail")
    app = MCPApp(config, FakeTokenVerifier({}), tool_services(), [echo_tool()])
    stub = Client(app)
    code, headers, _ = stub.request("POST", b"{}", token=None, url="https://host.example/mcp")
    assert code == 401
    assert headers.getRawHeaders(b"www-authenticate")[0].startswith(
        b'Bearer resource_metadata="https://host.example/.well-known/oauth-protected-resource/mail/mcp"')


def test_large_body_401_at_headers_time_carries_cors() -> None:
    """The 401 a large body gets before it is read (the site's gate) echoes an allowed origin too."""
    from twisted.web.test.requesthelper import DummyRequest

    app, _ = make_app()
    request = DummyRequest([b"mcp"])
    request.method = b"POST"
    request.requestHeaders.setRawHeaders(b"origin", [INSPECTOR.encode()])
    refusal = _result(app.admit_large_body(request))
    assert refusal is not None and refusal.status == 401
    headers = dict((name.lower(), value) for name, value in refusal.headers)
    assert headers[b"access-control-allow-origin"] == INSPECTOR.encode()
    assert b"WWW-Authenticate" in headers[b"access-control-expose-headers"]
    assert headers[b"www-authenticate"].startswith(b"Bearer resource_metadata=")
