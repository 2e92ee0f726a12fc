"""
Client ID Metadata Documents (MCP 2025-11-25; what Claude uses first): the
client id is an ``https`` URL whose JSON document lists the client's name
and redirect URIs.

Fetching a URL a stranger chose is a server-side request forgery risk, so
a fetch (`MetadataFetcher`):

  - goes to ``https`` URLs only, and connects only to public addresses:
    the host name is resolved once, *every* address is checked, and the
    connection goes to that checked address (TLS still verifies the host
    name), so a DNS answer that changes between check and connect cannot
    steer it to a private address;
  - never follows a redirect, reads at most `MAX_DOCUMENT` bytes and takes
    at most `FETCH_TIMEOUT` seconds;
  - is cached per ``Cache-Control: max-age`` within [`MIN_CACHE`,
    `MAX_CACHE`], at most `MAX_ENTRIES` documents.

``--client-metadata-allow PREFIX`` lifts the address and scheme rules for
URLs under an operator's prefix (in-house clients, tests on loopback).
Pinned documents (Claude's, which answer data-centre fetches with a bot
challenge, and ``--client-metadata-dir``) are used without any fetch.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from ._clients import Client, MailServer, redirect_uri_matches, validate_redirect_uri

log = Logger()

MAX_DOCUMENT = 5 * 1024
FETCH_TIMEOUT = 5.0
MIN_CACHE = 300
MAX_CACHE = 24 * 3600
MAX_ENTRIES = 1024
FAILURE_CACHE = 30
MAX_URL = 2048
PINNED_DIR = Path(__file__).resolve().parent.parent / "client_metadata"

Resolve = Callable[[str, int], Awaitable[list[str]]]


class ClientMetadataError(Exception):
    """A metadata document that cannot be used; the message is for the error page."""


@attrs.frozen
class ClientMetadata:
    """What a usable document says."""

    client_id: str
    client_name: str | None
    redirect_uris: tuple[str, ...]

    def client(self, imap: MailServer, smtp: MailServer) -> Client:
        return Client(
            client_id=self.client_id,
            imap=imap,
            smtp=smtp,
            redirect_uris=self.redirect_uris,
            secret_hash=None,
            name=self.client_name,
            kind="metadata",
        )


def parse_document(url: str, document: Any) -> ClientMetadata:
    """
    Check a document for client id C{url}: its ``client_id`` must be the
    URL itself, it must list redirect URIs (https, or http on loopback) and
    be a public client (``none``: there is no way to hold its secret).

    :raises ClientMetadataError: saying what is wrong.
    """
    if not isinstance(document, dict):
        raise ClientMetadataError("The client's metadata document is not a JSON object.")
    if document.get("client_id") != url:
        raise ClientMetadataError(
            "The client's metadata document names a different client_id than its own address."
        )
    uris = document.get("redirect_uris")
    if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
        raise ClientMetadataError("The client's metadata document lists no redirect_uris.")
    try:
        checked = tuple(validate_redirect_uri(u) for u in uris)
    except ValueError as e:
        raise ClientMetadataError(f"The client's metadata document: {e}.") from None
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise ClientMetadataError(
            "The client's metadata document asks for token_endpoint_auth_method "
            f"{str(method)[:40]!r}; only 'none' (PKCE) is supported."
        )
    grants = document.get("grant_types", ["authorization_code"])
    if not isinstance(grants, list) or "authorization_code" not in grants:
        raise ClientMetadataError(
            "The client's metadata document does not use the authorization_code grant."
        )
    name = document.get("client_name")
    if not isinstance(name, str) or not name.strip():
        name = None
    else:
        name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:100]
    return ClientMetadata(client_id=url, client_name=name, redirect_uris=checked)


def load_pinned(directories: Iterable[Path]) -> dict[str, ClientMetadata]:
    """Pinned documents by client id; later directories override earlier ones."""
    pinned: dict[str, ClientMetadata] = {}
    for directory in directories:
        for path in sorted(directory.glob("*.json")):
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
                url = document["client_id"]
                pinned[url] = parse_document(url, document)
            except (OSError, ValueError, KeyError, TypeError, ClientMetadataError) as e:
                raise ValueError(f"client metadata document {path} is not usable: {e}") from None
    return pinned


def is_public_address(address: str) -> bool:
    """Globally routable unicast only: no loopback, private, link-local, CGNAT, multicast."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def max_age(cache_control: str | None) -> int:
    """The cache lifetime from Cache-Control, within [MIN_CACHE, MAX_CACHE]."""
    seconds = MIN_CACHE
    if cache_control:
        match = re.search(r"(?:^|[,\s])max-age\s*=\s*\"?(\d{1,10})", cache_control, re.I)
        if match:
            seconds = int(match.group(1))
    return max(MIN_CACHE, min(MAX_CACHE, seconds))


def system_resolver(reactor: Any) -> Resolve:
    """getaddrinfo on the reactor's thread pool (never blocks the reactor)."""

    async def resolve(host: str, port: int) -> list[str]:
        infos = await deferToThreadPool(
            reactor,
            reactor.getThreadPool(),
            socket.getaddrinfo,
            host,
            port,
            0,
            socket.SOCK_STREAM,
        )
        return [str(info[4][0]) for info in infos]

    return resolve


@implementer(IStreamClientEndpoint)
class _CheckedEndpoint:
    """Resolve, check every address, connect to the checked one (TLS by host name)."""

    def __init__(
        self,
        reactor: Any,
        resolve: Resolve,
        scheme: bytes,
        host: str,
        port: int,
        checked: bool,
        trust_root: Any = None,
    ) -> None:
        self._trust_root = trust_root
        self._reactor = reactor
        self._resolve = resolve
        self._scheme = scheme
        self._host = host
        self._port = port
        self._checked = checked

    def connect(self, factory: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        try:
            addresses = await self._resolve(self._host, self._port)
        except OSError:
            raise ClientMetadataError("The client's metadata host name does not resolve.") from None
        if not addresses:
            raise ClientMetadataError("The client's metadata host name does not resolve.")
        if self._checked and not all(is_public_address(a) for a in addresses):
            raise ClientMetadataError(
                "The client's metadata address is not a public internet address."
            )
        address = addresses[0]
        endpoint: Any
        if ":" in address:
            endpoint = TCP6ClientEndpoint(self._reactor, address, self._port, timeout=FETCH_TIMEOUT)
        else:
            endpoint = TCP4ClientEndpoint(self._reactor, address, self._port, timeout=FETCH_TIMEOUT)
        if self._scheme == b"https":
            options = optionsForClientTLS(self._host, trustRoot=self._trust_root)
            endpoint = wrapClientTLS(options, endpoint)
        return await endpoint.connect(factory)


@implementer(IAgentEndpointFactory)
class _CheckedEndpoints:
    def __init__(
        self, reactor: Any, resolve: Resolve, checked: bool, trust_root: Any = None
    ) -> None:
        self._trust_root = trust_root
        self._reactor = reactor
        self._resolve = resolve
        self._checked = checked

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("idna").strip("[]")
        return _CheckedEndpoint(
            self._reactor,
            self._resolve,
            uri.scheme,
            host,
            uri.port,
            self._checked,
            self._trust_root,
        )


class _TooLarge(Exception):
    pass


class MetadataFetcher:
    """
    One bounded GET of a metadata document (see the module docstring).

    :param resolve: host name to addresses (default: getaddrinfo off the reactor).
    :param trust_root: CAs for https (default: the platform's; tests pass theirs).
    """

    def __init__(
        self, reactor: Any, resolve: Resolve | None = None, trust_root: Any = None
    ) -> None:
        self._trust_root = trust_root
        self._reactor = reactor
        self._resolve = resolve or system_resolver(reactor)

    def fetch(self, url: str, checked: bool) -> Deferred[tuple[Any, int]]:
        """Fire with (the parsed JSON, cache seconds); fail with ClientMetadataError."""
        d = Deferred.fromCoroutine(self._fetch(url, checked))
        d.addTimeout(FETCH_TIMEOUT, self._reactor)
        return d

    async def _fetch(self, url: str, checked: bool) -> tuple[Any, int]:
        agent = Agent.usingEndpointFactory(
            self._reactor,
            _CheckedEndpoints(self._reactor, self._resolve, checked, self._trust_root),
        )
        http = HTTPClient(agent)
        response = await http.get(
            url,
            headers=Headers({b"accept": [b"application/json"], b"user-agent": [b"mailmcp"]}),
            allow_redirects=False,
        )
        if 300 <= response.code < 400:
            response.original.deliverBody(_Discard())
            raise ClientMetadataError(
                "The client's metadata address answered with a redirect; redirects are not followed."
            )
        if response.code != 200:
            response.original.deliverBody(_Discard())
            raise ClientMetadataError(
                f"The client's metadata address answered HTTP {response.code}."
            )
        length = response.original.length
        if isinstance(length, int) and length > MAX_DOCUMENT:
            response.original.deliverBody(_Discard())
            raise ClientMetadataError("The client's metadata document is too large.")
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > MAX_DOCUMENT:
                raise _TooLarge()
            chunks.append(data)

        try:
            await treq.collect(response, collect)
        except _TooLarge:
            raise ClientMetadataError("The client's metadata document is too large.") from None
        try:
            document = json.loads(b"".join(chunks).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ClientMetadataError("The client's metadata document is not JSON.") from None
        cache_control = response.headers.getRawHeaders(b"cache-control", [b""])[0]
        return document, max_age(cache_control.decode("latin-1"))


class _Discard:
    """Read and drop a body we will not use, so the connection closes cleanly."""

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


class ClientMetadataResolver:
    """
    Client id URL → `ClientMetadata`: pinned documents first, then the
    cache, then one bounded fetch.

    :param allow: operator URL prefixes exempt from the address rules.
    """

    def __init__(
        self,
        clock: Any,
        fetcher: MetadataFetcher,
        pinned: dict[str, ClientMetadata],
        allow: Iterable[str] = (),
    ) -> None:
        self._clock = clock
        self._fetcher = fetcher
        self._pinned = pinned
        self._allow = tuple(allow)
        self._cache: OrderedDict[str, tuple[float, ClientMetadata]] = OrderedDict()
        #: Recent failures, so a page reloaded (or a URL sent on purpose again
        #: and again) does not make us fetch it again for a while.
        self._failed: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._inflight: dict[str, list[Deferred[ClientMetadata]]] = {}

    def is_metadata_url(self, client_id: str) -> bool:
        """Whether C{client_id} names a document (rather than a client we issued)."""
        return (
            client_id.startswith("https://")
            or client_id in self._pinned
            or self._allowed(client_id)
        )

    def _allowed(self, url: str) -> bool:
        return any(url.startswith(prefix) for prefix in self._allow)

    async def resolve(self, url: str) -> ClientMetadata:
        """:raises ClientMetadataError: saying why this client cannot be used."""
        pinned = self._pinned.get(url)
        if pinned is not None:
            return pinned
        now = self._clock.seconds()
        cached = self._cache.get(url)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(url)
            return cached[1]
        failed = self._failed.get(url)
        if failed is not None and failed[0] > now:
            raise ClientMetadataError(failed[1])
        try:
            metadata = await self._shared_fetch(url)
        except ClientMetadataError as e:
            self._failed[url] = (now + FAILURE_CACHE, str(e))
            self._failed.move_to_end(url)
            while len(self._failed) > MAX_ENTRIES:
                self._failed.popitem(last=False)
            raise
        self._failed.pop(url, None)
        return metadata

    async def _shared_fetch(self, url: str) -> ClientMetadata:
        """One fetch per URL at a time: concurrent requests for it wait for that one."""
        waiters = self._inflight.get(url)
        if waiters is not None:
            waiter: Deferred[ClientMetadata] = Deferred()
            waiters.append(waiter)
            return await waiter
        self._inflight[url] = waiters = []
        try:
            metadata = await self._fetch(url)
        except BaseException:
            failure = Failure()
            del self._inflight[url]
            for waiter in waiters:
                waiter.errback(failure)
            raise
        del self._inflight[url]
        for waiter in waiters:
            waiter.callback(metadata)
        return metadata

    async def _fetch(self, url: str) -> ClientMetadata:
        now = self._clock.seconds()
        allowed = self._allowed(url)
        parts = urlsplit(url)
        if len(url) > MAX_URL or parts.fragment or parts.username or parts.password:
            raise ClientMetadataError("The client's metadata address is not a usable URL.")
        if not allowed:
            if parts.scheme != "https" or not parts.hostname or parts.path in ("", "/"):
                raise ClientMetadataError(
                    "The client's metadata address must be an https URL with a path."
                )
        try:
            document, seconds = await self._fetcher.fetch(url, checked=not allowed)
        except ClientMetadataError:
            raise
        except Exception as e:
            log.info(
                "client metadata {url} not fetched: {why}", url=url[:200], why=type(e).__name__
            )
            raise ClientMetadataError(
                "The client's metadata document could not be fetched in time."
            ) from None
        metadata = parse_document(url, document)
        self._cache[url] = (now + seconds, metadata)
        self._cache.move_to_end(url)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)
        return metadata


def allows_redirect(metadata: ClientMetadata, redirect_uri: str) -> bool:
    return any(redirect_uri_matches(r, redirect_uri) for r in metadata.redirect_uris)
