"""
--send-allow-domains (docs/threat-model.rst SM-15): the parser, the match,
and the check in deliver() that every sending tool shares, decided before
Sent is searched or SMTP is contacted.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from mailmcp._toolkit import ToolContext, ToolError
from mailmcp.mail._sendpolicy import domain_allowed, parse_allow_domains, refused_recipients
from mailmcp.testing import FakeIMAPPool, make_account, tool_services
from mailmcp.tools._writing import SendInput, send_mail_message
from tests.helpers import run
from tests.unit.writable_imap import FakeSender, WritableServer


def test_parse_normalises_and_keeps_the_subdomain_dot() -> None:
    """Comma/space separated, lower-cased, IDNA-encoded, trailing dot dropped, duplicates once."""
    assert parse_allow_domains(" Example.COM., .Bücher.example  example.com,,partner.test ") == (
        "example.com", ".xn--bcher-kva.example", "partner.test")
    assert parse_allow_domains("") == ()
    for bad in ("a..b", "-x.test", "x_y.test", "a@b.test", "." , "x" * 64 + ".test"):
        with pytest.raises(ValueError, match="not a valid domain"):
            parse_allow_domains(bad)


def test_exact_domains_and_leading_dot_subdomains() -> None:
    """example.com is that domain only; .example.com is every domain below it, not itself."""
    allowed = parse_allow_domains("example.com .corp.example bücher.example")
    assert domain_allowed("EXAMPLE.com", allowed) and domain_allowed("example.com.", allowed)
    assert not domain_allowed("mail.example.com", allowed)
    assert not domain_allowed("example.com.evil.test", allowed)
    assert not domain_allowed("notexample.com", allowed)
    assert domain_allowed("a.corp.example", allowed) and domain_allowed("b.a.corp.example", allowed)
    assert not domain_allowed("corp.example", allowed) and not domain_allowed("xcorp.example", allowed)
    assert domain_allowed("xn--bcher-kva.example", allowed) and domain_allowed("Bücher.example", allowed)
    assert refused_recipients(["a@example.com", "b@evil.test", "c@x.corp.example"], allowed) == [
        "b@evil.test"]
    assert refused_recipients(["b@evil.test"], ()) == []


def _ctx(allowed: str) -> tuple[ToolContext, WritableServer, FakeSender]:
    server = WritableServer()
    server.mailbox("INBOX")
    server.mailbox("Sent", "\\Sent")
    server.mailbox("Drafts", "\\Drafts")
    sender = FakeSender()
    services = tool_services(reactor=Clock(), imap=FakeIMAPPool(server), smtp=sender,
                             send_allow_domains=parse_allow_domains(allowed))
    return ToolContext(account=make_account(), services=services), server, sender


def test_a_refused_recipient_stops_the_send_before_imap_and_smtp() -> None:
    """Any one recipient outside the list (a bcc here): isError naming it; no IMAP command, no send."""
    ctx, server, sender = _ctx("example.test")
    args = SendInput(to=["bob@example.test"], bcc=["Eve <eve@evil.test>", "x@EVIL2.test"],
                     subject="s", text_body="b", idempotency_key="k1")
    with pytest.raises(ToolError) as caught:
        run(send_mail_message(ctx, args))
    assert "eve@evil.test, x@EVIL2.test" in caught.value.message
    assert "bob@example.test" not in caught.value.message.split("refused")[1]
    assert "Nothing was sent or saved" in caught.value.message
    assert sender.sent == [] and server.commands == []


def test_allowed_recipients_are_sent() -> None:
    """All recipients inside the list: sent as usual."""
    ctx, _, sender = _ctx("example.test, .example.test")
    out = run(send_mail_message(ctx, SendInput(to=["bob@example.test"], cc=["c@dept.example.test"],
                                               subject="s", text_body="b")))
    assert out.status == "sent" and len(sender.sent) == 1
