"""
A plain-asyncio script driving the unmodified ``mcp`` 2.x client's
`OAuthClientProvider` through the daemon's whole OAuth flow, with a
pre-registered client (its storage hands out the client id and secret, so no
dynamic registration happens), then listing tools and calling one.  It plays
the browser itself: GET the login page, POST the credentials with the CSRF
cookie, read the 303.

Usage: python oauth_mcp_client.py CONFIG_JSON   (prints one JSON object)
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from oauth_client_login import log_in, provider_for


async def main(cfg: dict[str, Any]) -> dict[str, Any]:
    base, url = cfg["base"], cfg["base"] + "/mcp"
    out: dict[str, Any] = {"log": []}
    got: dict[str, Any] = {}

    async def redirect_handler(authorization_url: str) -> None:
        out["authorization_url_params"] = sorted(parse_qs(urlsplit(authorization_url).query))
        await log_in(cfg, authorization_url, "Flow Test", out, got)

    provider, storage = provider_for(cfg, "flow test", redirect_handler, got)
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            if cfg.get("call_tool"):
                result = await client.call_tool(cfg["call_tool"], {})
                out["call_is_error"] = result.is_error
                out["call_text"] = "".join(getattr(c, "text", "") for c in result.content)[:2000]
    out["registered_dynamically"] = storage.registered
    out["got_refresh_token"] = bool(storage.tokens and storage.tokens.refresh_token)

    # Rotation against the running daemon: the new pair works; the old
    # refresh token replayed at once (a lost response) gets the same
    # successor; once that successor has rotated too, presenting the old one
    # again revokes the family.
    assert storage.tokens is not None
    old_refresh = storage.tokens.refresh_token
    auth_fields = {"client_id": cfg["client_id"]}
    if cfg.get("client_secret"):
        auth_fields["client_secret"] = cfg["client_secret"]
    list_call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    mcp_headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
                   "mcp-protocol-version": "2025-11-25"}
    async with httpx2.AsyncClient(timeout=30) as raw:
        first = await raw.post(base + "/oauth/token", data={
            "grant_type": "refresh_token", "refresh_token": old_refresh, "resource": url, **auth_fields})
        out["refresh_status"] = first.status_code
        fresh = first.json()
        out["refresh_cache_control"] = first.headers.get("cache-control")
        r = await raw.post(url, json=list_call,
                           headers={**mcp_headers, "authorization": "Bearer " + fresh["access_token"]})
        out["fresh_access_status"] = r.status_code
        grace = await raw.post(base + "/oauth/token", data={
            "grant_type": "refresh_token", "refresh_token": old_refresh, **auth_fields})
        out["grace_status"] = grace.status_code
        out["grace_same_successor"] = grace.json().get("refresh_token") == fresh["refresh_token"]
        second = await raw.post(base + "/oauth/token", data={
            "grant_type": "refresh_token", "refresh_token": fresh["refresh_token"], **auth_fields})
        out["second_refresh_status"] = second.status_code
        again = await raw.post(base + "/oauth/token", data={
            "grant_type": "refresh_token", "refresh_token": old_refresh, **auth_fields})
        out["reuse_status"], out["reuse_error"] = again.status_code, again.json().get("error")
        r = await raw.post(url, json=list_call,
                           headers={**mcp_headers, "authorization": "Bearer " + second.json()["access_token"]})
        out["after_reuse_access_status"] = r.status_code
        out["after_reuse_www_authenticate"] = r.headers.get("www-authenticate")
    return out


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(main(config))))
