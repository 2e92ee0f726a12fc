"""
MCP-14 through a real ``twistd mailmcp``: ``tools/list`` over HTTP, after
the real OAuth login, carries honest annotations for every tool.  A host
relies on ``destructiveHint`` to ask the user before a call; sending mail
cannot be undone, so ``send_mail_message`` must say so.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.harness import Services, generate_client
from tests.hostile import mcp_http

pytestmark = pytest.mark.integration

HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")

#: tool -> (readOnly, destructive, idempotent, openWorld)
EXPECTED = {
    "list_mailboxes": (True, False, True, True),
    "list_mail_messages": (True, False, True, True),
    "search_mail_messages": (True, False, True, True),
    # Stores attachments behind links, so not read-only (S-15).
    "get_mail_message": (False, False, True, True),
    "get_mail_attachment_link": (False, False, True, True),
    "send_mail_message": (False, True, False, True),
    "create_draft_mail_message": (False, False, False, False),
    "delete_mail_message": (False, True, True, False),
    "move_mail_message": (False, True, True, False),
    "update_mail_message_flags": (False, False, True, False),
}


@pytest_twisted.ensureDeferred
async def test_tools_list_annotations_through_the_daemon(
    services: Services, daemon_factory: Any
) -> None:
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services)
    tokens = await threads.deferToThread(
        mcp_http.login, daemon.base_url, client, "alice@example.test", "alicepw"
    )
    status, body = await threads.deferToThread(
        mcp_http.rpc, daemon.base_url, tokens["access_token"], "tools/list", {}
    )
    assert status == 200 and body is not None, (status, body)
    tools = {tool["name"]: tool for tool in body["result"]["tools"]}
    for tool in tools.values():
        annotations = tool["annotations"]
        assert annotations["title"], tool["name"]
        assert all(type(annotations[hint]) is bool for hint in HINTS), tool
    got = {
        name: tuple(tools[name]["annotations"][hint] for hint in HINTS)
        for name in EXPECTED
        if name in tools
    }
    assert got == EXPECTED
