"""The acceptance deployment: fresh users, a mailbox reader, login checks and the clean-log assertion."""

from __future__ import annotations

import email
import email.policy
import hashlib
import imaplib
import json
import queue
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.harness import ROOT, Daemon, Services

CLIENT = Path(__file__).with_name("acceptance_client.py")


REDIRECT_URI = "http://127.0.0.1:9/callback"


ALL_TOOLS = {
    "list_mailboxes", "list_mail_messages", "get_mail_message", "search_mail_messages",
    "send_mail_message", "create_draft_mail_message", "delete_mail_message", "move_mail_message",
    "update_mail_message_flags", "get_mail_attachment_link", "get_mail_thread",
    "get_mailbox_changes", "create_mailbox", "rename_mailbox", "delete_mailbox",
    "reply_mail_message", "forward_mail_message",
}


#: A small binary attachment: every byte value, CR/LF and NUL included.
BLOB = bytes(range(256)) * 4 + b"\r\n\x00\r\x00\n" + hashlib.sha256(b"acceptance").digest()


def fresh_users(services: Services, count: int) -> list[tuple[str, str]]:
    """New Dovecot users; waits out Dovecot's once-a-second re-read of its passwd file."""
    users = []
    for _ in range(count):
        name = f"acc-{uuid.uuid4().hex[:10]}@example.test"
        password = "pw-" + uuid.uuid4().hex[:12]
        services.add_user(name, password)
        users.append((name, password))
    time.sleep(1.2)
    return users


class Mailbox:
    """Another mail client: stdlib IMAP over TLS, verifying the test CA."""

    def __init__(self, services: Services, user: str, password: str) -> None:
        context = ssl.create_default_context(cafile=str(services.ca_file))
        self.imap = imaplib.IMAP4_SSL("localhost", services.imaps_port, ssl_context=context)
        self.imap.login(user, password)

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.imap.logout()

    def examine(self, folder: str) -> int:
        """Open C{folder} read-only; its UIDVALIDITY."""
        status, _ = self.imap.select(folder, readonly=True)
        assert status == "OK", folder
        return int(self.imap.response("UIDVALIDITY")[1][0])

    def uids(self, folder: str, *criteria: str) -> list[int]:
        self.examine(folder)
        _, data = self.imap.uid("SEARCH", *(criteria or ("ALL",)))
        return sorted(int(u) for u in data[0].split())

    def flags(self, folder: str, uid: int) -> set[str]:
        self.examine(folder)
        _, data = self.imap.uid("FETCH", str(uid), "(FLAGS)")
        assert data and data[0], f"no UID {uid} in {folder}"
        return {f.decode() for f in imaplib.ParseFlags(data[0])}  # type: ignore[arg-type]

    def fetch(self, folder: str, uid: int) -> email.message.EmailMessage:
        self.examine(folder)
        _, data = self.imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
        assert data and isinstance(data[0], tuple), f"no UID {uid} in {folder}"
        parsed: email.message.EmailMessage = email.message_from_bytes(data[0][1], policy=email.policy.default)
        return parsed

    def wait_for(self, folder: str, *criteria: str, timeout: float = 20.0) -> list[int]:
        """UIDs matching C{criteria} once there is at least one (Postfix delivers asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.uids(folder, *criteria)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


class Assistant:
    """The real mcp client in its own process, logged in, calling tools on request."""

    def __init__(self, config: dict[str, Any], stderr_path: Path) -> None:
        self._stderr_path = stderr_path
        self._stderr = open(stderr_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, str(CLIENT), json.dumps(config)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1, cwd=str(ROOT),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = self._read()
        assert self.ready.get("ready"), self.ready

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _tail(self) -> str:
        self._stderr.flush()
        return self._stderr_path.read_text(errors="replace")[-4000:]

    def _read(self, timeout: float = 90.0) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the mcp client said nothing for {timeout}s:\n{self._tail()}") from None
        if line is None:
            self.process.wait(10)
            raise AssertionError(f"the mcp client exited ({self.process.returncode}):\n{self._tail()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def command(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def tokens(self) -> dict[str, str]:
        return self.command({"tokens": True})

    def raw_call(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        result = self.command({"tool": tool, "args": args})
        assert "exception" not in result, result
        return result

    def call(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """A successful call's structuredContent, checked to be the same JSON as its text."""
        result = self.raw_call(tool, args)
        assert result["is_error"] is False, (tool, result["texts"])
        assert result["content_types"] == ["text"], result
        structured: dict[str, Any] = result["structured"]
        assert isinstance(structured, dict), result
        assert json.loads(result["texts"][0]) == structured
        self.last_requests = result["requests"]
        return structured

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"quit": True}) + "\n")
                self.process.stdin.flush()
                self.process.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._stderr.close()


def check_login(assistant: Assistant, mode: str) -> None:
    """The OAuth login went through the form with the pre-registered client, in the era asked for."""
    ready = assistant.ready
    assert ready["form_status"] == 200
    assert ready["login_status"] == 303
    assert ready["redirect_prefix"] == REDIRECT_URI
    assert ready["registered_dynamically"] is False
    assert ready["got_refresh_token"] is True
    assert set(ready["tools"]) >= ALL_TOOLS
    assert all(ready["tools"][name]["has_output_schema"] for name in ALL_TOOLS)
    methods = [r["rpc"] for r in ready["login_requests"] if r["rpc"]]
    assert not any(r["session"] for r in ready["login_requests"])
    if mode == "legacy":
        assert ready["era"] == "legacy" and ready["version"] == "2025-11-25"
        assert "initialize" in methods and "server/discover" not in methods
    elif mode == "auto":
        # The probe finds the stateless era, so the client never initializes.
        assert ready["era"] == "modern" and "2026-07-28" in ready["version"]
        assert "server/discover" in methods and "initialize" not in methods
    else:
        # Pinned to 2026-07-28: no handshake at all, every request carries the version.
        assert ready["era"] == "modern" and "2026-07-28" in ready["version"]
        assert "initialize" not in methods and "tools/list" in methods
        assert {r["version"] for r in ready["login_requests"] if r["rpc"]} == {"2026-07-28"}


def assert_clean_log(daemon: Daemon, since: int = 0) -> None:
    """Nothing went wrong inside the daemon that its log (from offset C{since}) would show as a crash."""
    text = daemon.log_text()[since:]
    assert "Traceback" not in text and "Unhandled Error" not in text, text[-6000:]
