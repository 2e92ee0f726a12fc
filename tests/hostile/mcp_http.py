"""
Blocking helpers for the hostile tests that talk to a real daemon: the real
OAuth login over HTTP (the benchmark harness's client: authorize form, CSRF
cookie, 303, PKCE token exchange) and one ``tools/call`` over HTTP.

They block, so tests running on the Twisted reactor call them through
``threads.deferToThread`` while the reactor keeps serving scripted servers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import httpx2

from benchmarks._clients import oauth_login
from benchmarks._http import Connection

PROTOCOL_VERSION = "2025-11-25"
_ids = itertools.count(1)


def login(base_url: str, client: dict[str, Any], email: str, password: str,
          source: str | None = None) -> dict[str, Any]:
    """The token response of a real authorization-code login (from loopback address C{source})."""

    async def run() -> dict[str, Any]:
        conn = Connection(base_url, timeout=60, local_address=source)
        try:
            return await oauth_login(base_url, client, email, password, conn)
        finally:
            conn.close()

    return asyncio.run(run())


def rpc(base_url: str, token: str, method: str, params: dict[str, Any] | None = None,
        timeout: float = 60.0) -> tuple[int, dict[str, Any] | None]:
    """POST one JSON-RPC request to /mcp; returns (HTTP status, decoded body or None)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": next(_ids), "method": method}
    if params is not None:
        message["params"] = params
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
               "mcp-protocol-version": PROTOCOL_VERSION, "authorization": "Bearer " + token}
    response = httpx2.post(base_url + "/mcp", content=json.dumps(message).encode(), headers=headers,
                           timeout=timeout)
    body = json.loads(response.content) if response.content else None
    return response.status_code, body


def call(base_url: str, token: str, tool: str, arguments: dict[str, Any] | None = None,
         timeout: float = 60.0) -> dict[str, Any]:
    """``tools/call`` and its result (asserting HTTP 200 and a JSON-RPC result)."""
    status, body = rpc(base_url, token, "tools/call", {"name": tool, "arguments": arguments or {}}, timeout)
    assert status == 200, (status, body)
    assert body is not None and "result" in body, body
    result: dict[str, Any] = body["result"]
    return result


def text_of(result: dict[str, Any]) -> str:
    return " ".join(c.get("text", "") for c in result.get("content", []))
