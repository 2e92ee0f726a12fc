"""Sample RFC 5322 messages for the unit tests."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP


def plain(subject: str, body: str = "hello", sender: str = "Ann <ann@example.test>", **headers: str) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = "alice@example.test"
    message["Subject"] = subject
    message["Date"] = "Tue, 07 Jan 2025 10:00:00 +0000"
    message["Message-ID"] = f"<{abs(hash(subject))}@example.test>"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_bytes()
