"""
The JSON-RPC dispatcher of ``/mcp`` alone: plain dicts in, `Reply` values
out, no HTTP request, no token, no transport.  The same rules
tests/unit/test_mcp.py proves through the whole endpoint, here at the seam
a newcomer would change them.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp_types import methods as mcp_methods
from pydantic import BaseModel
from twisted.internet.defer import Deferred

from mailmcp._scopes import READ, SEND
from mailmcp._toolkit import Tool, ToolContext, ToolServices
from mailmcp.mcp._dispatch import ALL_VERSIONS, Dispatcher, Headers, plain_call
from mailmcp.mcp._results import Accepted, InsufficientScope, Outcome, Reply
from mailmcp.mcp._runner import ToolRunner, index_tools
from mailmcp.testing import echo_tool, make_account, tool_services

MODERN = "2026-07-28"
PV = "io.modelcontextprotocol/protocolVersion"
CAPS = "io.modelcontextprotocol/clientCapabilities"


class Empty(BaseModel):
    pass


class Sent(BaseModel):
    sent: bool


async def _send(context: ToolContext, arguments: Empty) -> Sent:
    return Sent(sent=True)


def _send_tool() -> Tool[Empty, Sent]:
    return Tool(
        name="send",
        title="Send",
        description="pretends to send",
        input_model=Empty,
        output_model=Sent,
        handler=_send,
        read_only=False,
        destructive=False,
        idempotent=False,
        scopes=frozenset({SEND}),
    )


class Audit:
    """Collects the audit entries the runner writes."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []

    def tool_call(
        self, account: Any, tool: str, arguments: Any, output: Any, outcome: str
    ) -> None:
        self.entries.append((tool, outcome))


def make_dispatcher(services: ToolServices | None = None) -> Dispatcher:
    tools = index_tools([echo_tool(), _send_tool()])
    return Dispatcher(tools, ToolRunner(services if services is not None else tool_services()))


def _now(coroutine: Coroutine[Any, Any, Outcome]) -> Outcome:
    """The outcome of a dispatch that awaits nothing pending (all tools here are immediate)."""
    results: list[Outcome] = []
    Deferred.fromCoroutine(coroutine).addCallback(results.append)
    assert len(results) == 1
    return results[0]


def answer(
    message: Any, headers: Headers | None = None, *, scopes: frozenset[str] | None = None
) -> tuple[int, dict[str, Any]]:
    account = make_account() if scopes is None else attrs.evolve(make_account(), scopes=scopes)
    outcome = _now(make_dispatcher().handle(account, message, headers or {}))
    assert isinstance(outcome, Reply), outcome
    return outcome.status, json.loads(outcome.body)


def request(method: str, params: dict[str, Any] | None = None, id: int = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def modern(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    params = dict(params or {})
    params["_meta"] = {PV: MODERN, CAPS: {}}
    return request(method, params)


def modern_headers(method: str, name: str | None = None) -> Headers:
    headers = {"mcp-protocol-version": [MODERN], "mcp-method": [method]}
    if name is not None:
        headers["mcp-name"] = [name]
    return headers


def test_initialize_negotiates_the_version() -> None:
    """initialize echoes a handshake version it speaks, else offers its newest."""
    params = {"protocolVersion": "2025-06-18", "capabilities": {},
              "clientInfo": {"name": "t", "version": "1"}}
    status, body = answer(request("initialize", params))
    assert status == 200 and body["result"]["protocolVersion"] == "2025-06-18"
    params["protocolVersion"] = "1999-01-01"
    status, body = answer(request("initialize", params))
    assert body["result"]["protocolVersion"] == "2025-11-25"
    assert body["result"]["serverInfo"]["name"] == "mailmcp"


def test_initialize_declaring_the_stateless_era_is_a_removed_method() -> None:
    """2026-07-28 removed initialize: -32601 with that era's HTTP status (404)."""
    status, body = answer(request("initialize", {"_meta": {PV: MODERN}}))
    assert status == 404 and body["error"]["code"] == -32601 and body["id"] == 1


def test_tools_list_shows_only_what_the_scopes_allow() -> None:
    """
    A full token sees both tools; a send-only token only send; a read-only
    token neither (echo is declared without scopes: it needs all five).
    """
    status, body = answer(request("tools/list"))
    assert status == 200
    assert [t["name"] for t in body["result"]["tools"]] == ["echo", "send"]
    assert "outputSchema" in body["result"]["tools"][0]
    _, body = answer(request("tools/list"), scopes=frozenset({SEND}))
    assert [t["name"] for t in body["result"]["tools"]] == ["send"]
    _, body = answer(request("tools/list"), scopes=frozenset({READ}))
    assert body["result"]["tools"] == []


def test_tools_call_gives_text_and_structured_content() -> None:
    """A successful call: the JSON text of the output, the same as structuredContent."""
    status, body = answer(request("tools/call", {"name": "echo", "arguments": {"text": "hé"}}))
    result = body["result"]
    assert status == 200 and result["isError"] is False
    assert result["structuredContent"] == {"text": "hé", "owner": "grant-1",
                                           "email": "alice@example.test"}
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]


def test_tools_call_errors_are_results_not_rpc_errors() -> None:
    """Bad arguments and a ToolError are isError results; an unknown tool is -32602."""
    status, body = answer(request("tools/call", {"name": "echo", "arguments": {"times": 2}}))
    assert status == 200 and body["result"]["isError"] is True
    assert "text" in body["result"]["content"][0]["text"]
    status, body = answer(request("tools/call", {"name": "echo", "arguments": {"text": "fail"}}))
    assert body["result"]["isError"] is True and "fail" in body["result"]["content"][0]["text"]
    status, body = answer(request("tools/call", {"name": "nope", "arguments": {}}))
    assert status == 200 and body["error"]["code"] == -32602


def test_a_call_the_scopes_do_not_cover_is_a_refusal_value_audited_as_error() -> None:
    """
    The dispatcher returns the InsufficientScope value (the transport turns
    it into the 403 challenge); the tool does not run and the audit says error.
    """
    services = tool_services(audit=Audit())
    dispatcher = make_dispatcher(services)
    account = attrs.evolve(make_account(), scopes=frozenset({READ}))
    outcome = _now(dispatcher.handle(account, request("tools/call", {"name": "send"})))
    assert outcome == InsufficientScope("send", frozenset({SEND}))
    assert services.audit.entries == [("send", "error")]
    ok = _now(dispatcher.handle(make_account(), request("tools/call", {"name": "send"})))
    assert isinstance(ok, Reply) and json.loads(ok.body)["result"]["structuredContent"] == {
        "sent": True
    }
    assert services.audit.entries[-1] == ("send", "ok")


def test_notifications_are_accepted_unless_the_version_header_is_unknown() -> None:
    """A notification (no id) is Accepted; with an unknown version header it is a 400."""
    dispatcher = make_dispatcher()
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert _now(dispatcher.handle(make_account(), note)) == Accepted()
    outcome = _now(dispatcher.handle(make_account(), note, {"mcp-protocol-version": ["1.0"]}))
    assert isinstance(outcome, Reply) and outcome.status == 400
    error = json.loads(outcome.body)["error"]
    assert error["code"] == -32022 and error["data"]["requested"] == "1.0"


def test_the_stateless_era_checks_its_routing_headers() -> None:
    """2026-07-28: the Mcp-Method and Mcp-Name headers must match the body; _meta is required."""
    call = modern("tools/call", {"name": "echo", "arguments": {"text": "x"}})
    status, body = answer(call, modern_headers("tools/call", "echo"))
    assert status == 200 and body["result"]["structuredContent"]["text"] == "x"
    assert body["result"]["resultType"] == "complete" and "_meta" in body["result"]
    status, body = answer(call, modern_headers("tools/list", "echo"))
    assert status == 400 and body["error"]["code"] == -32020
    assert "Mcp-Method" in body["error"]["message"]
    status, body = answer(call, modern_headers("tools/call", "other"))
    assert status == 400 and body["error"]["code"] == -32020
    assert "Mcp-Name" in body["error"]["message"]
    status, body = answer(request("tools/list", {"_meta": {PV: MODERN}}),
                          modern_headers("tools/list"))
    assert body["error"]["code"] == -32602 and "missing" in body["error"]["message"]


def test_a_repeated_routing_header_is_a_400() -> None:
    """Two MCP-Protocol-Version values are refused, whatever the method."""
    status, body = answer(request("ping"), {"mcp-protocol-version": ["2025-06-18", "2025-06-18"]})
    assert status == 400 and "more than once" in body["error"]["message"]


def test_the_handshake_era_refuses_an_unknown_version_header() -> None:
    """A handshake-era request names a version we do not speak: 400 listing what we do."""
    status, body = answer(request("ping"), {"mcp-protocol-version": ["2024-01-01"]})
    assert status == 400 and "2025-11-25" in body["error"]["data"]["supported"]
    status, body = answer(request("ping"))
    assert status == 200 and body["result"] == {}


def test_bad_envelopes_and_unknown_methods() -> None:
    """Not JSON-RPC 2.0: -32600 with id null; an undeclared capability's method: -32601."""
    status, body = answer({"jsonrpc": "1.0", "id": 1, "method": "ping"})
    assert body["error"]["code"] == -32600 and body["id"] is None
    status, body = answer(request("prompts/list"))
    assert status == 200 and body["error"]["code"] == -32601
    status, body = answer(modern("prompts/list"), modern_headers("prompts/list"))
    assert status == 404 and body["error"]["code"] == -32601


def test_handle_body_decodes_and_maps_a_parse_error() -> None:
    """From bytes: a well-formed body is dispatched; a broken one is -32700 with id null."""
    dispatcher = make_dispatcher()
    outcome = _now(dispatcher.handle_body(make_account(), lambda: b'{"jsonrpc":"2.0","id":7,'
                                          b'"method":"ping"}'))
    assert isinstance(outcome, Reply) and json.loads(outcome.body) == {
        "jsonrpc": "2.0", "id": 7, "result": {}}
    outcome = _now(dispatcher.handle_body(make_account(), lambda: b"{"))
    assert isinstance(outcome, Reply)
    body = json.loads(outcome.body)
    assert body["error"]["code"] == -32700 and body["id"] is None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_params = st.one_of(
    _json_values,
    st.fixed_dictionaries(
        {"name": st.one_of(st.text(max_size=8), _json_values)},
        optional={
            "arguments": st.one_of(st.none(), st.dictionaries(st.text(max_size=5), _json_values), _json_values),
            "_meta": _json_values,
            "extra": _json_values,
        },
    ),
)


@settings(max_examples=400)
@given(params=_params, version=st.sampled_from(ALL_VERSIONS))
def test_the_plain_call_shortcut_only_takes_what_the_wire_models_accept_alike(
    params: Any, version: str
) -> None:
    """
    A tools/call taken without the wire models' validation is one they would
    accept, with the same tool name and arguments; the stateless era (which
    requires _meta) never takes the shortcut.
    """
    plain = plain_call(version, params)
    if plain is None:
        return
    assert version != MODERN
    request = mcp_methods.parse_client_request("tools/call", version, params)
    assert (request.params.name, request.params.arguments) == plain


def test_a_plain_call_runs_the_tool_without_the_envelope_models(monkeypatch: Any) -> None:
    """The shortcut is taken for a bare {name, arguments} call and answers what the checked path does."""
    seen: list[str] = []
    real = mcp_methods.parse_client_request

    def counting(method: str, version: str, params: Any) -> Any:
        seen.append(method)
        return real(method, version, params)

    monkeypatch.setattr(mcp_methods, "parse_client_request", counting)
    headers: Headers = {"mcp-protocol-version": ["2025-06-18"]}
    _, plain = answer(request("tools/call", {"name": "echo", "arguments": {"text": "hi"}}), headers)
    assert seen == []
    params = {"name": "echo", "arguments": {"text": "hi"}, "_meta": {"progressToken": 1}}
    _, checked = answer(request("tools/call", params), headers)
    assert seen == ["tools/call"]
    assert plain == checked
    assert plain["result"]["structuredContent"]["text"] == "hi"
    _, unknown = answer(request("tools/call", {"name": "nope", "arguments": {}}), headers)
    assert unknown["error"]["code"] == -32602 and seen == ["tools/call"]
