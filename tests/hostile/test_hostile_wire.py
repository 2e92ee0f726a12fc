"""
P-01 through MCP: a value ending in a newline never reaches the IMAP server.

A regular expression written ``^…$`` and applied with ``.match`` accepts
``"value\\n"`` (``$`` matches before a final newline), and a newline is how
a value would end an IMAP command line early and start a command of its
own.  A real ``twistd mailmcp`` with a client provisioned for the scripted
IMAP server (`tests.hostile.scripted_imap`, which records every line it
receives) is asked, over real OAuth and MCP HTTP, to use flags, folders,
search keys and dates that end in ``"\\n"``: every call is an ``isError``
result, and the server sees nothing but the login check's session commands.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from tests.harness import Services
from tests.hostile import mcp_http
from tests.hostile.imap_accounts import scripted_imap_client
from tests.hostile.scripted_imap import SESSION_VERBS, ScriptedIMAPFactory, listen

pytestmark = pytest.mark.integration

CALLS: list[tuple[str, dict[str, Any]]] = [
    ("update_mail_message_flags", {"folder": "INBOX", "uid": 1, "add": ["$Junk\n"], "remove": []}),
    ("update_mail_message_flags", {"folder": "INBOX", "uid": 1, "add": ["\\Seen\n"], "remove": []}),
    ("move_mail_message", {"folder": "INBOX", "uid": 1, "destination": "Archive\n"}),
    ("list_mail_messages", {"folder": "INBOX\n"}),
    ("search_mail_messages", {"folder": "INBOX", "query": "keyword $Junk\n"}),
    ("search_mail_messages", {"folder": "INBOX", "query": "uid 1:5\n"}),
    ("search_mail_messages", {"folder": "INBOX", "since": "2025-01-01\n"}),
    ("create_draft_mail_message", {"subject": "x", "folder": "Drafts\n"}),
]


@pytest_twisted.ensureDeferred
async def test_trailing_newline_values_are_is_error_and_never_sent(
    services: Services, daemon_factory: Any
) -> None:
    factory: ScriptedIMAPFactory
    factory, port = await listen(reactor, "normal")
    try:
        daemon = daemon_factory(services)
        client = scripted_imap_client(daemon, services, port.getHost().port)
        tokens = await threads.deferToThread(
            mcp_http.login, daemon.base_url, client, "alice@example.test", "alicepw"
        )
        assert factory.saw_credentials  # the login check did reach the server
        for tool, arguments in CALLS:
            result = await threads.deferToThread(
                mcp_http.call, daemon.base_url, tokens["access_token"], tool, arguments
            )
            assert result.get("isError") is True, (tool, arguments, result)
            assert mcp_http.text_of(result), (tool, arguments)
        # Only the login check's commands ever arrived; no mailbox command,
        # and no line carries anything a value smuggled in.
        verbs = set(factory.verbs)
        assert verbs <= SESSION_VERBS, verbs
        assert not any(b"Junk" in line or b"Archive" in line for line in factory.lines)
        # Control: the same session's valid call does reach the server.
        good = await threads.deferToThread(
            mcp_http.call, daemon.base_url, tokens["access_token"], "list_mail_messages",
            {"folder": "INBOX"},
        )
        assert good.get("isError") is not True, good
        assert set(factory.verbs) - SESSION_VERBS, factory.verbs
        log = daemon.log_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        factory.close_all()
        await port.stopListening()
