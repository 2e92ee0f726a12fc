"""A real IMAP pool on the harness Dovecot with a log of every command sent, and sample messages."""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from twisted.internet import reactor

from mailmcp._account import MailAccount
from mailmcp._tls import MailTLS
from mailmcp._toolkit import ToolContext
from mailmcp.mail._mailbox_api import IMAPSession
from mailmcp.mail.imap import IMAPPool
from mailmcp.testing import tool_services
from tests.harness import Services
from tests.helpers import fresh_user, live_account


def account_for(services: Services, email: str, password: str) -> MailAccount:
    return live_account(services, email, password, full_name="Reader")


class Wire:
    """A pool, a fresh account on it, and the log of every command sent."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.pool = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=30.0)
        self.events: list[tuple[str, str, str]] = []
        self.pool.command_observers.append(lambda *event: self.events.append(event))
        self.email, password = fresh_user(services)
        #: For a second, independent IMAP client (another device of the user).
        self.password = password
        self.account = account_for(services, self.email, password)
        self.ctx = ToolContext(
            account=self.account,
            services=tool_services(reactor=reactor, imap=self.pool),
        )

    @property
    def commands(self) -> list[str]:
        return [f"{command} {arguments}" for _, command, arguments in self.events]

    def deliver(self, message: bytes) -> None:
        self.services.deliver(self.email, message)

    async def session(self, operation: Any) -> Any:
        return await self.pool.run(self.account, operation, read_only=False)


def plain(subject: str, body: str = "Hello.\n", sender: str = "Ann <ann@example.test>") -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = "reader@example.test"
    message["Subject"] = subject
    message["Date"] = "Tue, 01 Jul 2025 13:30:00 +0000"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@example.test>"
    message.set_content(body)
    return message.as_bytes()


async def expunge(wire: Wire, uids: list[int]) -> None:
    async def operation(session: IMAPSession) -> None:
        await session.select("INBOX")
        await session.uid_store(uids, "+FLAGS", ["\\Deleted"])
        await session.uid_expunge(uids)

    await wire.session(operation)
