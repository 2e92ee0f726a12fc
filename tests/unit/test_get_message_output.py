"""
``get_mail_message`` hands the MCP layer plain JSON-ready data, encoded
once, with no pydantic model in between (as the listing does).  Nothing
validates it at run time, so these tests do: for varied messages the data
is exactly what `GetMessageOutput` gives back from it (types, wire names,
field order), fits the declared ``outputSchema``, and through ``/mcp`` the
text content is the structuredContent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from mailmcp._toolkit import ToolContext
from mailmcp.attachments import Limits, LocalAttachmentStore
from mailmcp.mcp._app import MCPApp
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.testing import (
    FakeIMAPPool,
    FakeIMAPServer,
    FakeTokenVerifier,
    make_account,
    tool_services,
)
from mailmcp.tools import all_tools
from mailmcp.tools._reading import (
    GetMessageInput,
    GetMessageOutput,
    get_mail_message,
    get_mail_message_data,
)
from tests.helpers import run

BASE = "https://mail.example.test"


class SyncPool:
    """Runs 'thread pool' work at once, on the calling thread."""

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        try:
            result = f(*a, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class ClockReactor(Clock):
    """A Clock whose callFromThread runs at once (what deferToThreadPool needs)."""

    def callFromThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        f(*a, **kw)


def _fired(stub: StubTreq, d: Deferred[Any]) -> Any:
    stub.flush()
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and not isinstance(results[0], Failure), results
    return results[0]
TOKEN = "good-token"
TRUSTED = "mx.example.test"


def _messages() -> list[tuple[bytes, set[str]]]:
    out: list[tuple[bytes, set[str]]] = []
    m = EmailMessage(policy=SMTP)
    m["From"] = "Zoë Exämple <zoe@example.test>"
    m["Sender"] = "s@example.test"
    m["Reply-To"] = "r@example.test"
    m["To"] = "a@example.test, B <b@example.test>"
    m["Cc"] = "c@example.test"
    m["Bcc"] = "hidden@example.test"
    m["Subject"] = "Réunion — ünïcode ✓"
    m["Date"] = "Tue, 07 Jan 2025 10:00:00 +0000"
    m["Message-ID"] = "<1@example.test>"
    m["In-Reply-To"] = "<0@example.test>"
    m["References"] = "<a@example.test> <0@example.test>"
    m["Authentication-Results"] = f"{TRUSTED}; spf=pass; dkim=fail; dmarc=pass"
    m.set_content("plain body ✓\n")
    m.add_alternative("<p>html</p>", subtype="html")
    out.append((m.as_bytes(), {"\\Seen", "\\Flagged", "$Label"}))
    m = EmailMessage(policy=SMTP)
    m["From"] = '"boss@example.test" <evil@attacker.test>'  # a spoofing display name
    m["Subject"] = "=?utf-8?q?encoded_=C3=A9?="
    m["To"] = "undisclosed-recipients:;"
    m.set_content("<h1>News</h1>" + "<p>para</p>" * 3000, subtype="html")
    out.append((m.as_bytes(), {"\\Answered"}))
    m = EmailMessage(policy=SMTP)
    m["From"] = "Reports <reports@example.test>"
    m["Subject"] = "report"
    m.set_content("see attached")
    m.add_attachment(b"%PDF-1.4" * 100, maintype="application", subtype="pdf",
                     filename="report.pdf")
    m.add_attachment(b"x" * 200_000, maintype="application", subtype="octet-stream",
                     filename="too-big.bin")
    out.append((m.as_bytes(), set()))
    out.append((b"\r\nno headers at all\r\n", set()))
    out.append((b"From: x@example.test\r\nSubject: tab\tand \x7f\r\nContent-Type: text/plain;"
                b" charset=x-evil\r\n\r\nbody\r\n", set()))
    return out


@pytest.fixture
def server() -> FakeIMAPServer:
    server = FakeIMAPServer()
    box = server.mailbox("INBOX")
    for raw, flags in _messages():
        box.add(raw, flags)
    return server


def _context(server: FakeIMAPServer, tmp_path: Path) -> ToolContext:
    reactor = ClockReactor()
    reactor.advance(1_800_000_000)
    store = LocalAttachmentStore(
        tmp_path, KeyRing([new_master_key()]), reactor, SyncPool(), "http://127.0.0.1:8080",  # type: ignore[arg-type]
        link_lifetime=900, limits=Limits(max_attachment_bytes=64 * 1024),
    )
    services = tool_services(reactor=reactor, imap=FakeIMAPPool(server), attachments=store,
                             trusted_authserv_id=TRUSTED)
    return ToolContext(account=make_account(), services=services)


def _tool() -> Any:
    (tool,) = [t for t in all_tools() if t.name == "get_mail_message"]
    return tool


def test_the_plain_message_is_what_the_model_gives_and_fits_the_schema(
    server: FakeIMAPServer, tmp_path: Path
) -> None:
    """Every message: data == the model's JSON dump of it (same keys, order, types), schema-valid."""
    tool = _tool()
    assert tool.handler is get_mail_message_data
    schema = tool.output_model.model_json_schema(mode="serialization")
    ctx = _context(server, tmp_path)
    seen: set[str] = set()
    for uid in range(1, len(_messages()) + 1):
        data = run(get_mail_message_data(ctx, GetMessageInput(uid=uid, max_body_chars=1000)))
        jsonschema.Draft202012Validator(schema).validate(data)
        dumped = GetMessageOutput.model_validate(data).model_dump(mode="json", by_alias=True)
        assert json.dumps(data) == json.dumps(dumped)  # order and types too
        seen |= {w.split(":")[0] for w in data["warnings"]}
        if data["attachments"]:
            assert data["attachments"][0]["url"].startswith("http://127.0.0.1:8080/")
            assert data["attachments"][1]["link_error"]
    first = run(get_mail_message(ctx, GetMessageInput(uid=1)))
    assert first.from_[0].name == "Zoë Exämple" and first.authentication.spf == "pass"
    assert first.references == ["<a@example.test>", "<0@example.test>"] and first.seen
    assert any("display name" in w for w in seen)
    broken = dict(data, truncated="no")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(broken)


def test_over_http_the_text_is_the_structured_content(server: FakeIMAPServer) -> None:
    """Through /mcp: schema-valid structuredContent, and the text content parses to exactly it."""
    services = tool_services(reactor=MemoryReactorClock(), imap=FakeIMAPPool(server))
    config = type("Config", (), {"base_url": BASE, "allowed_origins": (),
                                 "max_request_body": 1 << 20})()
    app = MCPApp(config, FakeTokenVerifier({TOKEN: make_account()}), services, all_tools())
    stub = StubTreq(app.resource())
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2025-11-25"}

    def rpc(method: str, params: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        response = _fired(stub, stub.post(f"{BASE}/mcp", data=body.encode(), headers=headers))
        raw = _fired(stub, response.content())
        assert response.code == 200
        return raw, json.loads(raw)

    _, listed = rpc("tools/list", {})
    (described,) = [t for t in listed["result"]["tools"] if t["name"] == "get_mail_message"]
    for uid in (1, 2):
        raw, called = rpc("tools/call", {"name": "get_mail_message", "arguments": {"uid": uid}})
        result = called["result"]
        assert result["isError"] is False
        jsonschema.Draft202012Validator(described["outputSchema"]).validate(result["structuredContent"])
        assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    assert "Réunion — ünïcode ✓".encode() not in raw  # the second message
    assert result["structuredContent"]["from"][0]["email"] == "evil@attacker.test"
