"""The pages' stylesheet, read once (the pages allow no inline style)."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from .._templates import template_path


class Static:
    """``/oauth/static/login.css``."""

    app = Klein()

    def __init__(self) -> None:
        self._css: bytes = template_path("login.css").read_bytes()

    @app.route("/oauth/static/login.css", methods=["GET", "HEAD"])
    def css(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"text/css; charset=utf-8")
        request.setHeader(b"cache-control", b"public, max-age=3600")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self._css
