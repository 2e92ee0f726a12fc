"""
The root of the HTTP tree.

Each part of the daemon (OAuth, MCP, attachments) is a class with its own
``Klein`` app whose routes carry absolute paths.  `Router` sends each
request to the part that owns its path prefix, so the parts stay independent
and every URL is spelled out once, where it is handled.
"""

from __future__ import annotations

from collections.abc import Sequence

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from ._cors import CORSPolicy
from ._http import json_body


class HealthApp:
    """``GET /health``: cheap liveness answer for load balancers and Docker."""

    app = Klein()

    def __init__(self, base_url: str | None = None) -> None:
        # Only public facts: operators (and the integration tests) can see
        # which base URL a process was configured with.
        self._base_url = base_url

    @app.route("/health", methods=["GET", "HEAD"])
    def health(self, request: IRequest) -> bytes:
        # No version: it only helps an attacker pick exploits (LG-05).
        document = {"status": "ok"}
        if self._base_url is not None:
            document["base_url"] = self._base_url
        body: bytes = json_body(request, 200, document)
        return body


class NotFoundApp:
    app = Klein()

    @app.route("/", branch=True)
    def not_found(self, request: IRequest) -> bytes:
        body: bytes = json_body(request, 404, {"error": "not_found"})
        return body


#: Root paths some clients fall back to (claude.ai builds that ignore the
#: metadata), served by the handler of the path they stand for.
ALIASES: dict[bytes, bytes] = {
    b"/authorize": b"/oauth/authorize",
    b"/token": b"/oauth/token",
    b"/register": b"/oauth/register",
    b"/revoke": b"/oauth/revoke",
}


class Router(Resource):
    """
    Dispatch by path prefix to the parts' Klein resources, which see the
    whole path.  Longest prefix wins; a prefix ending in ``/`` matches that
    folder, any other matches that exact path or ``prefix/...``.

    Paths in `ALIASES` are first rewritten to the path they stand for, so an
    alias answers exactly what its target does, whichever part serves it.
    With a C{cors} policy, CORS preflights of the CORS paths are answered
    here and the other answers there get their CORS headers
    (`mailmcp.web._cors`).
    """

    isLeaf = True

    def __init__(
        self, routes: Sequence[tuple[str, IResource]], cors: CORSPolicy | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._routes = sorted(
            ((p.encode("ascii"), r) for p, r in routes), key=lambda pr: len(pr[0]), reverse=True
        )
        self._fallback = NotFoundApp().app.resource()
        self._cors = cors

    def _pick(self, path: bytes) -> IResource:
        for prefix, resource in self._routes:
            if prefix.endswith(b"/"):
                if path.startswith(prefix):
                    return resource
            elif path == prefix or path.startswith(prefix + b"/"):
                return resource
        return self._fallback

    def render(self, request: IRequest) -> bytes | int:
        path = request.path or b"/"
        target = ALIASES.get(path)
        if target is not None:
            # Klein routes on postpath: point it (and path) at the target.
            request.path = target
            request.postpath = target.split(b"/")[1:]
            path = target
        if self._cors is not None:
            answer = self._cors.handle(request, path)
            if answer is not None:
                return answer
        resource = self._pick(path)
        result: bytes | int = resource.render(request)
        return result if result is not None else NOT_DONE_YET
