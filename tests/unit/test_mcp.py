"""
The ``/mcp`` endpoint without sockets: `MCPApp` driven through
`treq.testing.StubTreq` with a `FakeTokenVerifier` and demo tools.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import RootModel
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import globalLogPublisher

from mailmcp._toolkit import ToolContext
from mailmcp.mcp._app import MCPApp
from mailmcp.mcp._results import describe_validation_error
from mailmcp.testing import EchoInput, FakeTokenVerifier, echo_tool, make_account, tool_services
from mailmcp.web._cors import origin_of
from tests.unit.mcp_client import (
    BASE,
    CAPS,
    INITIALIZE,
    MODERN,
    PRM,
    PV,
    TOKEN,
    Boom,
    Client,
    Empty,
    _explode,
    _result,
    _tool,
    call,
    make_app,
    make_config,
    modern,
    modern_headers,
)


@pytest.fixture
def client() -> Client:
    return Client(make_app()[0])


@pytest.fixture
def logged() -> Any:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# -- the gate ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE", "PUT"])
def test_no_token_is_401_with_resource_metadata(method: str) -> None:
    """Any request without a token, whatever its method, gets the RFC 9728 challenge."""
    c = Client(make_app()[0])
    body = json.dumps(INITIALIZE).encode() if method == "POST" else None
    code, headers, content = c.request(method, body, token=None)
    assert code == 401
    challenge = headers.getRawHeaders(b"www-authenticate")[0].decode()
    assert challenge == f'Bearer {PRM}, scope="mail.read mail.organize mail.draft mail.send mail.delete"'
    assert b"error" in content


def test_bad_token_is_401_invalid_token(client: Client) -> None:
    """An unknown token is invalid_token, and the token is not echoed back."""
    code, headers, content = client.request("POST", json.dumps(INITIALIZE).encode(), token="forged-abc")
    assert code == 401
    challenge = headers.getRawHeaders(b"www-authenticate")[0].decode()
    assert challenge.startswith(f"Bearer {PRM}")
    assert 'error="invalid_token"' in challenge
    assert b"forged-abc" not in content


def test_unauthenticated_get_is_401_not_405(client: Client) -> None:
    """An unauthenticated GET must not reveal 405 (Claude then assumes no auth is needed)."""
    code, _, _ = client.request("GET", token="nope")
    assert code == 401


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_authenticated_get_and_delete_are_405(client: Client, method: str) -> None:
    """With a valid token there is no listen stream and no session to delete: 405 Allow: POST."""
    code, headers, _ = client.request(method, content_type=None)
    assert code == 405
    assert headers.getRawHeaders(b"allow") == [b"POST"]


def test_token_in_query_is_refused(client: Client) -> None:
    """A token in the URL is refused even when it is valid (RFC 6750 §2.3 / MCP)."""
    code, _ = client.rpc(INITIALIZE, url=f"{BASE}/mcp?access_token={TOKEN}", token=None)
    assert code == 401
    code, _, _ = client.request(
        "POST", json.dumps(INITIALIZE).encode(), url=f"{BASE}/mcp?access_token={TOKEN}"
    )
    assert code == 401


def test_two_authorization_headers_are_refused(client: Client) -> None:
    """Two Authorization headers are ambiguous: 400 invalid_request."""
    code, headers, _ = client.request(
        "POST",
        json.dumps(INITIALIZE).encode(),
        headers={b"authorization": [f"Bearer {TOKEN}".encode(), f"Bearer {TOKEN}".encode()]},
    )
    assert code == 400
    assert b'error="invalid_request"' in headers.getRawHeaders(b"www-authenticate")[0]


@pytest.mark.parametrize(
    "value", [b"Basic dXNlcjpwYXNz", b"Bearer", b"Bearer ", b"Bearer a b", b"bearer \xff\xfe", b"Bearer " + b"a" * 9000]
)
def test_malformed_authorization_is_401(client: Client, value: bytes) -> None:
    """Other schemes and malformed Bearer credentials never get through."""
    code, headers, _ = client.request(
        "POST", json.dumps(INITIALIZE).encode(), headers={b"authorization": [value]}
    )
    assert code == 401
    assert headers.getRawHeaders(b"www-authenticate")[0].startswith(f"Bearer {PRM}".encode())


def test_bearer_scheme_is_case_insensitive(client: Client) -> None:
    """RFC 7235: the auth scheme is case-insensitive."""
    code, body = client.rpc(INITIALIZE, headers={b"authorization": [f"bearer {TOKEN}".encode()]})
    assert code == 200
    assert body["result"]["protocolVersion"] == "2025-11-25"


def test_verifier_crash_is_503_not_500(logged: list[dict[str, Any]]) -> None:
    """A broken grant store is a temporary 503, logged, never a 500 or traceback."""

    class Broken:
        def verify(self, token: str) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            d.errback(ConnectionError("store down"))
            return d

    app = MCPApp(make_config(), Broken(), tool_services(), [echo_tool()])
    code, headers, content = Client(app).request("POST", json.dumps(INITIALIZE).encode())
    assert code == 503
    assert b"store down" not in content
    assert any(e.get("log_failure") is not None for e in logged)


# -- HTTP-level checks -----------------------------------------------------------


@pytest.mark.parametrize("origin", [b"https://evil.example", b"null", b"https://mail.example.test.evil.example"])
def test_foreign_origin_is_403(client: Client, origin: bytes) -> None:
    """A browser page from another origin is refused (DNS rebinding)."""
    code, body = client.rpc(INITIALIZE, headers={b"origin": [origin]})
    assert code == 403
    assert body["error"]["code"] == -32600


@pytest.mark.parametrize(
    "origin", [b"https://mail.example.test", b"https://MAIL.example.test:443", b"https://inspector.example.test"]
)
def test_own_and_allowed_origins_pass(client: Client, origin: bytes) -> None:
    """The base URL's origin and configured origins are allowed."""
    code, _ = client.rpc(INITIALIZE, headers={b"origin": [origin]})
    assert code == 200


def test_wrong_content_type_is_415(client: Client) -> None:
    """Only application/json bodies are accepted."""
    code, _, _ = client.request("POST", json.dumps(INITIALIZE).encode(), content_type=b"text/plain")
    assert code == 415
    code, _, _ = client.request("POST", json.dumps(INITIALIZE).encode(), content_type=None)
    assert code == 415
    code, _ = client.rpc(INITIALIZE, content_type=b"application/json; charset=utf-8")
    assert code == 200


def test_accept_without_json_is_406(client: Client) -> None:
    """A client that cannot take JSON cannot be answered."""
    code, _ = client.rpc(INITIALIZE, headers={b"accept": [b"text/event-stream"]})
    assert code == 406
    code, _ = client.rpc(INITIALIZE, headers={b"accept": [b"*/*"]})
    assert code == 200


def test_body_over_cap_is_413() -> None:
    """MCPApp enforces its own body cap too."""
    verifier = FakeTokenVerifier({TOKEN: make_account()})
    app = MCPApp(make_config(), verifier, tool_services(), [echo_tool()], max_body=100)
    code, body = Client(app).rpc(call("echo", {"text": "x" * 200}))
    assert code == 413


# -- JSON-RPC framing --------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"{", -32700),
        (b"", -32700),
        (b"\xff\xfe{}", -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","x":NaN}', -32700),
        (b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}', -32700),
        (b"[" * 100_000 + b"]" * 100_000, -32700),
        (b"[" * 70 + b"]" * 70, -32700),
        (b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}', -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"\\ud800"}}}', -32700),
        (b"[]", -32600),
        (b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]', -32600),
        (b'"str"', -32600),
        (b"null", -32600),
        (b"42", -32600),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', -32600),
        (b'{"jsonrpc":"2.0","id":1}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"result":{}}', -32600),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', -32600),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', -32600),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', -32600),
        (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', -32600),
        (b'{"jsonrpc":"2.0","id":"' + b"x" * 10240 + b'","method":"ping"}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":42}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}', -32600),
    ],
)
def test_malformed_bodies_map_to_jsonrpc_errors(client: Client, raw: bytes, code: int) -> None:
    """Every malformed body is a 400 with the right JSON-RPC error and a null id; never a 500."""
    status, body = client.rpc(raw)
    assert status == 400
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    assert body["error"]["code"] == code


def test_notification_is_202_without_body(client: Client) -> None:
    """A notification is acknowledged with 202 and no body, whatever its method."""
    for method in ("notifications/initialized", "notifications/cancelled", "whatever"):
        code, headers, content = client.request(
            "POST", json.dumps({"jsonrpc": "2.0", "method": method}).encode()
        )
        assert (code, content) == (202, b"")


def test_notification_with_unknown_version_header_is_400(client: Client) -> None:
    """The version header is checked on notifications too."""
    code, body = client.rpc(
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers={b"mcp-protocol-version": [b"1999-01-01"]},
    )
    assert code == 400


# -- handshake era -------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested, negotiated",
    [
        ("2025-03-26", "2025-03-26"),
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        ("2024-11-05", "2025-11-25"),
        ("2026-07-28", "2025-11-25"),
        ("2099-01-01", "2025-11-25"),
    ],
)
def test_initialize_negotiates_version(client: Client, requested: str, negotiated: str) -> None:
    """A supported version is echoed; anything else gets our newest handshake version."""
    message = json.loads(json.dumps(INITIALIZE))
    message["params"]["protocolVersion"] = requested
    code, body = client.rpc(message)
    assert code == 200
    result = body["result"]
    assert result["protocolVersion"] == negotiated
    assert result["capabilities"] == {"tools": {}}
    assert result["serverInfo"]["name"] == "mailmcp"
    assert "resultType" not in result


def test_initialize_with_bad_params_is_invalid_params(client: Client) -> None:
    """initialize without clientInfo is -32602, naming the field."""
    code, body = client.rpc(
        {"jsonrpc": "2.0", "id": "a", "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
    )
    assert body["id"] == "a"
    assert body["error"]["code"] == -32602
    assert "clientInfo" in body["error"]["message"] or "client_info" in body["error"]["message"]


def test_ping(client: Client) -> None:
    """ping answers an empty result in the handshake era."""
    code, body = client.rpc({"jsonrpc": "2.0", "id": 3, "method": "ping"}, headers={b"mcp-protocol-version": [b"2025-11-25"]})
    assert (code, body) == (200, {"jsonrpc": "2.0", "id": 3, "result": {}})


def test_unsupported_version_header_is_400(client: Client) -> None:
    """MCP-05: an unknown MCP-Protocol-Version is a 400."""
    code, body = client.rpc(
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers={b"mcp-protocol-version": [b"1999-01-01"]}
    )
    assert code == 400
    assert body["id"] == 3


def test_unknown_method_is_method_not_found(client: Client) -> None:
    """MCP-08: unknown and undeclared methods are -32601."""
    for method in ("foo/bar", "prompts/list", "resources/list", "logging/setLevel"):
        code, body = client.rpc({"jsonrpc": "2.0", "id": 9, "method": method, "params": {}})
        assert body["error"]["code"] == -32601, method
        assert body["id"] == 9


def test_tools_list(client: Client) -> None:
    """tools/list describes every tool from its models, schemas are objects, annotations complete."""
    code, body = client.rpc({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert code == 200
    tools = body["result"]["tools"]
    assert [t["name"] for t in tools] == ["echo", "explode", "refuse", "wrong_type"]
    echo = tools[0]
    assert echo["title"] == "Echo"
    assert echo["inputSchema"]["type"] == "object"
    assert echo["inputSchema"]["properties"]["text"]["type"] == "string"
    assert echo["inputSchema"]["required"] == ["text"]
    assert echo["inputSchema"]["additionalProperties"] is False
    assert echo["outputSchema"]["type"] == "object"
    assert echo["annotations"] == {
        "title": "Echo",
        "readOnlyHint": True,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": False,
    }
    assert "resultType" not in body["result"]


def test_tools_list_with_cursor_is_invalid_params(client: Client) -> None:
    """We never hand out cursors, so any cursor is invalid."""
    code, body = client.rpc({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"cursor": "x"}})
    assert body["error"]["code"] == -32602


def test_tools_call_returns_structured_and_text(client: Client) -> None:
    """The text block carries exactly the structured content as JSON."""
    code, body = client.rpc(call("echo", {"text": "héllo", "times": 2}))
    assert code == 200
    result = body["result"]
    assert result["isError"] is False
    assert result["structuredContent"] == {"text": "héllohéllo", "owner": "grant-1", "email": "alice@example.test"}
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    assert result["content"][0]["type"] == "text"


@pytest.mark.parametrize("version", ["2025-03-26", "2025-06-18", "2025-11-25", MODERN])
def test_tools_call_result_is_what_the_wire_model_writes(client: Client, version: str) -> None:
    """
    The result, encoded once as text and reused as structuredContent, is
    exactly what serialize_server_result writes for the same data in that
    protocol version.
    """
    from mcp_types import methods as mcp_methods

    if version == MODERN:
        message = modern("tools/call", {"name": "echo", "arguments": {"text": 'q"\\x\u2028', "times": 2}}, 9)
        headers = modern_headers("tools/call", "echo")
    else:
        message = call("echo", {"text": 'q"\\x\u2028', "times": 2}, request_id=9)
        headers = {b"mcp-protocol-version": [version.encode()]}
    code, body = client.rpc(message, headers=headers)
    assert code == 200 and body["id"] == 9 and body["jsonrpc"] == "2.0"
    result = dict(body["result"])
    result.pop("_meta", None)
    structured = {"text": 'q"\\x\u2028q"\\x\u2028', "owner": "grant-1", "email": "alice@example.test"}
    expected = mcp_methods.serialize_server_result("tools/call", version, {
        "content": [{"type": "text", "text": json.dumps(structured, ensure_ascii=False)}],
        "structuredContent": structured,
        "isError": False,
        "resultType": "complete",
    })
    assert result == expected
    assert (version == MODERN) == ("resultType" in result) == ("_meta" in body["result"])


def test_tools_call_lone_surrogate_is_escaped_not_a_failure(client: Client) -> None:
    """A lone surrogate (from a broken header) comes out \\u-escaped in valid UTF-8 JSON."""
    code, body = client.rpc(b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":'
                            b'{"name":"echo","arguments":{"text":"a\\ud800b"}}}')
    assert code == 400 and body["error"]["code"] == -32700  # refused at the door ...
    from mailmcp.mcp._results import ToolText as _ToolText

    raw = _ToolText(json.dumps({"text": "a\ud800b"}, ensure_ascii=False)).message(3)
    raw.decode("utf-8")  # ... and, should a tool produce one, the response is still UTF-8
    assert json.loads(raw)["result"]["content"][0]["text"] == json.dumps({"text": "a\ud800b"})


def test_tools_call_bad_arguments_is_tool_error(client: Client) -> None:
    """Input validation errors are isError results naming the field, not JSON-RPC errors."""
    code, body = client.rpc(call("echo", {"times": 50, "extra": "s3cret-value"}))
    assert code == 200
    result = body["result"]
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert "text" in text and "times" in text and "extra" in text
    assert "s3cret-value" not in text


def test_tools_call_missing_arguments(client: Client) -> None:
    """Absent arguments validate as an empty object."""
    code, body = client.rpc({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}})
    assert body["result"]["isError"] is True
    assert "text" in body["result"]["content"][0]["text"]


def test_tools_call_arguments_not_object_is_invalid_params(client: Client) -> None:
    """Arguments that are not an object are a malformed request: -32602."""
    code, body = client.rpc(call("echo", ["x"]))
    assert body["error"]["code"] == -32602


def test_tools_call_unknown_tool(client: Client) -> None:
    """MCP-08: an unknown tool is -32602."""
    code, body = client.rpc(call("nope", {}))
    assert body["error"]["code"] == -32602
    assert "nope" in body["error"]["message"]


def test_tool_error_is_shown_verbatim(client: Client) -> None:
    """A ToolError's message is what the model reads."""
    code, body = client.rpc(call("refuse", {}))
    assert body["result"]["isError"] is True
    assert "list_mailboxes" in body["result"]["content"][0]["text"]


def test_unexpected_exception_is_generic_and_logged(client: Client, logged: list[dict[str, Any]]) -> None:
    """An unknown exception is logged as a failure and answered generically: no secrets, no traceback."""
    code, body = client.rpc(call("explode", {}))
    assert code == 200
    text = body["result"]["content"][0]["text"]
    assert body["result"]["isError"] is True
    assert "hunter2" not in text and "Traceback" not in text
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert failures and failures[0]["tool"] == "explode"


def test_wrong_output_type_is_internal_tool_error(client: Client) -> None:
    """A handler returning the wrong model is caught as an internal failure."""
    code, body = client.rpc(call("wrong_type", {}))
    assert body["result"]["isError"] is True


def test_echo_tool_error(client: Client) -> None:
    """The demo echo tool's ToolError path."""
    code, body = client.rpc(call("echo", {"text": "fail"}))
    assert body["result"]["isError"] is True
    assert "fail" in body["result"]["content"][0]["text"]


# -- 2026-07-28 ------------------------------------------------------------------------


def test_discover(client: Client) -> None:
    """server/discover lists every version, tools capability and cache hints."""
    code, body = client.rpc(modern("server/discover"), headers=modern_headers("server/discover"))
    assert code == 200
    result = body["result"]
    assert result["resultType"] == "complete"
    assert result["supportedVersions"] == ["2025-03-26", "2025-06-18", "2025-11-25", MODERN]
    assert result["capabilities"] == {"tools": {}}
    assert result["ttlMs"] >= 0 and result["cacheScope"] in ("public", "private")
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "mailmcp"


def test_modern_tools_list_and_call(client: Client) -> None:
    """tools/list and tools/call in the stateless era carry resultType and cache hints."""
    code, body = client.rpc(modern("tools/list"), headers=modern_headers("tools/list"))
    assert code == 200
    assert body["result"]["resultType"] == "complete"
    assert "ttlMs" in body["result"] and "cacheScope" in body["result"]
    code, body = client.rpc(
        modern("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
        headers=modern_headers("tools/call", "echo"),
    )
    assert code == 200
    assert body["result"]["resultType"] == "complete"
    assert body["result"]["structuredContent"]["text"] == "hi"


def test_modern_base64_name_header(client: Client) -> None:
    """The Mcp-Name header may carry the base64 sentinel form."""
    code, body = client.rpc(
        modern("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
        headers=modern_headers("tools/call", "=?base64?ZWNobw==?="),
    )
    assert code == 200


def test_modern_name_header_mismatch(client: Client) -> None:
    """MCP-15: Mcp-Name different from params.name is 400 -32020."""
    code, body = client.rpc(
        modern("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
        headers=modern_headers("tools/call", "explode"),
    )
    assert code == 400
    assert body["error"]["code"] == -32020
    assert body["id"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {b"mcp-protocol-version": [MODERN.encode()]},
        {b"mcp-protocol-version": [MODERN.encode()], b"mcp-method": [b"tools/call"]},
        {b"mcp-method": [b"tools/list"]},
        {b"mcp-protocol-version": [MODERN.encode(), MODERN.encode()], b"mcp-method": [b"tools/list"]},
        {b"mcp-protocol-version": [b"2025-11-25"], b"mcp-method": [b"tools/call"]},
    ],
)
def test_modern_header_rules(client: Client, headers: dict[bytes, list[bytes]]) -> None:
    """Missing, duplicated or mismatched routing headers are 400 -32020."""
    code, body = client.rpc(modern("tools/list"), headers=headers)
    assert code == 400
    assert body["error"]["code"] == -32020


def test_modern_missing_meta(client: Client) -> None:
    """A 2026-07-28 request without the _meta envelope is 400 -32602."""
    code, body = client.rpc(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}, headers=modern_headers("tools/list")
    )
    assert code == 400
    assert body["error"]["code"] == -32602
    message = modern("tools/list")
    del message["params"]["_meta"][CAPS]
    code, body = client.rpc(message, headers=modern_headers("tools/list"))
    assert code == 400
    assert CAPS in body["error"]["message"]


def test_modern_unsupported_version(client: Client) -> None:
    """An unknown modern version is 400 -32022 naming what we support."""
    message = modern("tools/list")
    message["params"]["_meta"][PV] = "2099-01-01"
    code, body = client.rpc(message, headers=modern_headers("tools/list", version="2099-01-01"))
    assert code == 400
    assert body["error"]["code"] == -32022
    assert body["error"]["data"] == {
        "supported": ["2025-03-26", "2025-06-18", "2025-11-25", MODERN],
        "requested": "2099-01-01",
    }


def test_modern_unknown_method_is_404(client: Client) -> None:
    """Unknown methods, and handshake-only ones like ping, are 404 -32601 in the stateless era."""
    for method in ("foo/bar", "ping", "prompts/list"):
        code, body = client.rpc(modern(method), headers=modern_headers(method))
        assert code == 404, method
        assert body["error"]["code"] == -32601


def test_modern_invalid_params_is_400(client: Client) -> None:
    """A malformed tools/call in the stateless era is 400 -32602; an unknown tool too."""
    code, body = client.rpc(modern("tools/call", {"arguments": {}}), headers=modern_headers("tools/call"))
    assert (code, body["error"]["code"]) == (400, -32602)
    code, body = client.rpc(
        modern("tools/call", {"name": "nope", "arguments": {}}), headers=modern_headers("tools/call", "nope")
    )
    assert (code, body["error"]["code"]) == (400, -32602)


def test_lenient_handshake_version_header(client: Client, logged: list[dict[str, Any]]) -> None:
    """
    A client sending a handshake version in the header with a 2026 body is
    served (body authoritative), and logged once.
    """
    for _ in range(3):
        code, body = client.rpc(
            modern("tools/call", {"name": "echo", "arguments": {"text": "hi"}}),
            headers={b"mcp-protocol-version": [b"2025-11-25"]},
        )
        assert code == 200
        assert body["result"]["resultType"] == "complete"
    warnings = [e for e in logged if "authoritative" in e.get("log_format", "")]
    assert len(warnings) == 1
    assert warnings[0]["header"] == "2025-11-25"


def test_strict_mode_refuses_handshake_version_header() -> None:
    """With leniency off, the mismatch is 400 -32020 as the spec says."""
    c = Client(make_app(lenient_version_header=False)[0])
    code, body = c.rpc(
        modern("tools/list"), headers={b"mcp-protocol-version": [b"2025-11-25"], b"mcp-method": [b"tools/list"]}
    )
    assert (code, body["error"]["code"]) == (400, -32020)


def test_initialize_never_touches_tools_or_services() -> None:
    """initialize and tools/list run no tool handler (so no IMAP)."""
    ran: list[str] = []

    async def spy(context: ToolContext, arguments: Empty) -> Boom:
        ran.append("ran")
        return Boom(ok=True)

    c = Client(MCPApp(make_config(), FakeTokenVerifier({TOKEN: make_account()}), tool_services(), [_tool("spy", spy)]))
    c.rpc(INITIALIZE)
    c.rpc({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    c.rpc(modern("tools/list"), headers=modern_headers("tools/list"))
    assert ran == []
    c.rpc(call("spy", {}))
    assert ran == ["ran"]


# -- cancellation and construction ------------------------------------------------------


def test_cancellation_reaches_the_handler() -> None:
    """When Klein cancels (client gone), the handler's pending Deferred is cancelled, not logged as a failure."""
    pending: list[Deferred[None]] = []
    cancelled: list[bool] = []

    async def slow(context: ToolContext, arguments: Empty) -> Boom:
        d: Deferred[None] = Deferred(lambda _: cancelled.append(True))
        pending.append(d)
        await d
        return Boom(ok=True)

    app = MCPApp(make_config(), FakeTokenVerifier(), tool_services(), [_tool("slow", slow)])
    outer = Deferred.fromCoroutine(app._call_tool(make_account(), app._tools["slow"], {}))
    assert pending
    outer.cancel()
    assert cancelled == [True]
    failures: list[Any] = []
    outer.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)


def test_construction_refuses_bad_tools() -> None:
    """Bad names, duplicates and non-object schemas fail at startup, not at tools/list time."""

    class Listy(RootModel[list[int]]):
        pass

    config, verifier = make_config(), FakeTokenVerifier()
    with pytest.raises(ValueError, match="name"):
        MCPApp(config, verifier, tool_services(), [_tool("bad name!", _explode)])
    with pytest.raises(ValueError, match="two tools"):
        MCPApp(config, verifier, tool_services(), [echo_tool(), echo_tool()])
    with pytest.raises(ValueError, match="object"):
        MCPApp(config, verifier, tool_services(), [_tool("listy", _explode, output=Listy)])


def test_origin_of() -> None:
    """Origins are normalised: case, default ports, IPv6."""
    assert origin_of("HTTPS://Mail.Example.test:443/x") == "https://mail.example.test"
    assert origin_of("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert origin_of("http://[::1]:80") == "http://[::1]"
    assert origin_of("null") is None
    assert origin_of("http://h:99999") is None


def test_describe_validation_error_names_fields_not_values() -> None:
    """The message lists each bad field."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        EchoInput.model_validate({"text": 3, "times": "many"})
    text = describe_validation_error("echo", info.value)
    assert text.startswith("Invalid arguments for tool 'echo': ")
    assert "text:" in text and "times:" in text and "many" not in text


def test_client_disconnect_cancels_the_running_tool(logged: list[dict[str, Any]]) -> None:
    """
    Through Klein: when the connection drops mid-call, the tool's pending
    work is cancelled and nothing is logged as a failure.
    """
    from io import BytesIO

    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    cancelled: list[bool] = []

    async def slow(context: ToolContext, arguments: Empty) -> Boom:
        await Deferred(lambda _: cancelled.append(True))
        return Boom(ok=True)

    app = MCPApp(make_config(), FakeTokenVerifier({TOKEN: make_account()}), tool_services(), [_tool("slow", slow)])
    request = Request(DummyChannel(), False)
    request.uri = request.path = b"/mcp"
    request.prepath, request.postpath = [], [b"mcp"]
    request.method = b"POST"
    request.clientproto = b"HTTP/1.1"
    request.content = BytesIO(json.dumps(call("slow", {})).encode())
    request.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {TOKEN}".encode()])
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    app.resource().render(request)
    assert cancelled == [] and not request.finished
    request.connectionLost(Failure(ConnectionLost()))
    assert cancelled == [True]
    assert not [e for e in logged if e.get("log_failure") is not None]


def test_admission_bounds_the_requests_worked_on_at_once() -> None:
    """
    At most max_working requests are worked on at once; the others wait,
    already parsed, and each gets its turn when one is answered.
    """
    from mailmcp.web._admission import fixed

    started: list[Deferred[None]] = []

    async def held(context: ToolContext, arguments: Empty) -> Boom:
        gate: Deferred[None] = Deferred()
        started.append(gate)
        await gate
        return Boom(ok=True)

    app = MCPApp(
        make_config(), FakeTokenVerifier({TOKEN: make_account()}), tool_services(), [_tool("held", held)],
        admission=fixed(3),
    )  # fmt: skip
    client = Client(app)
    responses = [
        client.stub.post(
            f"{BASE}/mcp",
            data=json.dumps(call("held", {}, request_id=n)).encode(),
            headers={
                b"authorization": [f"Bearer {TOKEN}".encode()],
                b"content-type": [b"application/json"],
            },
        )
        for n in range(5)
    ]
    assert len(started) == 3
    started[0].callback(None)
    assert len(started) == 4
    for gate in started[1:]:
        gate.callback(None)
    assert len(started) == 5
    started[4].callback(None)
    client.stub.flush()
    codes = [_result(r).code for r in responses]
    assert codes == [200] * 5


# -- bodies off the reactor, per-account admission, the large-body gate (issue 12) ----------


class RecordingPool:
    """A stand-in thread pool that runs the work at once and records what ran there."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kw: Any) -> None:
        self.ran.append(getattr(f, "__qualname__", repr(f)))
        try:
            result = f(*args, **kw)
        except Exception as e:
            from twisted.python.failure import Failure

            on_result(False, Failure(e))
        else:
            on_result(True, result)


class ImmediateReactor:
    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)


def test_large_bodies_are_decoded_and_validated_on_the_pool_small_ones_on_the_reactor() -> None:
    """
    A body over DECODE_ON_REACTOR_MAX is decoded, its request parsed and the
    tool's arguments validated on the decode pool; a small one never touches
    it.  A parse error found there is the usual -32700.
    """
    from mailmcp.mcp._gate import DECODE_ON_REACTOR_MAX

    pool = RecordingPool()
    app, _ = make_app(decode_pool=pool, reactor=ImmediateReactor())  # type: ignore[arg-type]
    client = Client(app)
    code, body = client.rpc(call("echo", {"text": "hi"}))
    assert code == 200 and body["result"]["structuredContent"]["text"] == "hi"
    assert pool.ran == []
    big = call("echo", {"text": "big"})
    big["params"]["_meta"] = {"pad": "x" * DECODE_ON_REACTOR_MAX}
    code, body = client.rpc(big)
    assert code == 200 and body["result"]["structuredContent"]["text"] == "big"
    assert len(pool.ran) == 3, pool.ran  # decode, request parse, argument validation
    code, body = client.rpc(b"{" * (DECODE_ON_REACTOR_MAX + 1))
    assert body["error"]["code"] == -32700
    assert len(pool.ran) == 4


def test_an_account_past_its_share_gets_503_with_retry_after() -> None:
    """
    With a share of 2, a third concurrent call of the same mailbox is 503
    with Retry-After and a JSON-RPC error (id null, code -32001) saying so;
    another mailbox is still served; once a call finishes, the first
    mailbox may call again.
    """
    from mailmcp.web._admission import Admission

    gates: list[Deferred[None]] = []

    async def held(context: ToolContext, arguments: Empty) -> Boom:
        gate: Deferred[None] = Deferred()
        gates.append(gate)
        await gate
        return Boom(ok=True)

    import attrs

    second = attrs.evolve(make_account(), owner="grant-2", imap_username="bob@example.test")
    verifier = FakeTokenVerifier({TOKEN: make_account(), "other-token": second})
    app = MCPApp(make_config(), verifier, tool_services(), [_tool("held", held)],
                 admission=Admission(initial=16, per_account=2))
    client = Client(app)

    def post(token: str) -> Deferred[Any]:
        return client.stub.post(f"{BASE}/mcp", data=json.dumps(call("held", {})).encode(), headers={
            b"authorization": [f"Bearer {token}".encode()], b"content-type": [b"application/json"]})

    first, second_call = post(TOKEN), post(TOKEN)
    refused = post(TOKEN)
    client.stub.flush()
    response = _result(refused)
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after") == [b"1"]
    body = json.loads(_result(response.content()))
    assert body["id"] is None and body["error"]["code"] == -32001
    assert "at most 2" in body["error"]["message"]
    other_call = post("other-token")
    assert len(gates) == 3
    gates[0].callback(None)
    client.stub.flush()
    assert _result(first).code == 200
    again = post(TOKEN)
    assert len(gates) == 4
    for gate in gates[1:]:
        gate.callback(None)
    client.stub.flush()
    assert [_result(d).code for d in (second_call, other_call, again)] == [200, 200, 200]


def test_the_gate_verifies_once_and_refuses_with_the_challenge() -> None:
    """
    `admit_large_body` admits a request with a good token (and the request
    is not verified a second time when served) and refuses a bad one with
    the 401 challenge /mcp would give.
    """
    from twisted.web.test.requesthelper import DummyRequest

    app, verifier = make_app()
    good = DummyRequest([b"mcp"])
    good.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {TOKEN}".encode()])
    assert _result(app.admit_large_body(good)) is None
    assert good in app._verified
    bad = DummyRequest([b"mcp"])
    bad.requestHeaders.setRawHeaders(b"authorization", [b"Bearer nope"])
    refusal = _result(app.admit_large_body(bad))
    assert refusal.status == 401 and json.loads(refusal.body)["error"] == "invalid_token"
    assert any(name.lower() == b"www-authenticate" and PRM.encode() in value for name, value in refusal.headers)
    none = DummyRequest([b"mcp"])
    assert _result(app.admit_large_body(none)).status == 401


def test_the_gate_bounds_large_bodies_in_progress_per_mailbox() -> None:
    """
    A mailbox may have per_account // 4 large bodies (admitted by the gate)
    arriving or being served at once; the next one is refused at header
    time with 503, Retry-After and a JSON-RPC error; once one finishes,
    another is admitted.  Another mailbox is not affected.
    """
    import attrs
    from twisted.web.test.requesthelper import DummyRequest

    from mailmcp.web._admission import Admission

    other = attrs.evolve(make_account(), owner="grant-2", imap_username="bob@example.test")
    verifier = FakeTokenVerifier({TOKEN: make_account(), "other-token": other})
    app = MCPApp(make_config(), verifier, tool_services(), [echo_tool()], admission=Admission(per_account=8))

    def large(token: str) -> DummyRequest:
        request = DummyRequest([b"mcp"])
        request.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {token}".encode()])
        return request

    admitted = [large(TOKEN) for _ in range(2)]
    assert [_result(app.admit_large_body(r)) for r in admitted] == [None, None]
    refusal = _result(app.admit_large_body(large(TOKEN)))
    assert refusal.status == 503 and (b"Retry-After", b"1") in refusal.headers
    error = json.loads(refusal.body)
    assert error["id"] is None and error["error"]["code"] == -32001
    assert "at most 2" in error["error"]["message"]
    assert _result(app.admit_large_body(large("other-token"))) is None
    admitted[0].finish()
    assert _result(app.admit_large_body(large(TOKEN))) is None
