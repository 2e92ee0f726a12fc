"""
Provider sign-in below the login page, against the real servers: a grant
holding provider tokens (from the harness's test OAuth provider) reads and
sends mail with SASL XOAUTH2 on the wire (Dovecot's ``oauth2`` passdb
introspects the token; Postfix submission authenticates through Dovecot
SASL), survives the provider expiring its access token with exactly one
refresh under ten concurrent tool calls, and, once the provider revokes
consent, answers the next tool call with an ``isError`` telling the user to
sign in again -- then the grant is gone (HTTP 401).

Tools are called through ``/mcp`` (`MCPApp` on a loopback port) with a real
`GrantService` as the token verifier.  Every mail connection comes from a
loopback address of its own (127.19.x.y): Dovecot delays further logins from
an address that just failed one, and the refusals here must slow down
neither each other nor the rest of the suite.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Iterator
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import capturedLogs
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from mailmcp._tls import MailTLS
from mailmcp.mail._mailcheck import (
    IMAPLoginChecker,
    LoginRejected,
    SMTPLoginChecker,
    credentials_check,
)
from mailmcp.mail._smtp import SMTPSender
from mailmcp.mail.imap import IMAPPool
from mailmcp.mcp._app import MCPApp
from mailmcp.oauth._clients import MailServer, open_client, provision_client
from mailmcp.oauth._grants import CodeRequest, Credentials, GrantService, pkce_s256
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.oauth._tokens import TokenCodec
from mailmcp.oauth._verifier import GrantTokenVerifier
from mailmcp.provider._client import ProviderClient, ProviderProfile, ProviderTokens
from mailmcp.testing import MemoryGrantStore, make_config, tool_services
from mailmcp.tools import all_tools
from mailmcp.web._http import MailMCPSite
from mailmcp.web._router import Router
from tests.harness import Services

pytestmark = pytest.mark.integration

REDIRECT = "https://app.example/cb"

_sources = iter(range(1, 60_000))


def source() -> tuple[str, int]:
    """A loopback source address no other connection of this module has used."""
    n = next(_sources)
    return (f"127.19.{n // 250}.{n % 250 + 1}", 0)


class FreshSourceReactor:
    """The reactor, with every outgoing TCP/TLS connection from its own loopback address."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None) -> Any:
        return self._real.connectTCP(host, port, factory, timeout=timeout, bindAddress=source())

    def connectSSL(self, host: str, port: int, factory: Any, context: Any, timeout: float = 30,
                   bindAddress: Any = None) -> Any:
        return self._real.connectSSL(host, port, factory, context, timeout=timeout, bindAddress=source())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def dovecot_log(services: Services) -> str:
    return (services.svc / "dovecot" / "dovecot.log").read_text(errors="replace")


def maillog(services: Services) -> str:
    return (services.svc / "postfix" / "maillog").read_text(errors="replace")


@pytest.fixture(params=["xoauth2"])
def world(request: pytest.FixtureRequest, services: Services) -> Iterator[Any]:
    """
    A fresh provider user, a grant for it made through `GrantService.login`
    with tokens from the provider (SASL mechanism: the fixture's param), and
    ``/mcp`` on loopback in front of it.
    """
    mechanism = request.param
    provider = services.oauth_provider
    provider.set_access_token_lifetime(3600)
    email = f"tok{secrets.token_hex(4)}@example.test"
    provider.add_user(email)
    issued = provider.issue_tokens(email)

    codec = TokenCodec(KeyRing([new_master_key()]), reactor)
    store = MemoryGrantStore(reactor)
    profile = ProviderProfile.custom(
        label="Test Provider", authorize_url=provider.authorize_url, token_url=provider.token_url,
        scope=provider.scope, userinfo_url=provider.userinfo_url, client_id=provider.client_id,
        client_secret=provider.client_secret,
    )  # fmt: skip
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    provider_client = ProviderClient(profile, http, reactor)
    grants = GrantService(store, codec, "http://127.0.0.1:1/mcp", code_lifetime=60, access_lifetime=3600,
                          refresh_lifetime=86400, provider_for={"": provider_client}.get)  # fmt: skip
    imap = MailServer("localhost", services.imaps_port, "tls")
    smtp = MailServer("localhost", services.submission_port, "starttls")
    cid, _ = provision_client(codec, imap, smtp, [REDIRECT])
    client = open_client(codec, cid)
    tokens = ProviderTokens(issued["access_token"], issued["refresh_token"],
                            int(reactor.seconds()) + int(issued["expires_in"]), issued.get("id_token"))  # fmt: skip
    creds = Credentials(email, "Token User", imap, email, "", smtp, email, "", imap_auth=mechanism, oauth=tokens)

    async def grant() -> str:
        verifier = secrets.token_urlsafe(40)
        code = await grants.login(CodeRequest(client, REDIRECT, pkce_s256(verifier), "http://127.0.0.1:1/mcp"),
                                  creds)  # fmt: skip
        return (await grants.redeem_code(client, code, REDIRECT, verifier, None)).access_token

    token = pytest_twisted.blockon(Deferred.fromCoroutine(grant()))
    fresh = FreshSourceReactor(reactor)
    pools: list[IMAPPool] = []

    def new_pool() -> IMAPPool:
        pools.append(IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=10.0,
                              endpoint_factory=lambda account: TCP4ClientEndpoint(
                                  reactor, account.imap.host, account.imap.port, timeout=10,
                                  bindAddress=source())))  # fmt: skip
        return pools[-1]

    sender = SMTPSender(fresh, MailTLS(services.ca_file), timeout=20)
    services_ = tool_services(reactor=reactor, imap=new_pool(), smtp=sender)
    site = MailMCPSite(Resource(), max_body=1 << 20, reactor=reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    config = make_config(base_url=base, max_request_body=1 << 20)
    world = SimpleNamespace(provider=provider, email=email, token=token, url=f"{base}/mcp", grants=grants,
                            store=store, tools=services_, new_pool=new_pool, services=services,
                            creds=creds)  # fmt: skip

    def serve(tools: Any) -> None:
        world.tools = tools
        site.resource = Router([("/mcp", MCPApp(config, GrantTokenVerifier(grants), tools, all_tools()).resource())])

    def restart() -> None:
        """As after a restart: /mcp served afresh with a new pool (no idle connection)."""
        serve(attrs.evolve(world.tools, imap=new_pool()))

    world.restart = restart
    serve(services_)
    yield world
    pytest_twisted.blockon(port.stopListening())
    for pool in pools:
        pytest_twisted.blockon(pool.stopService())


async def post(world: Any, name: str, arguments: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": name, "arguments": arguments}}).encode()  # fmt: skip
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(
        b"POST", world.url.encode(),
        Headers({b"content-type": [b"application/json"], b"accept": [b"application/json, text/event-stream"],
                 b"authorization": [b"Bearer " + world.token.encode()],
                 b"mcp-protocol-version": [b"2025-06-18"]}),
        FileBodyProducer(BytesIO(body)),
    )  # fmt: skip
    raw = await readBody(response)
    return response.code, (json.loads(raw) if response.code == 200 else None)


async def tool(world: Any, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    code, message = await post(world, name, arguments)
    assert code == 200 and message is not None
    result: dict[str, Any] = message["result"]
    return result


def send_args(world: Any, subject: str) -> dict[str, Any]:
    return {"to": [world.email], "subject": subject, "text_body": "sent with XOAUTH2",
            "idempotency_key": uuid.uuid4().hex}  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_xoauth2_read_send_refresh_once_and_reconnect_after_revocation(world: Any) -> None:
    provider, email = world.provider, world.email

    # -- reads and sends with XOAUTH2 on the wire ---------------------------------
    listed = await tool(world, "list_mailboxes", {})
    assert not listed.get("isError"), listed
    assert "INBOX" in json.dumps(listed["structuredContent"])
    assert re.search(rf"imap-login: .*Login: user=<{re.escape(email)}>, method=XOAUTH2", dovecot_log(world.services))
    sent = await tool(world, "send_mail_message", send_args(world, "token one"))
    assert not sent.get("isError"), sent
    assert sent["structuredContent"]["status"] == "sent"
    assert re.search(rf"sasl_method=XOAUTH2, sasl_username={re.escape(email)}", maillog(world.services))
    stats = (await threads.deferToThread(provider.stats))[email]
    assert stats["refreshes"] == 0

    # -- the provider expires the access token: ten calls, one refresh -------------
    await threads.deferToThread(provider.expire_access_tokens, email)
    # The idle connection (Dovecot keeps a session past its token) would
    # hide the expiry: as after a restart, the calls must log in afresh.
    await world.tools.imap.stopService()
    world.restart()
    calls = [tool(world, "list_mail_messages", {"folder": "INBOX"}) for _ in range(6)]
    calls += [tool(world, "send_mail_message", send_args(world, f"after expiry {i}")) for i in range(4)]
    results = await gatherResults([Deferred.fromCoroutine(c) for c in calls])
    assert [r.get("isError") for r in results] == [False] * 10, [r for r in results if r.get("isError")]
    stats = (await threads.deferToThread(provider.stats))[email]
    assert stats["refreshes"] == 1, stats
    assert world.grants.tokens.refreshes == 1
    assert world.tools.imap.stats["token_renewals"] >= 1

    # -- the provider revokes consent: a clear tool error, then 401 ----------------
    await threads.deferToThread(provider.revoke_consent, email)
    refused = await tool(world, "send_mail_message", send_args(world, "after revocation"))
    assert refused["isError"] is True
    text = refused["content"][0]["text"]
    assert "sign in again" in text and "Test Provider" in text
    assert world.store.grants == {}
    code, _ = await post(world, "list_mailboxes", {})
    assert code == 401
    log_text = dovecot_log(world.services) + maillog(world.services)
    for secret in (provider.client_secret,):
        assert secret not in text and secret not in log_text


@pytest.mark.parametrize("world", ["oauthbearer"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_oauthbearer_reads_and_sends(world: Any) -> None:
    """The same grant with OAUTHBEARER (RFC 7628): Dovecot and Postfix log that mechanism."""
    listed = await tool(world, "list_mailboxes", {})
    assert not listed.get("isError"), listed
    escaped = re.escape(world.email)
    assert re.search(rf"imap-login: .*Login: user=<{escaped}>, method=OAUTHBEARER", dovecot_log(world.services))
    sent = await tool(world, "send_mail_message", send_args(world, "bearer"))
    assert not sent.get("isError"), sent
    assert re.search(rf"sasl_method=OAUTHBEARER, sasl_username={escaped}", maillog(world.services))


@pytest_twisted.ensureDeferred
async def test_login_checks_take_a_grants_token_credentials(world: Any) -> None:
    """
    The login page's live checks with provider-token Credentials: IMAP and
    SMTP accept the token; after the provider revokes consent both say
    LoginRejected (never "unavailable"), and nothing logged holds the token.
    """
    creds = world.creds
    imap = IMAPLoginChecker(FreshSourceReactor(reactor), MailTLS(world.services.ca_file), timeout=10)
    smtp = SMTPLoginChecker(FreshSourceReactor(reactor), MailTLS(world.services.ca_file), timeout=10)
    with capturedLogs() as events:
        await imap.check(*credentials_check(creds, "IMAP"))
        await smtp.check(*credentials_check(creds, "SMTP"))
        await threads.deferToThread(world.provider.revoke_consent, world.email)
        for checker, protocol in ((imap, "IMAP"), (smtp, "SMTP")):
            with pytest.raises(LoginRejected):
                await checker.check(*credentials_check(creds, protocol))
    assert creds.oauth.access_token not in repr(events)
