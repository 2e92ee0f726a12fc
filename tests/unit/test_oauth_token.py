"""
``/oauth/token``, ``/oauth/revoke`` and the access-token verifier, without
sockets.  Case ids (OT-xx, TK-xx) refer to docs/threat-model.rst.
"""

from __future__ import annotations

import base64
import hmac
import json
from pathlib import Path

import pytest

from mailmcp.oauth import _grants
from mailmcp.oauth._tokens import InvalidToken
from tests.unit.oauth_helpers import BASE, LOOPBACK, REDIRECT, make_server, pkce


@pytest.fixture
def server(tmp_path: Path):
    return make_server(tmp_path)


def is_dead(server, access_token: str) -> bool:
    try:
        server.account(access_token)
    except InvalidToken:
        return True
    return False


def test_code_flow_client_secret_post(server) -> None:
    """authorization_code with client_secret_post gives Bearer tokens with no-store headers (OT-17)."""
    code, verifier = server.code_for()
    response, body = server.redeem(code, verifier)
    assert response.code == 200
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "mail.read mail.organize mail.draft mail.send mail.delete"
    assert body["expires_in"] == server.config.access_token_lifetime
    assert response.headers.getRawHeaders(b"cache-control") == [b"no-store"]
    assert response.headers.getRawHeaders(b"pragma") == [b"no-cache"]
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    account = server.account(body["access_token"])
    assert account.imap_username == "alice@example.test"
    assert account.imap_password == "alice-pw"
    assert account.smtp_password == "alice-pw"
    assert account.imap.host == "imap.example.test"
    assert account.full_name == "Alice Example"


def test_code_flow_client_secret_basic(server) -> None:
    """client_secret_basic is accepted."""
    code, verifier = server.code_for()
    response, body = server.redeem(code, verifier, client_id=None, client_secret=None)
    assert response.code == 401
    response, body = server.token(
        {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
         "redirect_uri": "https://app.example/cb"},
        auth=(server.client_id, server.client_secret),
    )
    assert response.code == 200, body


def test_public_client_none_auth(server) -> None:
    """A public client authenticates with its client_id only (PKCE protects the code)."""
    server.client_id, server.client_secret = server.public_id, ""
    code, verifier = server.code_for(redirect_uri=LOOPBACK)
    response, body = server.redeem(code, verifier, client_secret=None, redirect_uri=LOOPBACK)
    assert response.code == 200, body
    response, body = server.refresh(body["refresh_token"], client_secret=None)
    assert response.code == 200, body


def test_public_client_with_secret_refused(server) -> None:
    """A public client presenting a secret is invalid_client."""
    server.client_id, server.client_secret = server.public_id, ""
    code, verifier = server.code_for()
    response, body = server.redeem(code, verifier, client_secret="something")
    assert response.code == 401 and body["error"] == "invalid_client"


@pytest.mark.parametrize("basic", [False, True])
def test_wrong_secret(server, basic, monkeypatch) -> None:
    """OT-03: a wrong secret (differing in the last byte) is 401 invalid_client, compared in constant time."""
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("mailmcp.oauth._clients.hmac.compare_digest", spy)
    code, verifier = server.code_for()
    wrong = server.client_secret[:-1] + ("A" if server.client_secret[-1] != "A" else "B")
    if basic:
        response, body = server.token(
            {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
             "redirect_uri": "https://app.example/cb"}, auth=(server.client_id, wrong))
        assert response.headers.getRawHeaders(b"www-authenticate") == [b'Basic realm="mailmcp"']
    else:
        response, body = server.redeem(code, verifier, client_secret=wrong)
    assert response.code == 401 and body["error"] == "invalid_client"
    assert calls
    # The code was not consumed by the failed attempt.
    assert server.redeem(code, verifier)[0].code == 200


def test_confidential_client_without_secret(server) -> None:
    """A confidential client must authenticate."""
    code, verifier = server.code_for()
    response, body = server.redeem(code, verifier, client_secret=None)
    assert response.code == 401 and body["error"] == "invalid_client"


def test_both_auth_methods_refused(server) -> None:
    """Basic and client_secret in the body at once is invalid_request."""
    code, verifier = server.code_for()
    response, body = server.token(
        {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
         "redirect_uri": "https://app.example/cb", "client_secret": server.client_secret},
        auth=(server.client_id, server.client_secret))
    assert response.code == 400 and body["error"] == "invalid_request"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method(server, method) -> None:
    """OT-01: only POST."""
    response, body = server.request(method, "/oauth/token")
    assert response.code == 405
    assert json.loads(body)["error"] == "invalid_request"


def test_query_string_refused(server) -> None:
    """OT-02: parameters in the URL query are refused, even with a valid body."""
    code, verifier = server.code_for()
    response, body = server.token(
        {"grant_type": "authorization_code", "code": code, "code_verifier": verifier,
         "redirect_uri": "https://app.example/cb", "client_id": server.client_id},
        path="/oauth/token?client_secret=" + server.client_secret)
    assert response.code == 400 and body["error"] == "invalid_request"
    assert "query" in body["error_description"]


def test_code_replay_revokes_first_tokens(server) -> None:
    """OT-04: a code redeemed twice fails the second time and kills what the first produced."""
    code, verifier = server.code_for()
    first = server.redeem(code, verifier)[1]
    assert not is_dead(server, first["access_token"])
    response, body = server.redeem(code, verifier)
    assert response.code == 400 and body["error"] == "invalid_grant"
    assert is_dead(server, first["access_token"])
    assert server.refresh(first["refresh_token"])[1]["error"] == "invalid_grant"


def test_code_replay_with_wrong_verifier_does_not_revoke(server) -> None:
    """OT-05: a replay with the wrong verifier fails without revoking (no DoS by a code thief)."""
    code, verifier = server.code_for()
    first = server.redeem(code, verifier)[1]
    other, _ = pkce()
    response, body = server.redeem(code, other)
    assert body["error"] == "invalid_grant"
    assert not is_dead(server, first["access_token"])


@pytest.mark.parametrize("bad,error", [
    ("WRONG", "invalid_grant"),
    ("a" * 42, "invalid_request"),
    ("a" * 129, "invalid_request"),
    ("a+" * 30, "invalid_request"),
    (None, "invalid_request"),
])
def test_bad_verifier(server, bad, error) -> None:
    """OT-06: wrong or malformed verifiers fail."""
    code, verifier = server.code_for()
    if bad == "WRONG":
        bad = pkce()[0]
    response, body = server.redeem(code, bad)
    assert response.code == 400 and body["error"] == error


@pytest.mark.parametrize("redirect_uri", [None, "https://claude.ai/api/mcp/auth_callback", "https://app.example/cb/"])
def test_redirect_uri_must_match(server, redirect_uri) -> None:
    """OT-08: redirect_uri missing or different from the authorization request is invalid_grant."""
    code, verifier = server.code_for()
    response, body = server.redeem(code, verifier, redirect_uri=redirect_uri)
    assert body["error"] == "invalid_grant"


def test_code_bound_to_client(server) -> None:
    """OT-09: a code issued to client A cannot be redeemed by client B."""
    code, verifier = server.code_for()
    response, body = server.redeem(code, verifier, client_id=server.public_id, client_secret=None)
    assert response.code == 400 and body["error"] == "invalid_grant"


@pytest.mark.parametrize("grant_type,error", [
    ("password", "unsupported_grant_type"),
    ("client_credentials", "unsupported_grant_type"),
    (None, "invalid_request"),
])
def test_grant_types(server, grant_type, error) -> None:
    """OT-10: only authorization_code and refresh_token."""
    response, body = server.token({k: v for k, v in {
        "grant_type": grant_type, "client_id": server.client_id,
        "client_secret": server.client_secret}.items() if v is not None})
    assert body["error"] == error


def test_duplicated_parameter(server) -> None:
    """OT-10: a repeated grant_type is invalid_request."""
    response, body = server.token([("grant_type", "refresh_token"), ("grant_type", "password"),
                                   ("client_id", server.client_id)])
    assert body["error"] == "invalid_request"


def test_expired_code(server) -> None:
    """OT-11: a code presented after its lifetime is invalid_grant."""
    code, verifier = server.code_for()
    server.clock.advance(server.config.code_lifetime + 1)
    response, body = server.redeem(code, verifier)
    assert body["error"] == "invalid_grant"


def test_refresh_rotation_and_reuse_revokes_family(server) -> None:
    """
    OT-12: each refresh token rotates once; reusing an older one (here two
    generations back, past the previous token's grace) revokes the whole family.
    """
    first = server.tokens()
    response, second = server.refresh(first["refresh_token"])
    assert response.code == 200
    assert second["refresh_token"] != first["refresh_token"]
    response, third = server.refresh(second["refresh_token"])
    assert response.code == 200
    response, body = server.refresh(first["refresh_token"])
    assert body["error"] == "invalid_grant"
    assert is_dead(server, third["access_token"])
    assert server.refresh(third["refresh_token"])[1]["error"] == "invalid_grant"


def test_refresh_bound_to_client(server) -> None:
    """OT-13: another client cannot use the refresh token (and it stays valid for its owner)."""
    first = server.tokens()
    response, body = server.refresh(first["refresh_token"], client_id=server.public_id, client_secret=None)
    assert body["error"] == "invalid_grant"
    assert server.refresh(first["refresh_token"])[0].code == 200


def test_refresh_absolute_cap(server) -> None:
    """OT-14: past the absolute lifetime from login, refresh fails and the user signs in again."""
    tokens = server.tokens()
    lifetime = server.config.refresh_token_lifetime
    for _ in range(3):
        server.clock.advance(lifetime // 4)
        response, tokens = server.refresh(tokens["refresh_token"])
        assert response.code == 200
        assert tokens["expires_in"] <= server.config.access_token_lifetime
    server.clock.advance(lifetime // 4 + 1)
    response, body = server.refresh(tokens["refresh_token"])
    assert body["error"] == "invalid_grant"


def test_access_token_expires(server) -> None:
    """An access token dies after its lifetime."""
    tokens = server.tokens()
    server.clock.advance(server.config.access_token_lifetime + 1)
    assert is_dead(server, tokens["access_token"])


def test_revoke_refresh_token(server) -> None:
    """OT-15: revoking a refresh token kills its family; unknown tokens are 200; foreign clients have no effect."""
    tokens = server.tokens()
    response, body = server.token({"token": "garbage", "client_id": server.client_id,
                                   "client_secret": server.client_secret}, path="/oauth/revoke")
    assert response.code == 200
    response, body = server.token({"token": tokens["refresh_token"], "client_id": server.public_id},
                                  path="/oauth/revoke")
    assert response.code == 200
    assert not is_dead(server, tokens["access_token"])
    response, body = server.token({"token": tokens["refresh_token"], "client_id": server.client_id,
                                   "client_secret": server.client_secret}, path="/oauth/revoke")
    assert response.code == 200
    assert is_dead(server, tokens["access_token"])
    assert server.refresh(tokens["refresh_token"])[1]["error"] == "invalid_grant"


def test_revoke_access_token(server) -> None:
    """Revoking an access token revokes its grant."""
    tokens = server.tokens()
    response, _ = server.token({"token": tokens["access_token"], "client_id": server.client_id,
                                "client_secret": server.client_secret}, path="/oauth/revoke")
    assert response.code == 200
    assert is_dead(server, tokens["access_token"])


def test_revoke_requires_client_auth(server) -> None:
    """Revocation authenticates the client."""
    tokens = server.tokens()
    response, body = server.token({"token": tokens["refresh_token"], "client_id": server.client_id,
                                   "client_secret": "wrong"}, path="/oauth/revoke")
    assert response.code == 401 and body["error"] == "invalid_client"
    assert not is_dead(server, tokens["access_token"])


def test_foreign_audience_refused(server) -> None:
    """OT-16: an access token for another resource is refused by the verifier."""
    tokens = server.tokens()
    claims = server.codec.open("access", tokens["access_token"])
    claims["aud"] = "https://other.example/mcp"
    for key in ("typ", "iat", "exp"):
        claims.pop(key)
    forged = server.codec.seal("access", claims, 3600)
    assert is_dead(server, forged)


def test_body_too_large(server) -> None:
    """OT-18: a token request body over 8 KiB is refused with 413."""
    response, body = server.token({"grant_type": "refresh_token", "refresh_token": "x" * 9000,
                                   "client_id": server.client_id})
    assert response.code == 413


def test_wrong_content_type(server) -> None:
    """JSON bodies are refused: the token endpoint takes form encoding."""
    response, body = server.request("POST", "/oauth/token", data=b'{"grant_type":"refresh_token"}',
                                    headers={"Content-Type": "application/json"})
    assert response.code == 400 and json.loads(body)["error"] == "invalid_request"


def test_type_confusion(server) -> None:
    """TK-05: a code, refresh token or client id is not an access token, and an access token is not a refresh token."""
    tokens = server.tokens()
    code, _ = server.code_for()
    for token in (code, tokens["refresh_token"], server.client_id):
        assert is_dead(server, token)
    assert server.refresh(tokens["access_token"])[1]["error"] == "invalid_grant"


@pytest.mark.parametrize("token", ["", "Bearer", "a.b.c.d.e", "x" * 5000,
                                   "eyJhbGciOiJQQkVTMi1IUzI1NitBMTI4S1ciLCJlbmMiOiJBMTI4R0NNIn0....."])
def test_garbage_access_tokens(server, token) -> None:
    """TK-01/TK-04: garbage and foreign-algorithm tokens are invalid_token, never a crash."""
    assert is_dead(server, token)


def test_tampered_access_token(server) -> None:
    """TK-06: one flipped bit in the tag kills the token."""
    tokens = server.tokens()
    parts = tokens["access_token"].split(".")
    tag = bytearray(base64.urlsafe_b64decode(parts[4] + "=="))
    tag[0] ^= 1
    parts[4] = base64.urlsafe_b64encode(bytes(tag)).rstrip(b"=").decode()
    assert is_dead(server, ".".join(parts))


def test_token_carries_key_not_password(server) -> None:
    """Split knowledge: tokens carry the grant key, never the password; the row never holds the key."""
    tokens = server.tokens()
    for kind, token in (("access", tokens["access_token"]), ("refresh", tokens["refresh_token"])):
        claims = server.codec.open(kind, token)
        assert "alice-pw" not in json.dumps(claims)
        key = base64.urlsafe_b64decode(claims["k"] + "==")
        (record,) = server.store.grants.values()
        assert key not in record.sealed


def test_wrong_grant_key_cannot_open_row(server) -> None:
    """A token naming a real grant with a wrong key is refused (the key is what unlocks the row)."""
    tokens = server.tokens()
    claims = server.codec.open("access", tokens["access_token"])
    claims["k"] = base64.urlsafe_b64encode(b"\x00" * 32).rstrip(b"=").decode()
    for key in ("typ", "iat", "exp"):
        claims.pop(key)
    assert is_dead(server, server.codec.seal("access", claims, 3600))


def test_credentials_repr_redacted() -> None:
    """LG-03: the credentials value never shows the password in its repr."""
    from mailmcp.oauth._clients import MailServer

    creds = _grants.Credentials("a@b", "A", MailServer("h", 993, "tls"), "a@b", "SECRET-PW",
                                MailServer("h", 465, "tls"), "a@b", "SECRET-PW")
    assert "SECRET-PW" not in repr(creds)


def test_issuer_in_metadata_equals_iss(server) -> None:
    """The iss parameter equals the metadata issuer byte for byte."""
    response, _ = server.login()
    location = response.headers.getRawHeaders(b"location")[0].decode()
    assert location.endswith("&iss=" + BASE.replace(":", "%3A").replace("/", "%2F"))


def test_token_endpoint_cors_preflight(tmp_path: Path) -> None:
    """
    Browser-based clients (the Inspector) from an --allowed-origins origin may
    call the token endpoint: the preflight is answered and the answer carries
    that origin, echoed (never *), with Vary: Origin; other origins get no
    CORS header.
    """
    inspector = "http://localhost:6274"
    server = make_server(tmp_path, allowed_origins=(inspector,))
    for path in ("/oauth/token", "/token", "/oauth/revoke"):
        response, _ = server.request("OPTIONS", path, headers={
            "Origin": inspector, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert response.code == 204, path
        assert response.headers.getRawHeaders(b"access-control-allow-origin") == [inspector.encode()]
        assert b"authorization" in response.headers.getRawHeaders(b"access-control-allow-headers")[0]
        assert b"POST" in response.headers.getRawHeaders(b"access-control-allow-methods")[0]
        assert response.headers.getRawHeaders(b"vary") == [b"Origin"]
    code, verifier = server.code_for()
    response, _ = server.token({
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
        "redirect_uri": REDIRECT, "client_id": server.client_id,
        "client_secret": server.client_secret}, path="/token", headers={"Origin": inspector})
    assert response.code == 200
    assert response.headers.getRawHeaders(b"access-control-allow-origin") == [inspector.encode()]
    assert response.headers.getRawHeaders(b"vary") == [b"Origin"]
    response, _ = server.request("OPTIONS", "/oauth/token", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert response.code == 403
    assert not response.headers.hasHeader(b"access-control-allow-origin")
    response, _ = server.request("POST", "/oauth/token", data={"grant_type": "x"},
                                 headers={"Origin": "https://evil.example"})
    assert response.code == 401
    assert not response.headers.hasHeader(b"access-control-allow-origin")


def test_foreign_algorithm_token_rejected_cheaply(server, monkeypatch) -> None:
    """
    TK-01: a PBES2 token (p2c=16384) is refused from its header alone: jwcrypto
    never sees it, so no key derivation runs and it costs less than opening a
    valid token (which does reach jwcrypto).  Checked by counting, not timing.
    """
    from jwcrypto import jwe, jwk

    key = jwk.JWK.generate(kty="oct", size=256)
    forged = jwe.JWE(b'{"gid":"x"}', protected=json.dumps(
        {"alg": "PBES2-HS256+A128KW", "enc": "A128GCM", "p2c": 16384}))
    forged.add_recipient(key)
    token = forged.serialize(compact=True)
    valid = server.tokens()["access_token"]

    calls: list[str] = []
    original = jwe.JWE.deserialize

    def counting(self, raw_jwe, key=None):  # type: ignore[no-untyped-def]
        calls.append(raw_jwe)
        return original(self, raw_jwe, key)

    monkeypatch.setattr(jwe.JWE, "deserialize", counting)
    for _ in range(5):
        try:
            server.account(token)
        except InvalidToken:
            pass
    assert calls == []
    server.codec.open("access", valid)
    assert calls == [valid]
    assert is_dead(server, token)


def test_implementations_provide_interfaces(server) -> None:
    """The real and fake login checkers, the memory store and the verifier provide their interfaces."""
    from twisted.internet.testing import MemoryReactorClock
    from zope.interface.verify import verifyObject

    from mailmcp._tls import MailTLS
    from mailmcp.interfaces import IAccessTokenVerifier, IGrantStore, ILoginChecker
    from mailmcp.mail._mailcheck import IMAPLoginChecker, SMTPLoginChecker

    reactor = MemoryReactorClock()
    for checker in (server.imap, IMAPLoginChecker(reactor, MailTLS(None)), SMTPLoginChecker(reactor, MailTLS(None))):
        assert verifyObject(ILoginChecker, checker)
    assert verifyObject(IGrantStore, server.store)
    assert verifyObject(IAccessTokenVerifier, server.verifier)


def test_verifier_cache_keeps_revocation_immediate(server) -> None:
    """A cached access token still dies the moment its grant is revoked, and expires on time."""
    tokens = server.tokens()
    assert server.account(tokens["access_token"]).imap_password == "alice-pw"
    assert server.account(tokens["access_token"]).imap_password == "alice-pw"
    (gid,) = server.store.grants
    server.store.revoke_grant(gid)
    assert is_dead(server, tokens["access_token"])
    other = server.tokens()
    server.account(other["access_token"])
    server.clock.advance(server.config.access_token_lifetime + 1)
    assert is_dead(server, other["access_token"])


def test_verifier_cache_refuses_a_client_denied_meanwhile(server) -> None:
    """A cached access token, and one never used, die the moment their client is deny-listed, grant rows kept."""
    tokens = server.tokens()
    unused = server.tokens()
    assert server.account(tokens["access_token"]).imap_password == "alice-pw"
    refs = {record.client_ref for record in server.store.grants.values()}
    assert len(refs) == 1 and len(server.store.grants) == 2
    # As another process's deny_client would look between its two writes.
    server.store.denied_clients.update(refs)
    assert is_dead(server, tokens["access_token"])
    assert is_dead(server, unused["access_token"])
    assert len(server.store.grants) == 2


def test_store_failure_is_503_not_a_traceback(server) -> None:
    """A failing grant store gives a 503 page at login and temporarily_unavailable at the token endpoint."""
    from twisted.internet.defer import fail

    tokens = server.tokens()
    server.store.create_grant = lambda record: fail(RuntimeError("store down"))
    server.store.rotate_refresh = lambda *args: fail(RuntimeError("store down"))
    response, body = server.login()
    assert response.code == 503
    assert b"temporarily unavailable" in body and b"Traceback" not in body and b"store down" not in body
    response, body = server.refresh(tokens["refresh_token"])
    assert response.code == 503 and body["error"] == "temporarily_unavailable"
