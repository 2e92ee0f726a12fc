"""
The metadata fetcher on real loopback sockets: it connects to the address
it checked, with TLS verifying the URL's host name (SNI), refuses before
connecting when any resolved address is private, and never follows a
redirect.  Host names are resolved by a stand-in resolver (there is no
public DNS here); the TLS server has the test CA's certificate for
``other.example.test``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from service_identity import VerificationError
from twisted.internet import reactor as _reactor
from twisted.internet import ssl
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Site

from mailmcp.oauth._cimd import ClientMetadataError, MetadataFetcher

pytestmark = pytest.mark.integration
reactor: Any = _reactor


class Doc(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[bytes] = []

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        self.requests.append(request.path)
        if request.path == b"/moved.json":
            request.setResponseCode(302)
            request.setHeader(b"location", b"/c.json")
            return b""
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"public, max-age=7200")
        return json.dumps({"client_id": "x"}).encode()


@pytest.fixture
def tls_server(services: Any) -> Any:
    svc = services.svc
    key = (svc / "other-key.pem").read_text()
    cert = (svc / "other-cert.pem").read_text()
    options = ssl.PrivateCertificate.loadPEM(key + cert).options()
    doc = Doc()
    factory = Site(doc)
    connections: list[Any] = []
    build = factory.buildProtocol

    def counting(addr: Any) -> Any:
        connections.append(addr)
        return build(addr)

    factory.buildProtocol = counting  # type: ignore[method-assign]
    port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
    trust = ssl.Certificate.loadPEM((svc / "ca.pem").read_text())
    yield port.getHost().port, doc, connections, trust
    pytest_twisted.blockon(port.stopListening())


def resolver(table: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


@pytest_twisted.ensureDeferred
async def test_fetch_connects_to_the_resolved_address_with_host_name_tls(tls_server: Any) -> None:
    """The document comes over TLS from the resolved (loopback) address, the certificate checked for the URL's host; max-age is read."""
    port, doc, connections, trust = tls_server
    fetcher = MetadataFetcher(reactor, resolver({"other.example.test": ["127.0.0.1"]}), trust)
    document, seconds = await fetcher.fetch(
        f"https://other.example.test:{port}/c.json", checked=False
    )
    assert document == {"client_id": "x"} and seconds == 7200
    assert doc.requests == [b"/c.json"]


@pytest_twisted.ensureDeferred
async def test_fetch_verifies_the_host_name(tls_server: Any) -> None:
    """The same address under another name fails TLS (certificate is for other.example.test): nothing is read."""
    port, doc, connections, trust = tls_server
    fetcher = MetadataFetcher(reactor, resolver({"wrong.example.test": ["127.0.0.1"]}), trust)
    with pytest.raises(ResponseNeverReceived) as failed:
        await fetcher.fetch(f"https://wrong.example.test:{port}/c.json", checked=False)
    assert any(reason.check(VerificationError) for reason in failed.value.reasons)
    assert doc.requests == []


@pytest_twisted.ensureDeferred
async def test_any_private_address_refuses_before_connecting(tls_server: Any) -> None:
    """OA-41: one private address among public ones refuses the fetch, and no connection is made."""
    port, doc, connections, trust = tls_server
    table = {
        "other.example.test": ["93.184.216.34", "127.0.0.1"],
        "rebind.example.test": ["10.0.0.7"],
    }
    fetcher = MetadataFetcher(reactor, resolver(table), trust)
    for host in table:
        with pytest.raises(ClientMetadataError, match="not a public internet address"):
            await fetcher.fetch(f"https://{host}:{port}/c.json", checked=True)
    assert connections == [] and doc.requests == []


@pytest_twisted.ensureDeferred
async def test_redirects_are_not_followed(tls_server: Any) -> None:
    """OA-42: a 302 is an error; its target is never requested."""
    port, doc, connections, trust = tls_server
    fetcher = MetadataFetcher(reactor, resolver({"other.example.test": ["127.0.0.1"]}), trust)
    with pytest.raises(ClientMetadataError, match="redirect"):
        await fetcher.fetch(f"https://other.example.test:{port}/moved.json", checked=False)
    assert doc.requests == [b"/moved.json"]
