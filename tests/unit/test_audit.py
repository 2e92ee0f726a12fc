"""
The audit trail (docs/threat-model.rst LG-06, LG-07): one entry per tool
call through `MCPApp` with targets and outcome but no content, and the file
sink's reopen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from mailmcp._audit import Audit, FileAuditLog, IAuditLog, LogAuditLog, MemoryAuditLog, targets
from mailmcp._toolkit import Tool, ToolContext, ToolError
from mailmcp.mcp._app import MCPApp
from mailmcp.oauth._clients import Client as OAuthClient
from mailmcp.oauth._clients import MailServer
from mailmcp.oauth._grants import client_ref
from mailmcp.testing import FakeTokenVerifier, make_account, tool_services
from tests.unit.mcp_client import TOKEN, Client, call, make_config
from tests.unit.oauth_helpers import make_server

CANARY_SUBJECT = "Canary-Subject-7f3a"
CANARY_BODY = "Canary-Body-91bc"


class SendIn(BaseModel):
    to: list[str] = []
    cc: list[str] = []
    bcc: list[str] = []
    subject: str = ""
    text_body: str = ""
    folder: str | None = None
    uid: int | None = None
    mode: str = "ok"


class Rcpt(BaseModel):
    address: str


class SendOut(BaseModel):
    recipients: list[Rcpt]
    subject: str


async def _send(ctx: ToolContext, args: SendIn) -> SendOut:
    if args.mode == "unknown":
        raise ToolError("Delivery status unknown: connection lost after DATA.")
    if args.mode == "refuse":
        raise ToolError(f"Not sent: refused ({args.subject})")
    return SendOut(recipients=[Rcpt(address=a) for a in args.to + args.cc + args.bcc],
                   subject=args.subject)


SEND = Tool(name="send", title="Send", description="demo send", input_model=SendIn,
            output_model=SendOut, handler=_send, read_only=False, destructive=False,
            idempotent=False)


def app_with_audit() -> tuple[Client, MemoryAuditLog]:
    sink = MemoryAuditLog()
    clock = Clock()
    clock.advance(1_767_225_600.25)  # 2026-01-01T00:00:00.250Z
    account = make_account()
    verifier = FakeTokenVerifier({TOKEN: account})
    app = MCPApp(make_config(), verifier, tool_services(audit=Audit(sink, clock)), [SEND])
    return Client(app), sink


def test_one_entry_per_call_with_targets_and_outcome_but_no_content() -> None:
    """ok, error (tool refusal, bad arguments) and unknown outcomes; subject and body never written."""
    client, sink = app_with_audit()
    common = {"subject": CANARY_SUBJECT, "text_body": CANARY_BODY}
    calls = [
        {"to": ["Bob <bob@Example.test>"], "cc": ["c@example.test"], "bcc": ["d@other.test"],
         "folder": "INBOX", "uid": 42, **common},
        {"to": ["bob@example.test"], "mode": "refuse", **common},
        {"to": ["bob@example.test"], "mode": "unknown", **common},
        {"to": "not-a-list", "uid": "x", **common},
    ]
    for arguments in calls:
        code, _ = client.rpc(call("send", arguments))
        assert code == 200
    assert [e["outcome"] for e in sink.entries] == ["ok", "error", "unknown", "error"]
    first = sink.entries[0]
    assert first["time"] == "2026-01-01T00:00:00.250Z" and first["event"] == "tool"
    assert first["tool"] == "send" and first["account"] == make_account().email
    assert first["targets"] == {"folder": "INBOX", "uid": 42, "recipients": 3,
                                "recipient_domains": ["example.test", "other.test"]}
    assert sink.entries[3]["targets"] == {}
    text = json.dumps(sink.entries)
    assert CANARY_SUBJECT not in text and CANARY_BODY not in text and TOKEN not in text


def test_targets_read_only_named_fields() -> None:
    """Search text, file names and other arguments are never copied; long values are cut."""
    found = targets({"folder": "F" * 500, "query": "SUBJECT secret", "filename": "x.pdf",
                     "uid": True, "destination": "Archive"})
    assert found == {"folder": "F" * 200, "destination": "Archive"}
    assert targets("not a mapping") == {}


def test_oauth_entries_name_the_client_not_its_secrets() -> None:
    """Login/token entries carry the client's short id and name, an OAuth error code, nothing else."""
    sink = MemoryAuditLog()
    audit = Audit(sink, Clock())
    server = MailServer(host="imap.example.test", port=993, security="tls")
    client = OAuthClient(client_id="cid-secret-looking-value", imap=server, smtp=server,
                         redirect_uris=(), secret_hash="0" * 64, name="Claude")
    audit.oauth("login", client, "ok", "ann@example.test")
    audit.oauth("refresh", None, "error", error="invalid_client")
    login, refresh = sink.entries
    assert login["client"]["name"] == "Claude" and len(login["client"]["id"]) == 12
    assert "cid-secret-looking-value" not in json.dumps(sink.entries)
    assert refresh == {"time": refresh["time"], "event": "refresh",
                       "client": {"id": None, "name": None}, "account": None,
                       "outcome": "error", "error": "invalid_client"}


def test_file_sink_appends_lines_and_reopens_after_rotation(tmp_path: Path) -> None:
    """One JSON line each, file 0600; after a rename and reopen, new lines go to a new file."""
    path = tmp_path / "audit.jsonl"
    sink = FileAuditLog(str(path))
    assert verifyObject(IAuditLog, sink) and verifyObject(IAuditLog, MemoryAuditLog())
    sink.open()
    sink.record({"event": "a"})
    path.rename(tmp_path / "audit.jsonl.1")
    sink.record({"event": "b"})
    sink.reopen()
    sink.record({"event": "c"})
    sink.close()
    assert path.stat().st_mode & 0o777 == 0o600
    rotated = (tmp_path / "audit.jsonl.1").read_text().splitlines()
    assert [json.loads(line)["event"] for line in rotated] == ["a", "b"]
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["c"]


def test_dash_writes_into_the_main_log() -> None:
    """--audit-log -: each entry is one event in the main log, with the JSON line."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        LogAuditLog().record({"event": "tool", "outcome": "ok"})
    finally:
        globalLogPublisher.removeObserver(events.append)
    (event,) = [e for e in events if "audit_line" in e]
    assert json.loads(event["audit_line"]) == {"event": "tool", "outcome": "ok"}


def test_oauth_and_account_page_events_through_http(tmp_path: Path) -> None:
    """
    Through the OAuth endpoints (StubTreq): a failed and a good login, the
    code redeemed, a refresh, a bad refresh, and the account page's
    "disconnect all" each leave one entry naming the same client; no
    password or token is in any entry.
    """
    from mailmcp.oauth._account_page import AccountApp
    from mailmcp.oauth._grants import AccountGrants
    from tests.unit.account_server import AccountServer, session_of, sign_in

    server = make_server(tmp_path, server_class=AccountServer)
    assert isinstance(server, AccountServer)
    sink = MemoryAuditLog()
    server.app.audit = Audit(sink, server.clock)
    server.page = StubTreq(AccountApp(server.app, AccountGrants(server.store, server.config.keyring)).app.resource())
    assert server.login("alice@example.test", "wrong-pw-canary")[0].code == 400
    tokens = server.tokens()
    assert server.refresh(tokens["refresh_token"])[0].code == 200
    assert server.refresh("not-a-token")[0].code == 400
    _, page = sign_in(server)
    response, _ = server.account_post({"action": "revoke_all", "session": session_of(page)})
    assert response.code == 200
    assert [(e["event"], e["outcome"], e.get("error")) for e in sink.entries] == [
        ("login", "error", None), ("login", "ok", None), ("token", "ok", None),
        ("refresh", "ok", None), ("refresh", "error", "invalid_grant"), ("revoke", "ok", None)]
    assert {e["client"]["id"] for e in sink.entries} == {client_ref(server.client_id)[:12]}
    assert sink.entries[0]["account"] == "alice@example.test"
    text = json.dumps(sink.entries)
    for secret in ("wrong-pw-canary", "alice-pw", tokens["access_token"], tokens["refresh_token"],
                   server.client_secret):
        assert secret not in text


def test_revocation_through_the_endpoint_names_the_account(tmp_path: Path) -> None:
    """
    ``/oauth/revoke`` (RFC 7009) with the client's refresh token: one
    ``revoke`` entry naming the client and the revoked grant's mailbox; an
    unknown token is still 200, its entry names no account; no token or
    secret is in any entry.
    """
    server = make_server(tmp_path)
    sink = MemoryAuditLog()
    server.app.audit = Audit(sink, server.clock)
    tokens = server.tokens()
    auth = {"client_id": server.client_id, "client_secret": server.client_secret}
    assert server.token({"token": "not-a-token", **auth}, path="/oauth/revoke")[0].code == 200
    assert server.token({"token": tokens["refresh_token"], **auth}, path="/oauth/revoke")[0].code == 200
    revokes = [e for e in sink.entries if e["event"] == "revoke"]
    assert [(e["outcome"], e["account"]) for e in revokes] == [("ok", None), ("ok", "alice@example.test")]
    assert {e["client"]["id"] for e in revokes} == {client_ref(server.client_id)[:12]}
    text = json.dumps(sink.entries)
    for secret in (tokens["access_token"], tokens["refresh_token"], server.client_secret, "alice-pw"):
        assert secret not in text


def test_a_call_refused_for_a_missing_scope_is_an_error_line() -> None:
    """A read-only token calling a sending tool: 403 (step-up), and one 'error' entry for it."""
    import attrs

    sink = MemoryAuditLog()
    account = attrs.evolve(make_account(), scopes=frozenset({"mail.read"}))
    verifier = FakeTokenVerifier({TOKEN: account})
    send = attrs.evolve(SEND, scopes=frozenset({"mail.send"}))
    app = MCPApp(make_config(), verifier, tool_services(audit=Audit(sink, Clock())), [send])
    code, _ = Client(app).rpc(call("send", {"to": ["bob@example.test"]}))
    assert code == 403
    assert [(e["tool"], e["outcome"]) for e in sink.entries] == [("send", "error")]
