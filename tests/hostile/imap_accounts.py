"""Accounts on the harness Dovecot or on a scripted IMAP server, and reading a message through the daemon."""

from __future__ import annotations

from typing import Any

from mailmcp._account import MailAccount
from mailmcp.mail._mailbox_api import IMAPSession
from mailmcp.oauth._clients import MailServer
from tests.harness import Services, generate_client


def scripted_account(port: int, security: str = "plain", host: str = "127.0.0.1",
                     user: str = "alice@example.test") -> MailAccount:
    return MailAccount(
        owner="grant-scripted-" + user, email=user, full_name="Scripted",
        imap=MailServer(host=host, port=port, security=security),  # type: ignore[arg-type]
        imap_username=user, imap_password="scripted-pw",
        smtp=MailServer(host="127.0.0.1", port=1, security="plain"),
        smtp_username=user, smtp_password="scripted-pw",
    )


def dovecot_account(services: Services, user: str = "alice@example.test", password: str = "alicepw") -> MailAccount:
    return MailAccount(
        owner="grant-" + user, email=user, full_name="Alice",
        imap=MailServer(host="localhost", port=services.imaps_port, security="tls"),
        imap_username=user, imap_password=password,
        smtp=MailServer(host="localhost", port=services.smtps_port, security="tls"),
        smtp_username=user, smtp_password=password,
    )


async def read_message(session: IMAPSession) -> bytes:
    """EXAMINE INBOX and fetch message 1 whole: what get_mail_message does, minus the MIME work."""
    await session.examine("INBOX")
    [fetched] = await session.fetch("1", "(UID BODY.PEEK[])")
    return fetched.sections[""]


def scripted_imap_client(daemon: Any, services: Services, port: int, security: str = "plain",
                         host: str = "127.0.0.1") -> Any:
    """A client of C{daemon} provisioned for the scripted IMAP server on C{port} (SMTP: the real one)."""
    return generate_client(
        daemon.state_dir, None, "--imap-host", host, "--imap-port", str(port),
        "--imap-security", security, "--smtp-host", "localhost", "--smtp-port", str(services.smtps_port),
        "--smtp-security", "tls")
