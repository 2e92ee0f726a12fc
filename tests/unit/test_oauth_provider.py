"""
The harness's test OAuth provider (`tests.oauth_provider`) without sockets:
its Klein app on a `StubTreq`, time from a `Clock`.  The integration side
(Dovecot and Postfix taking its tokens) is in
tests/integration/test_oauth_provider_harness.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from tests.oauth_provider import (
    CLIENT_ID,
    ProviderApp,
    client_secret,
    redirect_uri_allowed,
    s256,
)

CALLBACK = "http://127.0.0.1:5000/oauth/provider/callback"
VERIFIER = "a" * 43
BASE = "http://127.0.0.1:9999"


class Harness:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.provider = ProviderApp(clock=self.clock, issuer=BASE, client_secret="s3cret")
        self.treq = StubTreq(self.provider.app.resource())

    def run(self, d: Deferred[Any]) -> Any:
        out: list[Any] = []
        d.addBoth(out.append)
        self.treq.flush()
        assert out, "no answer"
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def call(self, method: str, path: str, form: dict[str, str] | None = None,
             body: object = None, auth: bool = True) -> tuple[int, dict[str, Any] | str, Any]:
        headers = {}
        data: bytes | None = None
        if form is not None:
            data = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            if auth:
                raw = base64.b64encode(f"{CLIENT_ID}:s3cret".encode()).decode()
                headers["Authorization"] = "Basic " + raw
        elif body is not None:
            data = json.dumps(body).encode()
        response = self.run(self.treq.request(method, BASE + path, data=data, headers=headers,
                                              allow_redirects=False))
        text = self.run(response.text())
        try:
            parsed: dict[str, Any] | str = json.loads(text)
        except ValueError:
            parsed = text
        return response.code, parsed, response.headers

    def code(self, email: str = "u@example.test", verifier: str = VERIFIER) -> str:
        form = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": CALLBACK,
                "state": "s", "code_challenge": s256(verifier), "code_challenge_method": "S256",
                "email": email, "decision": "approve"}
        status, _, headers = self.call("POST", "/authorize", form=form, auth=False)
        assert status == 302
        location = headers.getRawHeaders("location")[0]
        return dict(parse_qsl(urlsplit(location).query))["code"]

    def tokens(self, email: str = "u@example.test") -> dict[str, Any]:
        status, answer, _ = self.call("POST", "/token", form={
            "grant_type": "authorization_code", "code": self.code(email),
            "redirect_uri": CALLBACK, "code_verifier": VERIFIER})
        assert status == 200, answer
        assert isinstance(answer, dict)
        return answer

    def active(self, token: str) -> bool:
        _, answer, _ = self.call("POST", "/introspect", form={"token": token})
        assert isinstance(answer, dict)
        return bool(answer["active"])


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.provider.add_account("u@example.test")
    return harness


def test_pkce_s256_matches_rfc7636_appendix_b() -> None:
    """The S256 challenge of RFC 7636's example verifier is the RFC's."""
    assert s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == (
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")


@pytest.mark.parametrize(("uri", "allowed"), [
    ("http://127.0.0.1:5000/oauth/provider/callback", True),
    ("http://localhost:1/base/path/oauth/provider/callback", True),
    ("http://[::1]:8080/oauth/provider/callback", True),
    ("http://127.0.0.1:5000/oauth/provider/callback?x=1", True),
    ("https://127.0.0.1:5000/oauth/provider/callback", False),
    ("http://example.test/oauth/provider/callback", False),
    ("http://127.0.0.1:5000/oauth/provider/callback/x", False),
    ("http://127.0.0.1:5000/oauth/provider/callback#f", False),
    ("http://user@127.0.0.1:5000/oauth/provider/callback", False),
    ("http://127.0.0.1:99999/oauth/provider/callback", False),
    ("", False),
])
def test_registered_redirect_uris(uri: str, allowed: bool) -> None:
    """Loopback http only, any port and base path, ending in /oauth/provider/callback."""
    assert redirect_uri_allowed(uri) is allowed


def test_access_token_expires_with_the_clock(h: Harness) -> None:
    """An access token is active until its lifetime has passed on the clock, then inactive."""
    tokens = h.tokens()
    assert tokens["expires_in"] == 3600
    h.clock.advance(3599)
    assert h.active(tokens["access_token"])
    h.clock.advance(1)
    assert not h.active(tokens["access_token"])
    assert h.provider.counters["u@example.test"].introspections == 2


def test_lifetime_applies_to_tokens_issued_afterwards(h: Harness) -> None:
    """/admin/lifetime changes new tokens only."""
    old = h.tokens()
    assert h.call("POST", "/admin/lifetime", body={"seconds": 60})[0] == 200
    new = h.tokens()
    assert new["expires_in"] == 60
    h.clock.advance(61)
    assert h.active(old["access_token"]) and not h.active(new["access_token"])


@pytest.mark.parametrize("body", [{"seconds": -1}, {"seconds": "60"}, {"seconds": True}, {}])
def test_admin_lifetime_refuses_bad_values(h: Harness, body: dict[str, Any]) -> None:
    """A bad lifetime is a 400 and changes nothing."""
    status, answer, _ = h.call("POST", "/admin/lifetime", body=body)
    assert status == 400 and isinstance(answer, dict) and answer["error"] == "invalid_request"
    assert h.provider.access_token_lifetime == 3600


def test_codes_expire(h: Harness) -> None:
    """An authorization code is good for ten minutes."""
    code = h.code()
    h.clock.advance(601)
    status, answer, _ = h.call("POST", "/token", form={
        "grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
        "code_verifier": VERIFIER})
    assert status == 400 and isinstance(answer, dict) and answer["error"] == "invalid_grant"


def test_expire_keeps_refresh_working(h: Harness) -> None:
    """/admin/expire ends access tokens now; the refresh token still gets a fresh one."""
    tokens = h.tokens()
    assert h.call("POST", "/admin/expire", body={"email": "u@example.test"})[1] == {"expired": 1}
    assert not h.active(tokens["access_token"])
    status, fresh, _ = h.call("POST", "/token", form={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert status == 200 and isinstance(fresh, dict) and h.active(fresh["access_token"])


def test_revoked_user_can_consent_again(h: Harness) -> None:
    """/admin/revoke kills every token of the user but not the account."""
    first = h.tokens()
    h.call("POST", "/admin/revoke", body={"email": "u@example.test"})
    assert not h.active(first["access_token"])
    status, answer, _ = h.call("POST", "/token", form={
        "grant_type": "refresh_token", "refresh_token": first["refresh_token"]})
    assert (status, answer) == (400, {"error": "invalid_grant", "error_description":
                                      "the refresh token is used, revoked or not yours"})
    assert h.active(h.tokens()["access_token"])


def test_unknown_user_in_admin_calls(h: Harness) -> None:
    """Expiring or revoking an unknown user is a 404; a body that is no object is a 400."""
    assert h.call("POST", "/admin/expire", body={"email": "x@example.test"})[0] == 404
    assert h.call("POST", "/admin/revoke", body={"email": "x@example.test"})[0] == 404
    assert h.call("POST", "/admin/users", body=["x"])[0] == 400
    assert h.call("POST", "/admin/users", body={"email": "no-at-sign"})[0] == 400


def test_admin_is_loopback_only(h: Harness) -> None:
    """An admin call from a non-loopback address is refused."""
    request = DummyRequest([b"admin", b"users"])
    request.method = b"POST"
    request.client = IPv4Address("TCP", "192.0.2.7", 1234)
    body = h.provider.admin_users(request)
    assert request.responseCode == 403
    assert json.loads(body)["error"] == "access_denied"
    assert "x@example.test" not in h.provider.accounts


@pytest.mark.parametrize("header", ["Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                                    "Bearer x"])
def test_malformed_client_authentication(h: Harness, header: str) -> None:
    """Broken Basic credentials (or none) are 401 invalid_client, never a crash."""
    response = h.run(h.treq.post(BASE + "/token", data=b"grant_type=refresh_token&refresh_token=x",
                                 headers={"Authorization": header,
                                          "Content-Type": "application/x-www-form-urlencoded"}))
    assert response.code == 401
    assert json.loads(h.run(response.text()))["error"] == "invalid_client"


def test_unsupported_grant_type(h: Harness) -> None:
    status, answer, _ = h.call("POST", "/token", form={"grant_type": "password"})
    assert status == 400 and isinstance(answer, dict)
    assert answer["error"] == "unsupported_grant_type"


def test_consent_page_escapes_its_input(h: Harness) -> None:
    """login_hint and state are HTML-escaped on the sign-in page."""
    query = urlencode({"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": CALLBACK,
                       "state": "'><script>", "code_challenge": "c",
                       "code_challenge_method": "S256", "login_hint": "<b>x"})
    status, page, _ = h.call("GET", "/authorize?" + query)
    assert status == 200 and isinstance(page, str)
    assert "<script>" not in page and "<b>x" not in page
    assert "&lt;b&gt;x" in page


def test_client_secret_file(tmp_path: Path) -> None:
    """The secret file is made once with mode 0600 and then reused."""
    first = client_secret(tmp_path)
    assert (tmp_path / "client-secret").stat().st_mode & 0o777 == 0o600
    assert client_secret(tmp_path) == first and len(first) >= 32
