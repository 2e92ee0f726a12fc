"""
The benchmark's MCP clients: the real OAuth login over HTTP (authorize form,
CSRF token and cookie, 303 with the code, token exchange with PKCE), and
``tools/call`` over HTTP with a Bearer token, for mailmcp and for the peer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import itertools
import json
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from benchmarks._http import Connection, HTTPError, sse_or_json

PROTOCOL_VERSION = "2025-11-25"
REDIRECT_URI = "http://127.0.0.1:9/callback"

_INPUT = re.compile(r"<input\b[^>]*>", re.I | re.S)
_ATTR = re.compile(r'([a-zA-Z_:-]+)\s*=\s*("([^"]*)"|\'([^\']*)\'|([^\s>]+))')


class LoginFailed(Exception):
    pass


def _hidden_fields(page: str) -> dict[str, str]:
    fields = {}
    for tag in _INPUT.findall(page):
        attrs = {m.group(1).lower(): html.unescape(m.group(3) or m.group(4) or m.group(5) or "")
                 for m in _ATTR.finditer(tag)}
        kind = attrs.get("type", "").lower()
        if kind == "hidden" and "name" in attrs:
            fields[attrs["name"]] = attrs.get("value", "")
        elif kind == "checkbox" and attrs.get("name") == "scope" and "checked" in attrs:
            # The ticked scope checkboxes, as one space-separated value.
            fields["scope"] = (fields.get("scope", "") + " " + attrs.get("value", "")).strip()
    return fields


def _cookie_header(set_cookie: str) -> str:
    return "; ".join(line.split(";", 1)[0].strip() for line in set_cookie.split("\n") if line.strip())


async def oauth_login(base_url: str, client: dict[str, Any], email: str, password: str,
                      conn: Connection | None = None, scope: str | None = None) -> dict[str, Any]:
    """
    Log C{email} in through the real authorization-code flow with PKCE and
    return the token response (``access_token``, ``refresh_token``, ...).
    C{scope}, if given, is what the user leaves ticked on the login page
    (space-separated) instead of everything it offers.
    """
    conn = conn or Connection(base_url)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(12)
    query = urlencode({
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": state,
        "resource": base_url + "/mcp",
    })
    status, headers, body = await conn.request("GET", "/oauth/authorize?" + query)
    if status != 200:
        raise LoginFailed(f"GET /oauth/authorize: {status} {body[:200]!r}")
    form = _hidden_fields(body.decode("utf-8", "replace"))
    form.update({
        "email": email,
        "full_name": "Bench " + email.split("@")[0],
        "imap_username": email,
        "imap_password": password,
        "use_same_credentials": "1",
        "smtp_username": "",
        "smtp_password": "",
    })
    if scope is not None:
        form["scope"] = scope
    post_headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": base_url}
    if "set-cookie" in headers:
        post_headers["Cookie"] = _cookie_header(headers["set-cookie"])
    status, headers, body = await conn.request("POST", "/oauth/authorize", post_headers,
                                               urlencode(form).encode())
    if status not in (302, 303):
        raise LoginFailed(f"POST /oauth/authorize: {status} {body[:300]!r}")
    params = parse_qs(urlsplit(headers.get("location", "")).query)
    if params.get("state") != [state] or "code" not in params:
        raise LoginFailed(f"bad redirect {headers.get('location', '')[:200]!r}")
    token_form = {
        "grant_type": "authorization_code",
        "code": params["code"][0],
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
        "client_id": client["client_id"],
        "resource": base_url + "/mcp",
    }
    if client.get("client_secret"):
        token_form["client_secret"] = client["client_secret"]
    status, headers, body = await conn.request(
        "POST", "/oauth/token", {"Content-Type": "application/x-www-form-urlencoded"}, urlencode(token_form).encode()
    )
    if status != 200:
        raise LoginFailed(f"POST /oauth/token: {status} {body[:300]!r}")
    document: dict[str, Any] = json.loads(body)
    return document


async def login_many(base_url: str, client: dict[str, Any], accounts: Sequence[tuple[str, str]],
                     concurrency: int = 16) -> tuple[dict[str, str], dict[str, Any]]:
    """Log every account in with at most C{concurrency} logins in flight.  Returns tokens and stats."""
    tokens: dict[str, str] = {}
    errors: list[str] = []
    queue = iter(enumerate(accounts))
    latencies: list[float] = []

    async def worker() -> None:
        for index, (email, password) in queue:
            # Each account logs in from its own loopback address (127.1.x.y),
            # as real users come from their own addresses: the login form's
            # per-address throttle is then exercised as in production rather
            # than tripped by the benchmark itself.
            conn = Connection(base_url, local_address=source_address(index))
            t0 = time.perf_counter()
            try:
                tokens[email] = (await oauth_login(base_url, client, email, password, conn))["access_token"]
                latencies.append(time.perf_counter() - t0)
            except (TimeoutError, LoginFailed, HTTPError, OSError, KeyError) as e:
                errors.append(f"{email}: {e}")
            finally:
                conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(accounts)) or 1)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    stats = {
        "accounts": len(accounts),
        "succeeded": len(tokens),
        "seconds": round(elapsed, 2),
        "logins_per_s": round(len(tokens) / elapsed, 1) if elapsed else None,
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 1) if latencies else None,
        "errors": errors[:5],
    }
    return tokens, stats


def source_address(index: int) -> str:
    """A distinct loopback address per account (all of 127.0.0.0/8 is loopback on Linux)."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


class ToolCallFailed(Exception):
    pass


class McpClient:
    """``tools/call`` over one keep-alive connection; stateless (mailmcp) or with a session (peer)."""

    _ids = itertools.count(1)

    def __init__(self, base_url: str, token: str | None = None, path: str = "/mcp",
                 timeout: float = 60.0) -> None:
        self.conn = Connection(base_url, timeout=timeout)
        self.path = path
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": PROTOCOL_VERSION,
        }
        if token:
            self.headers["Authorization"] = "Bearer " + token

    async def rpc(self, method: str, params: dict[str, Any] | None = None, notify: bool = False) -> Any:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if not notify:
            message["id"] = next(self._ids)
        status, headers, body = await self.conn.request("POST", self.path, self.headers, json.dumps(message).encode())
        if "mcp-session-id" in headers:
            self.headers["Mcp-Session-Id"] = headers["mcp-session-id"]
        if notify:
            return None
        if status != 200:
            raise ToolCallFailed(f"HTTP {status}: {body[:200]!r}")
        reply = sse_or_json(headers, body)
        if "error" in reply:
            raise ToolCallFailed(f"JSON-RPC error {reply['error']}")
        return reply["result"]

    async def initialize(self) -> None:
        """The handshake (the peer keeps a session; mailmcp is stateless and does not need it)."""
        await self.rpc("initialize", {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mailmcp-bench", "version": "1"},
        })
        await self.rpc("notifications/initialized", notify=True)

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.rpc("tools/call", {"name": tool, "arguments": arguments})
        if result.get("isError"):
            text = " ".join(c.get("text", "") for c in result.get("content", []))
            raise ToolCallFailed(f"tool error: {text[:300]}")
        return result

    def close(self) -> None:
        self.conn.close()


def count_messages(result: dict[str, Any]) -> int | None:
    """How many messages a listing result holds (structured content, whatever its key)."""
    structured = result.get("structuredContent")
    if isinstance(structured, dict):
        for key in ("messages", "emails", "items"):
            if isinstance(structured.get(key), list):
                return len(structured[key])
    return None
