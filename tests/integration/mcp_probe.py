"""The HTTP status of one /mcp call with a bearer token, for tests that check a token still works."""

from __future__ import annotations

from tests.hostile import mcp_http


def mcp_status(daemon_url: str, token: str) -> int:
    return mcp_http.rpc(daemon_url, token, "tools/list")[0]
