"""
The authorization server as rooms (`mailmcp.oauth`): the composing app
sends each (path, method) to the room that declares it and everything
else to the discovery room's JSON 404, as one Klein app did; each surface
maps its errors in one place.  Without sockets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.oauth_helpers import make_server


@pytest.fixture
def server(tmp_path: Path) -> Any:
    return make_server(tmp_path)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "TRACE"])
def test_a_method_no_room_declares_is_the_json_404(server: Any, method: str) -> None:
    """/oauth/authorize and /oauth/register serve only their methods; the rest falls to the JSON 404."""
    for path in ("/oauth/authorize", "/oauth/register", "/oauth/static/login.css"):
        response, body = server.request(method, path)
        assert (response.code, json.loads(body)) == (404, {"error": "not_found"}), path


def test_wrong_method_at_the_token_room_is_its_own_405(server: Any) -> None:
    """The token room declares every method at its paths: GET is its RFC 6749 405, with Allow."""
    for path in ("/oauth/token", "/oauth/revoke"):
        response, body = server.request("GET", path)
        assert response.code == 405
        assert response.headers.getRawHeaders(b"allow") == [b"POST"]
        assert json.loads(body) == {"error": "invalid_request", "error_description": "use POST"}


def test_rooms_route_on_the_decoded_path_as_klein_does(server: Any) -> None:
    """A percent-encoded path reaches the same room Klein would match it to."""
    response, body = server.token({"grant_type": "refresh_token"}, path="/oauth/%74oken")
    assert response.code == 401 and body["error"] == "invalid_client"
    response, body = server.request("GET", "/oauth/token/extra")
    assert (response.code, json.loads(body)) == (404, {"error": "not_found"})


def test_an_unexpected_error_on_the_page_is_the_503_page(server: Any, monkeypatch: Any) -> None:
    """Anything but a page error, on GET as on POST, is logged and shown as 'temporarily unavailable'."""

    async def broken(*args: Any, **kw: Any) -> bytes:
        raise RuntimeError("canary-internal-detail")

    monkeypatch.setattr(server.app.login, "_login_page", broken)
    response, body = server.request("GET", "/oauth/authorize", params=server.authorize_params())
    assert response.code == 503
    assert b"Temporarily unavailable" in body and b"canary" not in body
    assert response.headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    assert response.headers.getRawHeaders(b"cache-control") == [b"no-store"]


def test_the_rooms_share_one_set_of_parts(server: Any) -> None:
    """The audit trail set on the app is the one every room records to."""
    sentinel = object()
    server.app.audit = sentinel
    assert server.app.parts.audit is sentinel
    assert server.app.login._parts is server.app.token._parts is server.app.discovery._parts
