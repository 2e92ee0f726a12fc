"""Folder counts over IMAP and MCP sign-in and send calls, run in threads for the send-limit tests."""

from __future__ import annotations

import imaplib
import ssl
from typing import Any

from twisted.internet import threads

from tests.harness import Services
from tests.hostile import mcp_http


def _count(services: Services, user: str, password: str, folder: str) -> int:
    """Messages in C{folder} (STATUS), over the stdlib IMAP client."""
    context = ssl.create_default_context(cafile=str(services.ca_file))
    with imaplib.IMAP4_SSL("localhost", services.imaps_port, ssl_context=context) as client:
        client.login(user, password)
        typ, data = client.status(f'"{folder}"', "(MESSAGES)")
        assert typ == "OK", data
        raw = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
        return int(raw.rsplit("MESSAGES", 1)[1].strip(" )"))


async def count(services: Services, user: str, password: str, folder: str) -> int:
    return await threads.deferToThread(_count, services, user, password, folder)


async def login(daemon: Any, client: dict[str, Any], user: str, password: str) -> str:
    tokens = await threads.deferToThread(mcp_http.login, daemon.base_url, client, user, password)
    token: str = tokens["access_token"]
    return token


async def send(daemon: Any, token: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await threads.deferToThread(
        mcp_http.call, daemon.base_url, token, "send_mail_message", arguments
    )
    return result
