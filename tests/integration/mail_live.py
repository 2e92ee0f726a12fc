"""Live-mail helpers: fresh Dovecot users, INBOX reads over IMAPS, accounts and scripted SMTP servers on loopback."""

from __future__ import annotations

import imaplib
import os
import ssl
import time
import uuid
from email import policy
from email.message import EmailMessage

from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.protocols.basic import LineReceiver

from mailmcp._account import MailAccount
from mailmcp.oauth._clients import MailServer
from tests.harness import Services
from tests.helpers import live_account


def fresh_users(services: Services, count: int) -> list[tuple[str, str]]:
    """
    C{count} brand-new Dovecot users (empty mailboxes of their own); SMTP
    AUTH and LMTP delivery use the same passwd-file.

    Dovecot re-reads the passwd-file at most once per wall-clock second, so
    a user added in the second of the last re-read stays unknown until the
    next second: wait for it (once for all the users).
    """
    made = []
    with open(services.svc / "users", "a", encoding="utf-8") as f:
        for _ in range(count):
            email = f"w{uuid.uuid4().hex[:10]}@example.test"
            password = "pw-" + uuid.uuid4().hex[:8]
            f.write(f"{email}:{{PLAIN}}{password}::::::\n")
            made.append((email, password))
    time.sleep(1.05 - time.time() % 1)
    return made


def _inbox(services: Services, email: str, password: str) -> list[bytes]:
    context = ssl.create_default_context(cafile=str(services.ca_file))
    with imaplib.IMAP4_SSL("localhost", services.imaps_port, ssl_context=context) as client:
        client.login(email, password)
        client.select("INBOX", readonly=True)
        _, data = client.uid("SEARCH", "ALL")
        out = []
        for uid in data[0].split():
            _, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
            out.append(parts[0][1])
        return out


async def wait_for_mail(services: Services, email: str, password: str, count: int = 1,
                        timeout: float = 15.0) -> list[bytes]:
    """The messages in C{email}'s INBOX once there are at least C{count} (Postfix delivers async)."""
    deadline = time.monotonic() + timeout
    while True:
        messages = await threads.deferToThread(_inbox, services, email, password)
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        await deferLater(reactor, 0.2, lambda: None)


class ScriptedSMTP(LineReceiver):
    """
    A minimal ESMTP server (AUTH PLAIN, no TLS) that records each complete
    DATA transaction and then behaves as its factory's C{after_data} says:
    ``drop`` closes the connection without a reply, ``silent`` never replies.
    """

    factory: ScriptedFactory

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.in_data = False
        self.lines: list[bytes] = []
        self.sendLine(b"220 scripted.example ESMTP")

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.factory.transactions.append(b"\r\n".join(self.lines))
                if self.factory.after_data == "drop":
                    self.transport.abortConnection()  # type: ignore[attr-defined]
                elif self.factory.after_data == "ok":
                    self.sendLine(b"250 2.0.0 queued")
                return
            self.lines.append(line)
            return
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-scripted.example")
            self.sendLine(b"250 AUTH PLAIN LOGIN")
        elif verb == b"AUTH":
            self.sendLine(b"235 2.7.0 ok")
        elif verb in (b"MAIL", b"RCPT", b"RSET"):
            self.sendLine(b"250 ok")
        elif verb == b"DATA":
            self.in_data = True
            self.lines = []
            self.sendLine(b"354 go ahead")
        elif verb == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"502 unknown")


class ScriptedFactory(Factory):
    protocol = ScriptedSMTP

    def __init__(self, after_data: str) -> None:
        self.after_data = after_data
        self.connections = 0
        self.transactions: list[bytes] = []


def smtp_account_plain(port: int) -> MailAccount:
    return MailAccount(
        owner="grant-scripted", email="alice@example.test", full_name="Alice",
        imap=MailServer(host="127.0.0.1", port=1, security="plain"),
        imap_username="alice@example.test", imap_password="x",
        smtp=MailServer(host="127.0.0.1", port=port, security="plain"),
        smtp_username="alice@example.test", smtp_password="x",
    )


def account(services: Services, email_: str, password: str, smtp_security: str = "tls", *,
            smtp_password: str | None = None, smtp_port: int | None = None) -> MailAccount:
    return live_account(services, email_, password, full_name="Writer Wörld", smtp_security=smtp_security,
                        smtp_host="127.0.0.1" if smtp_security == "plain" else "localhost",
                        smtp_port=smtp_port, smtp_password=smtp_password)


def _client(services: Services, user: str, password: str) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(services.ca_file))
    client = imaplib.IMAP4_SSL("localhost", services.imaps_port, ssl_context=context)
    client.login(user, password)
    return client


def _folder(services: Services, user: str, password: str, folder: str) -> dict[int, tuple[bytes, bytes]]:
    """UID -> (FLAGS response, raw message) of every message in C{folder}."""
    with _client(services, user, password) as client:
        client.select(f'"{folder}"', readonly=True)
        _, data = client.uid("SEARCH", "ALL")
        out = {}
        for uid in data[0].split():
            _, parts = client.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
            out[int(uid)] = (parts[0][0], parts[0][1])
        return out


async def folder(services: Services, user: str, password: str, name: str) -> dict[int, tuple[bytes, bytes]]:
    return await threads.deferToThread(_folder, services, user, password, name)


def _append(services: Services, user: str, password: str, name: str, raw: bytes, flags: str = "") -> int:
    with _client(services, user, password) as client:
        typ, data = client.append(f'"{name}"', flags or None, None, raw)
        assert typ == "OK", data
        # [APPENDUID <uidvalidity> <uid>]
        return int(data[0].split(b"]")[0].split()[-1])


async def append(services: Services, user: str, password: str, name: str, raw: bytes, flags: str = "") -> int:
    return await threads.deferToThread(_append, services, user, password, name, raw, flags)


def sample(subject: str) -> bytes:
    return (f"From: other@example.test\r\nTo: x@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n\r\nbody {subject}\r\n").encode()


BLOB = os.urandom(30_000) + b"\r\n.\r\n\x00" + bytes(range(256))


def original(sender: str, to: list[str], cc: list[str] = (), *, attachment: bool = False,  # type: ignore[assignment]
             subject: str = "RE: AW: Quarterly plan") -> tuple[bytes, str]:
    """An original message as another mail client would have written it, and its Message-ID."""
    message_id = f"<{uuid.uuid4().hex}@anna.example.test>"
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = f"Anna Berg <{sender}>"
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Date"] = "Thu, 03 Dec 2026 10:05:00 +0100"
    message["Message-ID"] = message_id
    message["In-Reply-To"] = "<second@example.test>"
    message["References"] = "<root@example.test> <second@example.test>"
    message.set_content("Here is the plan.\nComments welcome.\n")
    if attachment:
        message.add_attachment(BLOB, maintype="application", subtype="octet-stream", filename="plan.bin")
    return message.as_bytes(), message_id


def _subjects(services: Services, email: str, password: str, folder: str = "INBOX") -> list[str]:
    context = ssl.create_default_context(cafile=str(services.ca_file))
    with imaplib.IMAP4_SSL("localhost", services.imaps_port, ssl_context=context) as client:
        client.login(email, password)
        typ, _ = client.select(f'"{folder}"', readonly=True)
        if typ != "OK":
            return []
        _, data = client.uid("SEARCH", "ALL")
        subjects = []
        for uid in data[0].split():
            _, parts = client.uid("FETCH", uid, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            subjects.append(parts[0][1].decode().split(":", 1)[1].strip())
        return subjects


def wait_for_subject(services: Services, email: str, password: str, subject: str,
                     timeout: float = 20.0) -> list[str]:
    """C{email}'s INBOX subjects once C{subject} is among them (Postfix delivers async)."""
    deadline = time.monotonic() + timeout
    while True:
        subjects = _subjects(services, email, password)
        if subject in subjects or time.monotonic() > deadline:
            return subjects
        time.sleep(0.2)
