"""
The daemon's log through twistd: ``--log-level`` applies to every logger
(mailmcp modules, Twisted's own, the access log), ``--log-format json``
writes one JSON object per line, and a login check adds no noise (no
unsolicited-BYE complaint, no "Starting/Stopping factory" pair).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness import Daemon, Services, generate_client
from tests.hostile import mcp_http

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice@example.test", "alicepw"


def login_and_call(services: Services, daemon: Daemon) -> None:
    """A real OAuth login (IMAP and SMTP login checks) and a tool call that logs in to IMAP."""
    client = generate_client(daemon.state_dir, services)
    tokens = mcp_http.login(daemon.base_url, client, USER, PASSWORD)
    result = mcp_http.call(daemon.base_url, tokens["access_token"], "list_mailboxes")
    assert result.get("isError") is not True, result


def json_records(daemon: Daemon) -> list[dict[str, Any]]:
    lines = daemon.log_text().splitlines()
    assert lines, "the daemon logged nothing"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert isinstance(record, dict) and isinstance(record["level"], str), record
        assert isinstance(record["text"], str) and record["namespace"], record
    return records


def test_error_level_writes_no_info_line_from_any_module(services: Services, daemon_factory: Any) -> None:
    """
    At ``--log-level error`` a login plus a tool call writes nothing below
    error: not twistd's banner, not the access log, not mailmcp's modules.
    """
    daemon = daemon_factory(services, "--log-level", "error", "--log-format", "json")
    login_and_call(services, daemon)
    assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.log_text().splitlines()]
    assert [r for r in records if r["level"] not in ("error", "critical")] == []


def test_error_level_in_text_format_drops_every_info_source(services: Services, daemon_factory: Any) -> None:
    """The same in twistd's text format: none of the usual info lines of any source appears."""
    daemon = daemon_factory(services, "--log-level", "error")
    login_and_call(services, daemon)
    assert daemon.stop() == 0
    text = daemon.log_text()
    for info in ("starting up", "Starting factory", '"POST /mcp', "mailmcp listening", "logged in to",
                 "Main loop terminated"):
        assert info not in text, (info, text[-2000:])


def test_json_format_is_one_object_per_line_with_level_and_text(
    services: Services, daemon_factory: Any
) -> None:
    """
    ``--log-format json``: every line parses as JSON and carries time,
    level, namespace and text; the access log and mailmcp's own events are
    among them, and no password is in any of them.
    """
    daemon = daemon_factory(services, "--log-format", "json")
    login_and_call(services, daemon)
    assert daemon.stop() == 0
    records = json_records(daemon)
    texts = [r["text"] for r in records]
    assert all(r["time"] and r["time"].endswith("+00:00") for r in records)
    assert any('"POST /mcp' in t for t in texts), texts  # the access log
    assert {r["level"] for r in records} <= {"info", "warn", "error", "critical"}  # --log-level info
    assert any(r["namespace"].startswith("mailmcp.") and r["level"] == "info" for r in records)
    assert PASSWORD not in daemon.log_text()


def test_login_check_is_quiet(services: Services, daemon_factory: Any) -> None:
    """
    A real login through the daemon (IMAP and SMTP login checks) logs no
    "Unhandled unsolicited response: BYE" and no per-check "Starting
    factory"/"Stopping factory" pair; only the sites' own factories appear.
    """
    daemon = daemon_factory(services, "--log-level", "debug")
    login_and_call(services, daemon)
    assert daemon.stop() == 0
    text = daemon.log_text()
    assert "Unhandled unsolicited response" not in text, text[-3000:]
    factories = [line for line in text.splitlines() if "ing factory" in line]
    assert factories and all("Site" in line for line in factories), factories


def test_access_lines_are_in_the_file_when_the_response_arrives_and_sigusr1_rotates(
    services: Services, daemon_factory: Any
) -> None:
    """
    Lines are written once per reactor turn, yet a call's access line is in
    the log file by the time its response has arrived; SIGUSR1 rotates the
    file (twistd's signal), lines logged before it in the old file.
    """
    import signal
    import time
    import urllib.request

    daemon = daemon_factory(services)

    def health(marker: str) -> None:
        # The access line names the user agent (the query string it leaves out).
        request = urllib.request.Request(f"{daemon.base_url}/health", headers={"User-Agent": marker})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            assert response.status == 200
        assert f'"{marker}"' in daemon.log_text()  # no wait: already written

    for n in range(20):
        health(f"before-{n}")
    daemon.process.send_signal(signal.SIGUSR1)
    rotated = daemon.log_path.with_name(daemon.log_path.name + ".1")
    deadline = time.monotonic() + 10
    while not rotated.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    health("after")
    assert daemon.stop() == 0
    old, new = rotated.read_text(errors="replace"), daemon.log_text()
    assert all(f'"before-{n}"' in old for n in range(20))
    assert '"before-' not in new and '"after"' in new
