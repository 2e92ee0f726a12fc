"""
--allow-user-servers: the RFC 6186 SRV prefill, the address/port policy for
user-named servers, and the login page that asks for them, over `StubTreq`
with a fake `twisted.names` resolver (no DNS, no sockets).
"""

from __future__ import annotations

import html
import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns
from twisted.names.error import DNSNameError

from mailmcp.oauth import _login
from mailmcp.oauth._app import user_server_resolver
from mailmcp.oauth._clients import Client, MailServer
from mailmcp.oauth._user_servers import (
    ServerPolicy,
    ServerRefused,
    Suggestion,
    brings_servers,
    discover,
    parse_allow,
)
from tests.unit.oauth_helpers import make_config, make_server, pkce


class FakeResolver:
    """`twisted.names` resolver answering from dicts; anything else is NXDOMAIN."""

    def __init__(self, srv: dict[str, list[tuple[int, int, int, str]]] | None = None,
                 addresses: dict[str, list[str]] | None = None) -> None:
        self.srv = srv or {}
        self.addresses = addresses or {}
        self.queries: list[str] = []

    def lookupService(self, name: str, timeout: Any = None) -> Deferred[Any]:
        self.queries.append(name)
        if name not in self.srv:
            return fail(DNSNameError(name))
        answers = [dns.RRHeader(name, dns.SRV, payload=dns.Record_SRV(p, w, port, target))
                   for p, w, port, target in self.srv[name]]
        return succeed((answers, [], []))

    def _lookup(self, name: str, version: int) -> Deferred[Any]:
        self.queries.append(name)
        found = [ipaddress.ip_address(a) for a in self.addresses.get(name, [])]
        answers = []
        for address in found:
            if address.version != version:
                continue
            if version == 4:
                answers.append(dns.RRHeader(name, dns.A, payload=dns.Record_A(str(address))))
            else:
                answers.append(dns.RRHeader(name, dns.AAAA, payload=dns.Record_AAAA(str(address))))
        if not answers:
            return fail(DNSNameError(name))
        return succeed((answers, [], []))

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(name, 4)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred[Any]:
        return self._lookup(name, 6)


def result(d: Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "deferred did not fire"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


EXAMPLE_SRV = {
    "_imaps._tcp.example.org": [(10, 0, 993, "imap-b.example.org."), (0, 5, 993, "imap.example.org.")],
    "_submission._tcp.example.org": [(0, 0, 587, "smtp.example.org.")],
    "_submissions._tcp.example.org": [(0, 0, 0, ".")],
}
PUBLIC = {"imap.example.org": ["93.184.216.34"], "smtp.example.org": ["93.184.216.35", "2606:2800:220:1::1"],
          "internal.example.org": ["10.0.0.5"], "mixed.example.org": ["93.184.216.36", "127.0.0.1"]}


# -- discovery ---------------------------------------------------------------------


def test_srv_discovery_prefers_priority_then_tls_and_skips_dot_targets() -> None:
    """RFC 6186: lowest priority wins; _imaps before _imap; a '.' target means 'not offered'."""
    found = result(discover(FakeResolver(EXAMPLE_SRV), "someone@Example.ORG"))
    assert found == Suggestion(imap=MailServer("imap.example.org", 993, "tls"),
                               smtp=MailServer("smtp.example.org", 587, "starttls"))


def test_srv_discovery_of_an_unknown_domain_finds_nothing() -> None:
    """NXDOMAIN everywhere (or no domain at all) is an empty suggestion, never an error."""
    assert result(discover(FakeResolver(), "a@nowhere.example")) == Suggestion()
    resolver = FakeResolver()
    assert result(discover(resolver, "no-domain")) == Suggestion()
    assert resolver.queries == []


# -- policy ------------------------------------------------------------------------


def check(policy: ServerPolicy, host: str, port: int) -> None:
    result(Deferred.fromCoroutine(policy.check("IMAP", MailServer(host, port, "tls"))))


def test_policy_public_addresses_on_usual_ports_only() -> None:
    """OA-32: public addresses on 993/143/465/587 pass; other ports, private, loopback, mixed or unknown hosts do not."""
    policy = ServerPolicy((), FakeResolver(addresses=PUBLIC))
    check(policy, "imap.example.org", 993)
    check(policy, "smtp.example.org", 587)
    check(policy, "93.184.216.34", 143)
    for host, port in (("imap.example.org", 22), ("internal.example.org", 993), ("127.0.0.1", 993),
                       ("169.254.169.254", 993), ("mixed.example.org", 993), ("::1", 993),
                       ("gone.example.org", 993), ("10.0.0.1", 993)):
        with pytest.raises(ServerRefused):
            check(policy, host, port)


def test_policy_widened_by_user_servers_allow() -> None:
    """--user-servers-allow admits its networks on its ports (or any with *), and nothing more."""
    policy = ServerPolicy(parse_allow("127.0.0.0/8:* 10.0.0.0/24:1993"), FakeResolver(addresses=PUBLIC))
    check(policy, "127.0.0.1", 12345)
    check(policy, "10.0.0.5", 1993)
    with pytest.raises(ServerRefused):
        check(policy, "10.0.0.5", 993 + 1)
    with pytest.raises(ServerRefused):
        check(policy, "10.0.1.5", 1993)


def test_brings_servers_by_client_kind() -> None:
    """Provisioned clients name their servers; registered and metadata-document clients do not."""
    provisioned = Client("id", MailServer("h", 993, "tls"), MailServer("h", 465, "tls"), (), None)
    assert brings_servers(provisioned)
    assert not brings_servers(attrs.evolve(provisioned, kind="registered"))
    assert not brings_servers(attrs.evolve(provisioned, kind="metadata"))


# -- the login page ----------------------------------------------------------------


@attrs.frozen
class ServerlessClient(Client):
    """A client that brings no servers, as /oauth/register and metadata documents make."""

    kind: str = "registered"


LOCAL_SRV = {
    "_imaps._tcp.example.test": [(0, 0, 1993, "127.0.0.1.")],
    "_submissions._tcp.example.test": [(0, 0, 1465, "127.0.0.1.")],
}


@pytest.fixture
def serverless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An OAuth server with --allow-user-servers (loopback allowed) whose client brings no servers."""
    # Which clients bring servers is brings_servers' business (tested
    # above); here every client is one that brings none.
    monkeypatch.setattr(_login, "brings_servers", lambda client: False)
    resolver = FakeResolver(LOCAL_SRV, PUBLIC)
    return make_server(tmp_path, resolver=resolver, allow_user_servers=True,
                       user_servers_allow=parse_allow("127.0.0.0/8:*"))


def fields(body: bytes) -> dict[str, str]:
    text = body.decode()
    found = {name: html.unescape(value) for name, value in
             re.findall(r'<input[^>]*?name="([a-z_]+)"[^>]*?value="([^"]*)"', text)}
    for name in ("imap_security", "smtp_security"):
        select = re.search(rf'<select[^>]*name="{name}".*?</select>', text, re.S)
        if select:
            found[name] = re.search(r'<option[^>]*value="([a-z]+)"[^>]*selected', select.group(0)).group(1)
    return found


def test_login_hint_page_is_prefilled_from_srv(serverless: Any) -> None:
    """GET /oauth/authorize?login_hint=EMAIL asks for the servers, prefilled from the domain's SRV records."""
    params = serverless.authorize_params(login_hint="alice@example.test")
    response, body = serverless.request("GET", "/oauth/authorize", params=params)
    assert response.code == 200
    shown = fields(body)
    assert (shown["imap_host"], shown["imap_port"], shown["imap_security"]) == ("127.0.0.1", "1993", "tls")
    assert (shown["smtp_host"], shown["smtp_port"], shown["smtp_security"]) == ("127.0.0.1", "1465", "tls")
    assert shown["email"] == "alice@example.test"
    assert b'class="servers"' not in body  # the fixed-servers line is gone
    assert b'id="discover"' in body


def test_find_my_servers_button_prefills_without_signing_in(serverless: Any) -> None:
    """POST with action=discover re-renders the page with the SRV servers; no login check runs."""
    response, body = serverless.login(extra={"action": "discover", "imap_host": "", "smtp_host": ""})
    assert response.code == 200
    shown = fields(body)
    assert (shown["imap_host"], shown["imap_port"]) == ("127.0.0.1", "1993")
    assert serverless.imap.calls == [] and serverless.smtp.calls == []
    assert b"alice-pw" not in body


def test_login_with_user_servers_checks_and_grants_them(serverless: Any) -> None:
    """The chosen servers are checked and carried into the grant, as a provisioned client's would be."""
    chosen = {"imap_host": "127.0.0.1", "imap_port": "1993", "imap_security": "tls",
              "smtp_host": "127.0.0.1", "smtp_port": "1587", "smtp_security": "starttls"}
    verifier, challenge = pkce()
    params = serverless.authorize_params(code_challenge=challenge)
    response, body = serverless.login(params=params, extra=chosen)
    assert response.code == 303, body
    assert serverless.imap.calls == [("127.0.0.1", 1993, "alice@example.test")]
    assert serverless.smtp.calls == [("127.0.0.1", 1587, "alice@example.test")]
    location = response.headers.getRawHeaders(b"location")[0].decode()
    code = parse_qs(urlsplit(location).query)["code"][0]
    response, tokens = serverless.redeem(code, verifier)
    assert response.code == 200, tokens
    account = serverless.run(serverless.verifier.verify(tokens["access_token"]))
    assert account.imap == MailServer("127.0.0.1", 1993, "tls")
    assert account.smtp == MailServer("127.0.0.1", 1587, "starttls")


def test_user_servers_refused_outside_the_policy(serverless: Any) -> None:
    """A private address not in --user-servers-allow, a bad port or plain security: 400, nothing checked."""
    for bad, message in (
        ({"imap_host": "10.0.0.5"}, b"is not allowed here"),
        ({"imap_host": "internal.example.org"}, b"is not allowed here"),
        ({"imap_port": "70000"}, b"IMAP port"),
        ({"smtp_security": "plain"}, b"SMTP security"),
        ({"imap_host": "bad host!"}, b"does not look like a server name"),
    ):
        form = {"imap_host": "127.0.0.1", "imap_port": "1993", "imap_security": "tls",
                "smtp_host": "127.0.0.1", "smtp_port": "1465", "smtp_security": "tls", **bad}
        response, body = serverless.login(extra=form)
        assert response.code == 400, bad
        assert message in body, (bad, body)
    assert serverless.imap.calls == [] and serverless.smtp.calls == []


def test_provisioned_client_keeps_its_servers(tmp_path: Path) -> None:
    """With --allow-user-servers, a provisioned client's page shows its servers and ignores server fields."""
    server = make_server(tmp_path, resolver=FakeResolver(LOCAL_SRV, PUBLIC), allow_user_servers=True)
    response, body, _, _ = server.get_form(server.authorize_params())
    assert b'id="imap_host"' not in body and b'class="servers"' in body
    response, _ = server.login(extra={"imap_host": "127.0.0.1", "imap_port": "1"})
    assert response.code == 303
    assert server.imap.calls == [("imap.example.test", 993, "alice@example.test")]


def test_without_the_flag_no_server_fields(serverless: Any, tmp_path: Path) -> None:
    """Without --allow-user-servers a server-less client is not asked for servers."""
    server = make_server(tmp_path / "off", resolver=FakeResolver(LOCAL_SRV, PUBLIC))
    response, body = server.request("GET", "/oauth/authorize",
                                    params=server.authorize_params(login_hint="a@example.test"))
    assert response.code == 200
    assert b'id="imap_host"' not in body


def test_srv_lookups_spend_the_address_login_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each lookup costs one of the address's login attempts; past them the page comes unfilled and DNS is not asked."""
    from mailmcp.oauth._throttle import ThrottlePolicy

    monkeypatch.setattr(_login, "brings_servers", lambda client: False)
    resolver = FakeResolver(LOCAL_SRV, PUBLIC)
    server = make_server(tmp_path, policy=ThrottlePolicy(ip_attempts=2), resolver=resolver,
                         allow_user_servers=True)
    shown = []
    for _ in range(3):
        _, body = server.request("GET", "/oauth/authorize",
                                 params=server.authorize_params(login_hint="alice@example.test"))
        shown.append(fields(body)["imap_host"])
    assert shown == ["127.0.0.1", "127.0.0.1", ""]
    assert len([q for q in resolver.queries if q.startswith("_imaps")]) == 2


class _UDPReactor(MemoryReactorClock):
    """A `MemoryReactorClock` that also takes UDP listeners (what a DNS query opens)."""

    def __init__(self) -> None:
        super().__init__()
        self.udp: list[tuple[int, Any]] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> Any:
        self.udp.append((port, protocol))
        transport = _NoSend()
        protocol.makeConnection(transport)
        return transport


class _NoSend:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, address: Any = None) -> None:
        self.sent.append((data, address))

    def stopListening(self) -> None:
        pass


def test_user_server_resolver_runs_on_the_injected_reactor(tmp_path: Path) -> None:
    """
    The SRV lookup of --allow-user-servers opens its UDP socket and arms its
    timeout and resolv.conf re-read on the reactor it is given (not the
    global one); without the option there is no resolver.
    """
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.1\n")
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.1 localhost\n")
    reactor = _UDPReactor()
    config = make_config(tmp_path, allow_user_servers=True)
    resolver = user_server_resolver(config, reactor, bytes(resolv_conf), bytes(hosts_file))
    assert len(reactor.getDelayedCalls()) == 1  # the resolv.conf re-read
    pending = resolver.lookupService("_imaps._tcp.example.test")
    assert len(reactor.udp) == 1
    protocol = reactor.udp[0][1]
    assert protocol.transport.sent[0][1] == ("127.0.0.1", 53)
    assert len(reactor.getDelayedCalls()) == 2  # and the query's timeout
    for step in (1, 3, 11, 45):  # every retry times out on this clock alone
        reactor.advance(step)
    assert len(reactor.udp) == 4
    failure = []
    pending.addErrback(failure.append)
    assert failure and failure[0].check(defer.TimeoutError)
    assert user_server_resolver(make_config(tmp_path), reactor) is None
