"""An in-memory MCP HTTP client on the Klein app, with its config, token and request helpers."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from mailmcp import testing
from mailmcp._config import Config
from mailmcp._toolkit import Tool, ToolContext, ToolError
from mailmcp.mcp._app import MCPApp
from mailmcp.testing import FakeTokenVerifier, echo_tool, make_account, tool_services

BASE = "https://mail.example.test"


TOKEN = "good-token"


PRM = f'resource_metadata="{BASE}/.well-known/oauth-protected-resource/mcp"'


MODERN = "2026-07-28"


CAPS = "io.modelcontextprotocol/clientCapabilities"


PV = "io.modelcontextprotocol/protocolVersion"


CINFO = "io.modelcontextprotocol/clientInfo"


class Empty(BaseModel):
    pass


class Boom(BaseModel):
    ok: bool


async def _explode(context: ToolContext, arguments: Empty) -> Boom:
    raise RuntimeError("password=hunter2 leaked into an exception")


async def _refuse(context: ToolContext, arguments: Empty) -> Boom:
    raise ToolError("The folder 'Nope' does not exist; call list_mailboxes to see the folders.")


async def _wrong_type(context: ToolContext, arguments: Empty) -> Boom:
    return Empty()  # type: ignore[return-value]


def _tool(name: str, handler: Any, output: type[BaseModel] = Boom) -> Tool:
    return Tool(
        name=name,
        title=name.title(),
        description=f"demo tool {name}",
        input_model=Empty,
        output_model=output,
        handler=handler,
        read_only=False,
        destructive=True,
        idempotent=False,
    )


def make_config(**overrides: Any) -> Config:
    values: dict[str, Any] = {
        "base_url": BASE,
        "allowed_origins": ("https://inspector.example.test",),
        "max_request_body": 1 << 20,
    }
    values.update(overrides)
    return testing.make_config(**values)


def make_app(tools: list[Tool] | None = None, **kwargs: Any) -> tuple[MCPApp, FakeTokenVerifier]:
    verifier = FakeTokenVerifier({TOKEN: make_account()})
    if tools is None:
        tools = [
            echo_tool(),
            _tool("explode", _explode),
            _tool("refuse", _refuse),
            _tool("wrong_type", _wrong_type),
        ]
    app = MCPApp(make_config(), verifier, tool_services(), tools, **kwargs)
    return app, verifier


class Client:
    """A StubTreq over one MCPApp, with JSON-RPC helpers."""

    def __init__(self, app: MCPApp) -> None:
        self.stub = StubTreq(app.resource())

    def request(
        self,
        method: str,
        body: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
        url: str = f"{BASE}/mcp",
        token: str | None = TOKEN,
        content_type: bytes | None = b"application/json",
    ) -> tuple[int, Any, bytes]:
        all_headers: dict[bytes, list[bytes]] = {b"accept": [b"application/json, text/event-stream"]}
        if content_type is not None:
            all_headers[b"content-type"] = [content_type]
        if token is not None:
            all_headers[b"authorization"] = [b"Bearer " + token.encode()]
        all_headers.update(headers or {})
        d = self.stub.request(method, url, data=body, headers=all_headers)
        self.stub.flush()
        response = _result(d)
        content = _result(response.content())
        return response.code, response.headers, content

    def rpc(
        self, message: Any, headers: dict[bytes, list[bytes]] | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        raw = message if isinstance(message, bytes) else json.dumps(message).encode()
        code, response_headers, content = self.request("POST", raw, headers, **kwargs)
        assert response_headers.getRawHeaders(b"mcp-session-id") is None
        return code, json.loads(content) if content else None


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "deferred did not fire"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def call(name: str, arguments: Any, request_id: int = 7) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def modern(method: str, params: dict[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    body_params = dict(params or {})
    body_params["_meta"] = {PV: MODERN, CAPS: {}, CINFO: {"name": "test", "version": "1"}}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": body_params}


def modern_headers(method: str, name: str | None = None, version: str = MODERN) -> dict[bytes, list[bytes]]:
    headers = {b"mcp-protocol-version": [version.encode()], b"mcp-method": [method.encode()]}
    if name is not None:
        headers[b"mcp-name"] = [name.encode()]
    return headers


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
