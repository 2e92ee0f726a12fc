"""
A socket-free stand-in for a mail provider's token and userinfo endpoints,
served through ``treq.testing.StubTreq`` (a Twisted ``Resource``, no network).
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Request

from mailmcp.provider._client import ProviderClient, ProviderProfile

CLIENT_ID = "mailmcp-client-id"
CLIENT_SECRET = "CANARY-client-secret-7f3e"  # noqa: S105 - a test value


def id_token(claims: dict[str, Any]) -> str:
    """An unsigned JWT (the client never checks the signature of one from the token endpoint)."""

    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return part({"alg": "RS256"}) + "." + part(claims) + ".c2ln"


class FakeProvider(Resource):
    """
    ``/token`` answers the queued responses in order (or a rotating
    refresh); ``/userinfo`` answers C{userinfo}.  Every token request's form
    is kept in C{requests}.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, str]] = []
        self.queued: list[tuple[int, bytes]] = []
        self.userinfo: tuple[int, dict[str, Any]] = (200, {"email": "user@example.test"})
        self.userinfo_auth: list[str] = []
        self.serial = 0

    def render_POST(self, request: Request) -> bytes:
        assert request.path == b"/token"
        assert request.content is not None
        form = {k: v[0] for k, v in parse_qs(request.content.read().decode()).items()}
        self.requests.append(form)
        request.setHeader(b"content-type", b"application/json")
        if self.queued:
            code, body = self.queued.pop(0)
            request.setResponseCode(code)
            return body
        self.serial += 1
        return json.dumps(
            {
                "access_token": f"CANARY-access-{self.serial}",
                "refresh_token": f"CANARY-refresh-{self.serial}",
                "expires_in": 3600,
                "token_type": "Bearer",
                "id_token": id_token({"aud": CLIENT_ID, "email": "user@example.test"}),
            }
        ).encode()

    def render_GET(self, request: Request) -> bytes:
        assert request.path == b"/userinfo"
        self.userinfo_auth.append((request.getHeader(b"authorization") or b"").decode())
        code, body = self.userinfo
        request.setResponseCode(code)
        return json.dumps(body).encode()

    def queue(self, code: int, body: Any) -> None:
        self.queued.append((code, body if isinstance(body, bytes) else json.dumps(body).encode()))


def profile(name: str = "custom", imap_auth: str = "xoauth2") -> ProviderProfile:
    if name != "custom":
        return ProviderProfile.builtin(name, CLIENT_ID, CLIENT_SECRET, imap_auth=imap_auth)
    return ProviderProfile.custom(
        label="Example",
        authorize_url="https://provider.test/authorize",
        token_url="https://provider.test/token",
        scope="openid email mail",
        userinfo_url="https://provider.test/userinfo",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        imap_auth=imap_auth,
    )


def client(fake: FakeProvider, clock: Clock, prof: ProviderProfile | None = None) -> ProviderClient:
    from treq.testing import StubTreq

    return ProviderClient(prof or profile(), StubTreq(fake), clock)
