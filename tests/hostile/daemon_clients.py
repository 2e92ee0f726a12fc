"""Seeding clients and tokens on a running daemon, refreshing tokens, and reading its error lines."""

from __future__ import annotations

import uuid
from typing import Any

from tests.harness import Daemon, Services
from tests.integration.mail_live import fresh_users


def error_lines(daemon: Daemon) -> list[str]:
    """Error-level log lines, each with the 12 lines that follow it (a traceback's body)."""
    lines = daemon.log_text().splitlines()
    return ["\n".join(lines[i:i + 12]) for i, line in enumerate(lines)
            if "#error]" in line or "#critical]" in line or "Traceback" in line]


def seed(services: Services, count: int, messages: int = 3) -> list[tuple[str, str]]:
    users = fresh_users(services, count)
    for email, _ in users:
        for i in range(messages):
            services.deliver(email, (f"From: Load <load@example.test>\r\nTo: {email}\r\nSubject: load {i}\r\n"
                                     f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n\r\nbody {i}\r\n").encode())
    return users


def refresh(base: str, client: dict[str, Any], refresh_token: str) -> Any:
    import httpx2

    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client["client_id"]}
    if client.get("client_secret"):
        form["client_secret"] = client["client_secret"]
    return httpx2.post(base + "/oauth/token", data=form, timeout=30)
