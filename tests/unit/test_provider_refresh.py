"""
Provider access-token refresh for provider sign-in grants, socket-free: a
`GrantService` on the memory store and a `Clock`, a provider whose answers
the test releases, the IMAP pool against a scripted server, and the SMTP
sender over a ``StringTransport``.
"""

from __future__ import annotations

import base64
import json
import secrets
from types import SimpleNamespace
from typing import Any

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from mailmcp._account import MailAccount
from mailmcp._tls import MailTLS
from mailmcp._toolkit import imap_tool_error
from mailmcp.mail._mailbox_api import IMAPGrantEnded, IMAPSession
from mailmcp.mail._smtp import SMTPAuthFailed, SMTPSender
from mailmcp.mail.imap import IMAPPool
from mailmcp.oauth._clients import MailServer, open_client, provision_client
from mailmcp.oauth._grants import (
    CodeRequest,
    Credentials,
    GrantService,
    open_credentials,
    pkce_s256,
)
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.oauth._tokens import InvalidToken, TokenCodec
from mailmcp.provider._client import ProviderClient, ProviderTokens
from mailmcp.testing import MemoryGrantStore
from tests.unit.imap_script import ScriptedEndpoint, ScriptedServer, ServerTransport
from tests.unit.provider_fake import profile

MCP = "https://mail.example.test/mcp"
NOW = 1_800_000_000
IMAP = MailServer("127.0.0.1", 143, "plain")
SMTP = MailServer("smtp.example.test", 465, "tls")
REDIRECT = "https://app.example/cb"


def reply(code: int, body: bytes) -> Any:
    """A response as treq gives it: a code and a content() Deferred."""
    return SimpleNamespace(code=code, content=lambda: succeed(body))


class Provider:
    """
    A treq-like client whose token endpoint answers only when the test says
    so: C{pending} holds each call's form and Deferred.  Refresh tokens
    rotate and die on use, like the harness's provider.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[dict[str, str], Deferred[Any]]] = []
        self.serial = 0
        self.live_refresh = {"CANARY-rt-0"}
        self.revoked = False
        self.auto = False

    def request(self, method: str, url: str, **kw: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((dict(kw["data"]), d))
        if self.auto:
            self.answer()
        return d

    def answer(self, index: int = 0) -> None:
        form, d = self.pending.pop(index)
        presented = form.get("refresh_token")
        if self.revoked or presented not in self.live_refresh:
            body = {"error": "invalid_grant", "error_description": "CANARY-description"}
            d.callback(reply(400, json.dumps(body).encode()))
            return
        self.live_refresh.discard(presented)
        self.serial += 1
        self.live_refresh.add(f"CANARY-rt-{self.serial}")
        body = {"access_token": f"CANARY-at-{self.serial}", "refresh_token": f"CANARY-rt-{self.serial}",
                "expires_in": 3600, "token_type": "Bearer"}  # fmt: skip
        d.callback(reply(200, json.dumps(body).encode()))


def run(coro: Any) -> Deferred[Any]:
    return Deferred.fromCoroutine(coro)


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


@attrs.define
class World:
    clock: Clock
    store: MemoryGrantStore
    codec: TokenCodec
    provider: Provider
    client: Any

    def service(self, provider: Provider | None = None) -> GrantService:
        """A GrantService: one per simulated process, all sharing the store."""
        http = provider or self.provider
        pc = ProviderClient(profile(), http, self.clock)
        return GrantService(self.store, self.codec, MCP, code_lifetime=60, access_lifetime=86400,
                            refresh_lifetime=10 * 86400, provider_for={"": pc}.get)  # fmt: skip

    def grant(self, grants: GrantService, expires_in: int = 3600) -> str:
        """Log in with provider tokens; the MCP access token."""
        tokens = ProviderTokens(
            "CANARY-at-0", "CANARY-rt-0", int(self.clock.seconds()) + expires_in
        )
        creds = Credentials("u@x.test", "U", IMAP, "u@x.test", "", SMTP, "u@x.test", "",
                            imap_auth="xoauth2", oauth=tokens)  # fmt: skip
        verifier = secrets.token_urlsafe(40)
        code = result(
            run(grants.login(CodeRequest(self.client, REDIRECT, pkce_s256(verifier), MCP), creds))
        )
        return str(
            result(
                run(grants.redeem_code(self.client, code, REDIRECT, verifier, None))
            ).access_token
        )

    def stored(self, access_token: str) -> Credentials:
        claims = self.codec.open("access", access_token)
        key = base64.urlsafe_b64decode(claims["k"] + "=" * (-len(claims["k"]) % 4))
        record = self.store.grants[claims["gid"]]
        return open_credentials(key, claims["gid"], record.sealed)


@pytest.fixture
def world() -> World:
    clock = Clock()
    clock.advance(NOW)
    codec = TokenCodec(KeyRing([new_master_key()]), clock)
    store = MemoryGrantStore(clock)
    cid, _ = provision_client(codec, IMAP, SMTP, [REDIRECT])
    return World(clock, store, codec, Provider(), open_client(codec, cid))


def test_fresh_token_is_used_as_is(world: World) -> None:
    grants = world.service()
    token = world.grant(grants)
    account = result(run(grants.account_for(token)))
    assert account.uses_token and account.oauth.access_token == "CANARY-at-0"
    assert account.renew is not None and not account.ended
    assert world.provider.pending == []
    assert "CANARY" not in repr(account)


def test_token_expiring_within_five_minutes_is_refreshed_and_stored_sealed(world: World) -> None:
    """At 5 minutes before expiry the call refreshes; the rotated refresh token is stored sealed."""
    grants = world.service()
    token = world.grant(grants)
    world.clock.advance(3600 - 301)
    assert result(run(grants.account_for(token))).oauth.access_token == "CANARY-at-0"
    world.clock.advance(2)
    world.provider.auto = True
    account = result(run(grants.account_for(token)))
    assert account.oauth.access_token == "CANARY-at-1"
    assert account.oauth.expires_at == int(world.clock.seconds()) + 3600
    stored = world.stored(token)
    assert stored.oauth == account.oauth and stored.oauth.refresh_token == "CANARY-rt-1"
    (record,) = world.store.grants.values()
    assert b"CANARY" not in record.sealed
    # The next call reads the stored token: no second refresh.
    assert result(run(grants.account_for(token))).oauth.access_token == "CANARY-at-1"
    assert world.provider.serial == 1 and grants.tokens.refreshes == 1


def test_ten_concurrent_calls_make_one_refresh(world: World) -> None:
    """Single flight: ten calls of one grant with an aged token share one provider call."""
    grants = world.service()
    token = world.grant(grants)
    world.clock.advance(3600)
    calls = [run(grants.account_for(token)) for _ in range(10)]
    assert len(world.provider.pending) == 1
    world.provider.answer()
    accounts = result(gatherResults(calls))
    assert {a.oauth.access_token for a in accounts} == {"CANARY-at-1"}
    assert grants.tokens.refreshes == 1


def test_cas_loser_uses_the_winners_tokens(world: World) -> None:
    """Two processes refresh at once: the store's CAS lets one write; the other re-reads it."""
    a, b = world.service(), world.service()
    token = world.grant(a)
    # The provider does not rotate for this test, so both calls succeed.
    world.clock.advance(3600)
    da, db = run(a.account_for(token)), run(b.account_for(token))
    assert len(world.provider.pending) == 2
    form, d = world.provider.pending.pop(1)
    d.callback(reply(200, json.dumps({"access_token": "CANARY-at-B", "expires_in": 3600,
                                                          "refresh_token": "CANARY-rt-B"}).encode()))  # fmt: skip
    assert result(db).oauth.access_token == "CANARY-at-B"
    world.provider.answer()  # A's call succeeds too, but B stored first
    assert result(da).oauth.access_token == "CANARY-at-B"
    assert world.stored(token).oauth.refresh_token == "CANARY-rt-B"


def test_refused_loser_of_a_rotation_race_keeps_the_grant(world: World) -> None:
    """With rotating refresh tokens the loser's call is refused; it uses the winner's, nothing ends."""
    a, b = world.service(), world.service()
    token = world.grant(a)
    world.clock.advance(3600)
    da, db = run(a.account_for(token)), run(b.account_for(token))
    world.provider.answer(0)  # A wins and stores
    assert result(da).oauth.access_token == "CANARY-at-1"
    world.provider.answer(0)  # B presented the used refresh token: invalid_grant
    account = result(db)
    assert not account.ended and account.oauth.access_token == "CANARY-at-1"
    assert len(world.store.grants) == 1


def test_refused_refresh_ends_the_grant_with_a_reconnect_message(world: World) -> None:
    """Consent revoked: the call's account is `ended` (the tool says sign in again), the grant is gone."""
    grants = world.service()
    token = world.grant(grants)
    world.clock.advance(3600)
    world.provider.revoked = True
    world.provider.auto = True
    with capturedLogs() as events:
        d = run(grants.account_for(token))
        world.clock.advance(1)  # the re-read after a refusal
        account = result(d)
    assert "sign in again" in account.ended and "Example" in account.ended
    assert "CANARY" not in account.ended and "CANARY" not in repr(events)
    assert world.store.grants == {}
    with pytest.raises(InvalidToken):
        result(run(grants.account_for(token)))


def test_provider_down_keeps_the_old_token(world: World) -> None:
    grants = world.service()
    token = world.grant(grants)
    world.clock.advance(3600 - 100)
    d = run(grants.account_for(token))
    form, pending = world.provider.pending.pop()
    pending.callback(reply(503, b"CANARY down"))
    account = result(d)
    assert account.oauth.access_token == "CANARY-at-0" and not account.ended
    assert world.stored(token).oauth.access_token == "CANARY-at-0"


def test_renew_forces_one_refresh_and_a_stale_renew_reads_the_store(world: World) -> None:
    """After a server refused the token: renew refreshes even a 'fresh' token, once per token."""
    grants = world.service()
    token = world.grant(grants)
    world.provider.auto = True
    account = result(run(grants.account_for(token)))
    renewed = result(run(account.renew()))
    assert renewed.oauth.access_token == "CANARY-at-1" and renewed.renew is not None
    # Another caller still holding the old account: the store already has a newer token.
    again = result(run(account.renew()))
    assert again.oauth.access_token == "CANARY-at-1"
    assert world.provider.serial == 1


# -- the IMAP pool ------------------------------------------------------------------------


class TokenServer(ScriptedServer):
    """Accepts AUTHENTICATE XOAUTH2 with a token from C{valid}; counts logins per token."""

    def __init__(self) -> None:
        super().__init__()
        self.valid = {"CANARY-at-0"}
        self.logins: list[str] = []

    def answer(self, transport: ServerTransport, line: bytes) -> bytes:
        tag, _, rest = line.partition(b" ")
        if rest.upper().startswith(b"AUTHENTICATE XOAUTH2 "):
            self.commands.append(b"AUTHENTICATE")
            decoded = base64.b64decode(rest.split()[2]).decode()
            token = decoded.split("auth=Bearer ")[1].rstrip("\x01")
            self.logins.append(token)
            if token in self.valid:
                return tag + b" OK [CAPABILITY IMAP4rev1] Logged in\r\n"
            transport.failing_tag = tag
            return b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n"
        if line == b"" and getattr(transport, "failing_tag", None):
            return transport.failing_tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        return super().answer(transport, line)


class TokenEndpoint(ScriptedEndpoint):
    def connect(self, factory: Any) -> Deferred[Any]:
        self.server.connect_attempts += 1
        protocol = factory.buildProtocol(None)
        transport = ServerTransport(self.server)
        transport.protocol = protocol
        self.server.transports.append(transport)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n")
        return succeed(protocol)


def pool_for(server: TokenServer, clock: Clock) -> IMAPPool:
    return IMAPPool(None, MailTLS(None), clock=clock, endpoint_factory=lambda _a: TokenEndpoint(server),
                    idle_timeout=10_000, noop_after=10_000)  # fmt: skip


async def noop(session: IMAPSession) -> str:
    await session.noop()
    return "ok"


def test_pool_key_does_not_change_with_the_token(world: World) -> None:
    grants = world.service()
    token = world.grant(grants)
    world.provider.auto = True
    account = result(run(grants.account_for(token)))
    renewed = result(run(account.renew()))
    assert account.imap_pool_key == renewed.imap_pool_key
    assert "CANARY" not in account.imap_pool_key


def test_pooled_connection_is_not_reused_after_its_token_aged_out(world: World) -> None:
    """The connection logged in with token 0 is retired when it ages out; a new one uses token 1."""
    grants = world.service()
    token = world.grant(grants)
    world.provider.auto = True
    server = TokenServer()
    server.valid.add("CANARY-at-1")
    pool = pool_for(server, world.clock)
    account = result(run(grants.account_for(token)))
    assert result(run(pool.run(account, noop, read_only=True))) == "ok"
    assert result(run(pool.run(account, noop, read_only=True))) == "ok"
    assert server.logins == ["CANARY-at-0"] and pool.stats["reused"] == 1
    world.clock.advance(3600 - 59)  # within the refresh margin and the pool's slack
    account = result(run(grants.account_for(token)))
    assert account.oauth.access_token == "CANARY-at-1"
    assert result(run(pool.run(account, noop, read_only=True))) == "ok"
    assert server.logins == ["CANARY-at-0", "CANARY-at-1"]
    assert pool.stats["token_aged_out"] == 1 and pool.open_connections == 1
    assert server.transports[0].closed  # the old connection logged out


def test_pool_renews_once_when_the_server_refuses_the_token(world: World) -> None:
    """XOAUTH2 refused (error-challenge dance): one refresh, one new login, the call succeeds."""
    grants = world.service()
    token = world.grant(grants)
    world.provider.auto = True
    server = TokenServer()
    server.valid = {"CANARY-at-1"}  # the server already considers token 0 dead
    pool = pool_for(server, world.clock)
    account = result(run(grants.account_for(token)))
    assert result(run(pool.run(account, noop, read_only=False))) == "ok"
    assert server.logins == ["CANARY-at-0", "CANARY-at-1"]
    assert pool.stats["token_renewals"] == 1 and grants.tokens.refreshes == 1


def test_pool_gives_up_after_one_renewal(world: World) -> None:
    grants = world.service()
    token = world.grant(grants)
    world.provider.auto = True
    server = TokenServer()
    server.valid = set()
    pool = pool_for(server, world.clock)
    account = result(run(grants.account_for(token)))
    with pytest.raises(Exception) as info:
        result(run(pool.run(account, noop, read_only=True)))
    assert "refused the sign-in token" in str(info.value)
    assert server.logins == ["CANARY-at-0", "CANARY-at-1"]


def test_pool_renewal_refused_by_the_provider_is_a_reconnect_error(world: World) -> None:
    """The provider revoked consent: the tool error tells the user to sign in again; the grant ends."""
    grants = world.service()
    token = world.grant(grants)
    server = TokenServer()
    server.valid = set()
    pool = pool_for(server, world.clock)
    account = result(run(grants.account_for(token)))
    world.provider.revoked = True
    world.provider.auto = True
    d = run(pool.run(account, noop, read_only=True))
    world.clock.advance(1)
    with pytest.raises(IMAPGrantEnded) as info:
        result(d)
    message = imap_tool_error(info.value).message
    assert "sign in again" in message and "CANARY" not in message
    assert world.store.grants == {}


# -- the SMTP sender ------------------------------------------------------------------------


def test_sender_renews_once_when_the_server_refuses_the_token(world: World) -> None:
    grants = world.service()
    token = world.grant(grants)
    world.provider.auto = True
    account: MailAccount = result(run(grants.account_for(token)))
    reactor = MemoryReactorClock()
    sender = SMTPSender(reactor, MailTLS(), timeout=60)
    d = run(sender.send(account, "u@x.test", ["bob@x.test"], b"Subject: x\r\n\r\nhi\r\n"))

    def connection(index: int) -> tuple[Any, StringTransport]:
        proto = reactor.sslClients[index][2].buildProtocol(IPv4Address("TCP", "127.0.0.1", 465))
        transport = StringTransport()
        directlyProvides(transport, ISSLTransport)
        proto.makeConnection(transport)
        for line in (b"220 hi", b"250-hi", b"250 AUTH XOAUTH2", b"334 "):
            proto.dataReceived(line + b"\r\n")
        return proto, transport

    proto, transport = connection(0)
    assert b"CANARY-at-0" in base64.b64decode(transport.value().split(b"\r\n")[-2])
    proto.dataReceived(b"334 eyJzdGF0dXMiOiI0MDEifQ==\r\n")
    proto.dataReceived(b"535 5.7.8 no\r\n")
    assert len(reactor.sslClients) == 2  # nothing was sent; a second connection with a new token
    proto, transport = connection(1)
    assert b"CANARY-at-1" in base64.b64decode(transport.value().split(b"\r\n")[-2])
    proto.dataReceived(b"535 5.7.8 no\r\n")
    with pytest.raises(SMTPAuthFailed):
        result(d)
    assert len(reactor.sslClients) == 2  # only one retry


def test_async_provider_lookup_and_an_unconfigured_provider(world: World) -> None:
    """provider_for may answer later (a client read from the store); none configured keeps the token."""
    pc = ProviderClient(profile(), world.provider, world.clock)
    lookups: list[str] = []

    def later(key: str) -> Deferred[Any]:
        lookups.append(key)
        return succeed(pc if key == "" else None)

    grants = GrantService(world.store, world.codec, MCP, code_lifetime=60, access_lifetime=86400,
                          refresh_lifetime=10 * 86400, provider_for=later)  # fmt: skip
    token = world.grant(grants)
    world.clock.advance(3600)
    world.provider.auto = True
    assert result(run(grants.account_for(token))).oauth.access_token == "CANARY-at-1"
    assert lookups == [""]
    bare = GrantService(world.store, world.codec, MCP, code_lifetime=60, access_lifetime=86400,
                        refresh_lifetime=10 * 86400)  # fmt: skip
    world.clock.advance(3600)
    account = result(run(bare.account_for(token)))
    assert account.oauth.access_token == "CANARY-at-1" and not account.ended
    assert world.provider.serial == 1


def test_ended_account_answers_every_tool_call_with_the_reconnect_message() -> None:
    """MCP: a tool call of an ended grant is an isError result (HTTP 200), not a 401 or a tool run."""
    from mailmcp.testing import make_account
    from tests.unit.mcp_client import TOKEN, Client, call, make_app

    app, verifier = make_app()
    message = "Example no longer allows mailmcp to use this mailbox. Sign in again with Example."
    verifier.add(TOKEN, attrs.evolve(make_account(), ended=message))
    code, body = Client(app).rpc(call("echo", {"text": "x", "times": 1}))
    assert code == 200
    assert body["result"]["isError"] is True
    assert body["result"]["content"][0]["text"] == message

