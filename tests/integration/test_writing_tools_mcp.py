"""
The writing tools through the ``/mcp`` endpoint: `MCPApp` with the real tool
set over real HTTP, in front of the real IMAP pool and Dovecot, sending to a
scripted SMTP server on loopback that counts connections and transactions.

What the assistant sees: ``tools/list`` annotates the five tools honestly;
results carry ``structuredContent`` and the same JSON as text; hostile
arguments come back as errors while neither the IMAP server nor the SMTP
server hears anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from mailmcp._imap import IMAPPool
from mailmcp._smtp import SMTPSender
from mailmcp._tls import MailTLS
from mailmcp.testing import tool_services
from tests.harness import Services
from tests.integration.mcp_loopback import call, rpc, serve_mcp
from tests.integration.test_smtp_live import ScriptedFactory, fresh_users
from tests.integration.test_writing_tools_live import account, append, folder, sample

pytestmark = pytest.mark.integration

WRITING = ("send_mail_message", "create_draft_mail_message", "delete_mail_message", "move_mail_message",
           "update_mail_message_flags")


@pytest.fixture
def endpoint(services: Services) -> Iterator[Any]:
    """An MCPApp on loopback for a fresh account whose SMTP server is a scripted one."""
    ((user, password),) = fresh_users(services, 1)
    smtp = ScriptedFactory("ok")
    smtp_port = pytest_twisted.blockon(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(smtp))
    acct = account(services, user, password, "plain", smtp_port=smtp_port.getHost().port)
    pool = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=10.0)
    imap_commands: list[Any] = []
    pool.command_observers.append(lambda *event: imap_commands.append(event))
    services_ = tool_services(reactor=reactor, imap=pool,
                             smtp=SMTPSender(reactor, MailTLS(services.ca_file), timeout=10.0))
    url, token, port = serve_mcp(acct, services_)
    yield SimpleNamespace(url=url, token=token, smtp=smtp, pool=pool, imap=imap_commands,
                          user=user, password=password)
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(smtp_port.stopListening())
    pytest_twisted.blockon(pool.stopService())


@pytest_twisted.ensureDeferred
async def test_tools_list_annotates_writing_tools_honestly(endpoint: Any) -> None:
    """tools/list: the five writing tools, not read-only, with honest hints and both schemas."""
    tools = {t["name"]: t for t in (await rpc(endpoint, "tools/list", {}))["result"]["tools"]}
    for name in WRITING:
        tool = tools[name]
        assert tool["title"] and tool["annotations"]["readOnlyHint"] is False
        assert tool["inputSchema"]["type"] == "object" and tool["outputSchema"]["type"] == "object"
    hints = {name: tools[name]["annotations"] for name in WRITING}
    assert hints["send_mail_message"]["openWorldHint"] is True
    assert hints["send_mail_message"]["idempotentHint"] is False
    assert hints["send_mail_message"]["destructiveHint"] is True
    assert hints["delete_mail_message"]["destructiveHint"] is True
    assert hints["move_mail_message"]["destructiveHint"] is True
    assert hints["update_mail_message_flags"]["idempotentHint"] is True
    assert {"to", "subject", "text_body", "cc", "bcc", "html_body", "attachment_urls", "folder"} <= set(
        tools["send_mail_message"]["inputSchema"]["properties"])


@pytest_twisted.ensureDeferred
async def test_send_and_move_through_mcp(services: Services, endpoint: Any) -> None:
    """A send over MCP makes one SMTP transaction and files its copy; a move returns the new UID."""
    result = await call(endpoint, "send_mail_message", {"to": ["bob@example.test"], "subject": "via mcp",
                                                        "text_body": "hi", "bcc": "dave@example.test"})
    sent = result["structuredContent"]
    assert sent["status"] == "sent" and sent["sent_folder"] == "Sent"
    assert len(endpoint.smtp.transactions) == 1
    assert b"dave@example.test" not in endpoint.smtp.transactions[0]
    copies = await folder(services, endpoint.user, endpoint.password, "Sent")
    assert set(copies) == {sent["sent_uid"]}
    uid = await append(services, endpoint.user, endpoint.password, "INBOX", sample("move me"))
    moved = await call(endpoint, "move_mail_message", {"folder": "INBOX", "uid": uid, "destination": "Archive"})
    archive = await folder(services, endpoint.user, endpoint.password, "Archive")
    assert moved["structuredContent"]["destination_uid"] in archive


@pytest_twisted.ensureDeferred
async def test_hostile_arguments_are_errors_without_imap_or_smtp(endpoint: Any) -> None:
    """
    docs/threat-model.rst TL-T1/T2/A1/U1/G1/F1 over MCP: every attempt is an error,
    and neither the IMAP server nor the SMTP server hears a thing.
    """
    attempts = [
        ("send_mail_message", {"to": "a@x.test\r\nRCPT TO:<x@evil.test>"}),
        ("send_mail_message", {"to": "bob@example.test", "subject": "hi\r\nBcc: evil@x.test"}),
        ("send_mail_message", {"to": "Bob\r\n <bob@example.test>"}),
        ("send_mail_message", {"to": "undisclosed-recipients:;"}),
        ("send_mail_message", {"to": "a@b@c"}),
        ("send_mail_message", {"to": [f"u{i}@example.test" for i in range(51)]}),
        ("send_mail_message", {"to": "bob@example.test", "attachment_urls": ["http://169.254.169.254/"]}),
        ("send_mail_message", {"to": "bob@example.test", "attachment_urls": ["file:///etc/passwd"]}),
        ("send_mail_message", {"to": "bob@example.test", "from": "ceo@example.test"}),
        ("send_mail_message", {}),
        ("create_draft_mail_message", {"subject": "x\x00"}),
        ("delete_mail_message", {"folder": "INBOX", "uid": "1:*"}),
        ("delete_mail_message", {"folder": "INBOX", "uid": True}),
        ("delete_mail_message", {"folder": "INBOX\r\nX DELETE Trash", "uid": 1}),
        ("move_mail_message", {"folder": "INBOX", "uid": 1, "destination": "INBOX"}),
        ("update_mail_message_flags", {"folder": "INBOX", "uid": 1, "add": ["\\Deleted"]}),
        ("update_mail_message_flags", {"folder": "INBOX", "uid": 1, "add": ["\\Seen)\r\nX EXPUNGE"]}),
        ("update_mail_message_flags", {"folder": "INBOX", "uid": 1, "add": ["a b"]}),
    ]
    for name, arguments in attempts:
        message = await rpc(endpoint, "tools/call", {"name": name, "arguments": arguments})
        result = message.get("result")
        assert (result is not None and result["isError"]) or "error" in message, (name, arguments, message)
    assert endpoint.imap == []
    assert endpoint.pool.open_connections == 0
    assert endpoint.smtp.connections == 0
