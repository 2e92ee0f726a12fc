"""
The discovery room: the protected-resource (RFC 9728) and
authorization-server (RFC 8414) metadata documents, at the root and at the
path-inserted locations of a base URL with a path, and the JSON 404 for
everything else under ``/.well-known/`` and ``/oauth/``.

Everything is derived from ``config.base_url``, never from ``Host`` or
``X-Forwarded-*``; the issuer string is identical in both documents and in
the ``iss`` authorization-response parameter.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from .._paths import metadata_paths
from .._scopes import ALL_SCOPES
from ..web._http import json_body
from ._parts import OAuthParts
from ._registration import open_registration


class Discovery:
    """The metadata documents (CORS for browser clients: `mailmcp.web._cors`, in the router)."""

    app = Klein()

    def __init__(self, parts: OAuthParts) -> None:
        self._parts = parts
        self._metadata_paths = {
            path.encode("ascii"): kind
            for path, kind in metadata_paths(parts.config.base_url).items()
        }

    def resource_metadata(self) -> dict[str, Any]:
        return {
            "resource": self._parts.config.mcp_url,
            "authorization_servers": [self._parts.issuer],
            "scopes_supported": list(ALL_SCOPES),
            "bearer_methods_supported": ["header"],
            "resource_name": "Mail MCP",
        }

    def server_metadata(self) -> dict[str, Any]:
        base = self._parts.issuer
        return {
            "issuer": base,
            "authorization_endpoint": base + "/oauth/authorize",
            "token_endpoint": base + "/oauth/token",
            "revocation_endpoint": base + "/oauth/revoke",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "client_secret_basic",
                "none",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_post",
                "client_secret_basic",
                "none",
            ],
            "scopes_supported": list(ALL_SCOPES),
            "authorization_response_iss_parameter_supported": True,
            **self._client_kinds_metadata(),
        }

    def _client_kinds_metadata(self) -> dict[str, Any]:
        """CIMD and DCR, advertised only when clients may come without mail servers."""
        if not open_registration(self._parts.config):
            return {}
        return {
            "client_id_metadata_document_supported": True,
            "registration_endpoint": self._parts.issuer + "/oauth/register",
        }

    def _metadata(self, request: IRequest, document: dict[str, Any]) -> bytes:
        request.setHeader(b"cache-control", b"public, max-age=3600")
        encoded: bytes = json_body(request, 200, document, no_store=False)
        return encoded

    @app.route("/.well-known/oauth-protected-resource", methods=["GET", "HEAD"])
    def prm_root(self, request: IRequest) -> bytes:
        return self._metadata(request, self.resource_metadata())

    @app.route("/.well-known/oauth-protected-resource/mcp", methods=["GET", "HEAD"])
    def prm_mcp(self, request: IRequest) -> bytes:
        return self._metadata(request, self.resource_metadata())

    @app.route("/.well-known/oauth-authorization-server", methods=["GET", "HEAD"])
    def asm(self, request: IRequest) -> bytes:
        return self._metadata(request, self.server_metadata())

    @app.route("/.well-known/", branch=True)
    def well_known_other(self, request: IRequest) -> bytes:
        """The path-inserted metadata locations of a base URL with a path (`mailmcp._paths`)."""
        if request.method in (b"GET", b"HEAD"):
            kind = self._metadata_paths.get(request.path or b"")
            if kind == "resource":
                return self._metadata(request, self.resource_metadata())
            if kind == "server":
                return self._metadata(request, self.server_metadata())
        return not_found(request)

    @app.route("/oauth/", branch=True)
    def oauth_other(self, request: IRequest) -> bytes:
        return not_found(request)


def not_found(request: IRequest) -> bytes:
    encoded: bytes = json_body(request, 404, {"error": "not_found"})
    return encoded
