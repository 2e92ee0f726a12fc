"""
An interactive plain-asyncio driver of the unmodified ``mcp`` 2.x client for
the acceptance tests (`tests.integration.test_acceptance`).

It logs in through the daemon's whole OAuth flow with `OAuthClientProvider`
and a pre-registered client (confidential ``client_secret_post`` or public
``none``), playing the browser itself (GET the login page, POST the
credentials with the CSRF cookie, read the 303), connects in the protocol
era asked for (``mode``: ``legacy``, ``auto`` or ``2026-07-28``), then
serves tool calls one JSON line at a time, so the test can check the real
mailbox between calls.

Usage: python acceptance_client.py CONFIG_JSON

Protocol on stdout, one JSON object per line:
- first ``{"ready": true, "era", "version", "tools", "login_status", ...}``
  (or ``{"ready": false, "error": ...}``);
- then, for each line ``{"tool": NAME, "args": {...}}`` read from stdin,
  ``{"is_error", "structured", "texts", "content_types", "requests"}``
  where ``requests`` are the HTTP requests that call made (JSON-RPC method
  and ``MCP-Protocol-Version`` header);
- ``{"revoke": "refresh_token"}`` (or ``"access_token"``) revokes that
  token at ``/oauth/revoke`` and answers ``{"status": HTTP status}``;
- ``{"tokens": true}`` answers the current access and refresh tokens;
- ``{"quit": true}`` ends the session.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from oauth_client_login import log_in, provider_for


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(cfg: dict[str, Any]) -> None:
    base, url = cfg["base"], cfg["base"] + "/mcp"
    login: dict[str, Any] = {}
    got: dict[str, Any] = {}
    requests: list[dict[str, Any]] = []

    async def redirect_handler(authorization_url: str) -> None:
        login["logins"] = login.get("logins", 0) + 1
        await log_in(cfg, authorization_url, cfg.get("full_name", "Acceptance Test"), login, got)

    async def record(request: Any) -> None:
        method = None
        try:
            body = request.content
            if body:
                method = json.loads(body).get("method")
        except Exception:  # a streamed or non-JSON body: nothing to record
            pass
        requests.append({
            "url": str(request.url).split("?")[0],
            "http": request.method,
            "rpc": method,
            "version": request.headers.get("mcp-protocol-version"),
            "session": request.headers.get("mcp-session-id"),
            "bearer": request.headers.get("authorization", "").startswith("Bearer "),
        })

    provider, storage = provider_for(cfg, "acceptance test", redirect_handler, got)
    async with httpx2.AsyncClient(auth=provider, timeout=60,
                                  event_hooks={"request": [record]}) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=cfg["mode"]) as client:
            session = client.session
            if session.initialize_result is not None:
                era, version = "legacy", session.initialize_result.protocol_version
            else:
                era, version = "modern", list(session.discover_result.supported_versions)
            tools = await client.list_tools()
            emit({
                "ready": True, "era": era, "version": version,
                "tools": {t.name: {"title": t.title, "has_output_schema": t.output_schema is not None,
                                   "read_only": t.annotations.read_only_hint if t.annotations else None}
                          for t in tools.tools},
                "registered_dynamically": storage.registered,
                "got_refresh_token": bool(storage.tokens and storage.tokens.refresh_token),
                "login_requests": list(requests),
                **login,
            })
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    return
                command = json.loads(line)
                if command.get("quit"):
                    return
                if command.get("tokens"):
                    assert storage.tokens is not None
                    emit({"access_token": storage.tokens.access_token,
                          "refresh_token": storage.tokens.refresh_token})
                    continue
                if command.get("revoke"):
                    # RFC 7009 revocation of the current token of that kind,
                    # outside the mcp client (as a user signing out would).
                    assert storage.tokens is not None
                    token = getattr(storage.tokens, command["revoke"])
                    form = {"token": token, "client_id": cfg["client_id"]}
                    if cfg.get("client_secret"):
                        form["client_secret"] = cfg["client_secret"]
                    async with httpx2.AsyncClient(timeout=30) as raw:
                        answer = await raw.post(base + "/oauth/revoke", data=form)
                    emit({"status": answer.status_code})
                    continue
                del requests[:]
                try:
                    result = await client.call_tool(command["tool"], command.get("args") or {})
                except Exception as e:
                    emit({"exception": f"{type(e).__name__}: {e}", "requests": list(requests)})
                    continue
                emit({
                    "is_error": result.is_error,
                    "structured": result.structured_content,
                    "texts": [getattr(c, "text", None) for c in result.content],
                    "content_types": [c.type for c in result.content],
                    "requests": list(requests),
                    "logins": login.get("logins", 0),
                })


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    try:
        asyncio.run(main(config))
    except BaseException as e:  # tell the test, then fail
        emit({"ready": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
        raise
