"""
CORS for browser-based MCP clients (the MCP Inspector's direct mode).

One policy for every path a browser client calls itself: ``/mcp``, the
metadata documents, the token, revocation and registration endpoints.  The
login page and the rest never answer CORS.  Only the origins the operator
allowed (``--allowed-origins``, plus the base URL's own) are answered, each
by echoing it -- never ``*`` -- so a page elsewhere cannot read a token
answer or call ``/mcp`` with a token it stole.  ``Vary: Origin`` is on every
answer of these paths, as caches must keep the variants apart.

Preflights (``OPTIONS`` with ``Access-Control-Request-Method``) are answered
here, before any token is looked at: a browser never sends credentials on a
preflight.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import attrs
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ._http import json_body

log = Logger()

#: Response headers a browser client must be able to read: the 401
#: challenge (where to log in) and the MCP transport's headers.
EXPOSED_HEADERS = b"WWW-Authenticate, Mcp-Session-Id, MCP-Protocol-Version"


def origin_of(url: str) -> str | None:
    """
    The serialised origin (RFC 6454) of C{url}: lower-case scheme and host,
    port only when it is not the scheme's default; L{None} if it has none.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host += f":{port}"
    return f"{scheme}://{host}"


@attrs.frozen
class CORSRule:
    """What a preflight for one path may ask for."""

    methods: bytes
    headers: bytes


_METADATA = CORSRule(b"GET, HEAD", b"mcp-protocol-version")
_OAUTH_POST = CORSRule(b"POST", b"authorization, content-type, accept, mcp-protocol-version")
_MCP = CORSRule(
    b"GET, POST, DELETE",
    b"authorization, content-type, accept, mcp-protocol-version, mcp-session-id, "
    b"mcp-method, mcp-name, last-event-id",
)

#: Local paths (exact, or a prefix when ending in ``/``) with CORS.
CORS_PATHS: dict[bytes, CORSRule] = {
    b"/mcp": _MCP,
    b"/.well-known/": _METADATA,
    b"/oauth/token": _OAUTH_POST,
    b"/oauth/revoke": _OAUTH_POST,
    b"/oauth/register": _OAUTH_POST,
}


def rule_for(path: bytes) -> CORSRule | None:
    for prefix, rule in CORS_PATHS.items():
        if path == prefix or (prefix.endswith(b"/") and path.startswith(prefix)):
            return rule
    return None


class CORSPolicy:
    """
    Which origins may call the CORS paths, and the headers that say so.

    :param origins: URLs or origins (``https://inspector.example``); each
        is reduced to its RFC 6454 origin, anything unusable is dropped.
    """

    def __init__(self, origins: Iterable[str]) -> None:
        allowed: set[str] = set()
        for candidate in origins:
            origin = origin_of(candidate)
            if origin is not None:
                allowed.add(origin)
        self.origins = frozenset(allowed)

    @classmethod
    def from_config(cls, config: object) -> CORSPolicy:
        """The base URL's origin and ``--allowed-origins``."""
        base = str(getattr(config, "base_url", ""))
        return cls((base, *tuple(getattr(config, "allowed_origins", ()))))

    def allows(self, origin: str) -> bool:
        serialised = origin_of(origin)
        return serialised is not None and serialised in self.origins

    def allowed_origin(self, request: IRequest) -> bytes | None:
        """The request's single ``Origin`` if allowed, as sent; else None."""
        values = request.requestHeaders.getRawHeaders(b"origin") or []
        if len(values) != 1:
            return None
        try:
            text = values[0].decode("ascii")
        except UnicodeDecodeError:
            return None
        # Echo the origin exactly as the browser serialises it.
        return values[0] if self.allows(text) and origin_of(text) == text else None

    def annotate(self, request: IRequest) -> None:
        """Headers for an actual (non-preflight) request's answer."""
        request.responseHeaders.addRawHeader(b"vary", b"Origin")
        origin = self.allowed_origin(request)
        if origin is None:
            return
        request.setHeader(b"access-control-allow-origin", origin)
        request.setHeader(b"access-control-expose-headers", EXPOSED_HEADERS)

    def preflight(self, request: IRequest, rule: CORSRule) -> bytes:
        """
        The answer to a preflight: 204 with the rule's methods and headers
        for an allowed origin; 403 without any CORS header otherwise (the
        browser then refuses the real request).
        """
        request.responseHeaders.addRawHeader(b"vary", b"Origin")
        origin = self.allowed_origin(request)
        if origin is None:
            log.info("refused a CORS preflight from an origin that is not allowed")
            return bytes(json_body(request, 403, {"error": "origin_not_allowed"}))
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-origin", origin)
        request.setHeader(b"access-control-allow-methods", rule.methods)
        request.setHeader(b"access-control-allow-headers", rule.headers)
        request.setHeader(b"access-control-max-age", b"600")
        request.setHeader(b"cache-control", b"no-store")
        return b""

    def handle(self, request: IRequest, path: bytes) -> bytes | None:
        """
        For a request to local C{path}: the whole answer if it is a
        preflight of a CORS path, else None after adding the CORS headers
        its answer needs (none off the CORS paths).
        """
        rule = rule_for(path)
        if rule is None:
            return None
        if request.method == b"OPTIONS" and request.requestHeaders.hasHeader(
            b"access-control-request-method"
        ):
            return self.preflight(request, rule)
        self.annotate(request)
        return None
