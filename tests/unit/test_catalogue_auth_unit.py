"""
Attack-catalogue cases (docs/threat-model.rst, OT, TK, LG) checked below the daemon,
where a `Clock`, a hand-made token or a route that raises is needed:

- OT-07: a code issued without a PKCE challenge cannot be redeemed with a
  verifier (``invalid_request``), and no such code can be obtained anyway.
- TK-02 / TK-03: JSON-serialised JWEs and tokens whose header carries
  ``zip``, ``crit``, ``jku``, ``x5u`` or ``jwk`` are refused, even when they
  are genuinely encrypted under the right key with live claims.
- TK-08: claims that make a token unusable (no ``exp``, ``exp`` passed,
  ``iat`` in the future, another audience or issuer) give ``401`` at ``/mcp``.
- LG-02: an unhandled exception in a route is a generic 500 (no traceback,
  no exception text) and the traceback is logged without local variables.
- LG-04: key rings the daemon must refuse to start with.

The OAuth app, grant store and verifier are the real ones on a `StubTreq`
(`tests.unit.oauth_helpers`); ``/mcp`` is the real `MCPApp` over the real
`GrantTokenVerifier`.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from jwcrypto import jwe, jwk
from klein import Klein
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, eventAsText, globalLogPublisher
from twisted.web.iweb import IRequest

from mailmcp.mcp._app import MCPApp
from mailmcp.oauth._keyring import (
    KeyRing,
    KeyRingError,
    MasterKey,
    load_or_create_keyring,
    new_master_key,
)
from mailmcp.oauth._tokens import InvalidToken, TokenCodec
from mailmcp.testing import echo_tool, tool_services
from mailmcp.web._http import MailMCPSite
from mailmcp.web._router import HealthApp, Router
from tests.unit.forge import b64, forge
from tests.unit.mcp_client import Client
from tests.unit.oauth_helpers import BASE, REDIRECT, Server, make_server, pkce

PRM = f'resource_metadata="{BASE}/.well-known/oauth-protected-resource/mcp"'


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return make_server(tmp_path)


def live_claims(server: Server) -> tuple[dict[str, Any], dict[str, Any]]:
    """A real login's token response, and its access token's claims without typ/iat/exp."""
    tokens = server.tokens()
    claims = server.codec.open("access", tokens["access_token"])
    for key in ("typ", "iat", "exp"):
        claims.pop(key)
    return tokens, claims


def access_key(server: Server) -> tuple[str, bytes]:
    kid = server.config.keyring.current_kid
    return kid, server.config.keyring.subkey(kid, "token/access")


def mcp_client(server: Server) -> Client:
    """The real /mcp endpoint over the server's real verifier and grant store."""
    return Client(MCPApp(server.config, server.verifier, tool_services(), [echo_tool()]))


TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def mcp_status(server: Server, token: str) -> tuple[int, bytes, bytes]:
    """(status, WWW-Authenticate or b"", body) of tools/list with C{token}."""
    code, headers, content = mcp_client(server).request(
        "POST",
        json.dumps(TOOLS_LIST).encode(),
        token=token,
        headers={b"mcp-protocol-version": [b"2025-11-25"]},
    )
    challenge = (headers.getRawHeaders(b"www-authenticate") or [b""])[0]
    return code, challenge, content


def assert_refused_at_mcp(server: Server, token: str) -> None:
    code, challenge, content = mcp_status(server, token)
    assert code == 401, (code, content)
    assert challenge.startswith(f"Bearer {PRM}".encode())
    assert b'error="invalid_token"' in challenge
    assert token.encode() not in content and b'"tools"' not in content


def assert_served_at_mcp(server: Server, token: str) -> None:
    code, _, content = mcp_status(server, token)
    assert code == 200, content
    assert json.loads(content)["result"]["tools"][0]["name"] == "echo"


# -- OT-07 -----------------------------------------------------------------------


def test_ot_07_verifier_for_code_without_challenge_is_invalid_request(server: Server) -> None:
    """
    OT-07: a code_verifier for a code that carries no challenge (made here
    by resealing a real code without ``cc``: the server itself never issues
    one) is 400 ``invalid_request``; no token is issued and the code is not
    consumed (the genuine code still redeems once).
    """
    verifier, challenge = pkce()
    code, _ = server.code_for((verifier, challenge))
    claims = server.codec.open("code", code)
    assert claims["cc"] == challenge
    for key in ("typ", "iat", "exp", "cc"):
        claims.pop(key)
    unchallenged = server.codec.seal("code", claims, server.config.code_lifetime)

    response, body = server.redeem(unchallenged, verifier)
    assert response.code == 400
    assert body["error"] == "invalid_request"
    assert "challenge" in body["error_description"]
    assert "access_token" not in body and "refresh_token" not in body
    assert server.store.codes == {}
    (record,) = server.store.grants.values()
    assert record.generation == 0

    response, body = server.redeem(code, verifier)
    assert response.code == 200 and body["access_token"]


@pytest.mark.parametrize(
    "over",
    [{"code_challenge": None}, {"code_challenge_method": None}, {"code_challenge_method": "plain"}],
)
def test_ot_07_no_code_is_ever_issued_without_a_challenge(
    server: Server, over: dict[str, Any]
) -> None:
    """
    OT-07 (precondition): neither the form nor a full login POST without an
    S256 challenge yields a code; the answer is an ``invalid_request``
    redirect, no mail server is contacted and no grant is stored.
    """
    params = server.authorize_params(**over)
    response, _ = server.request("GET", "/oauth/authorize", params=params)
    assert response.code == 303
    query = parse_qs(urlsplit(response.headers.getRawHeaders(b"location")[0].decode()).query)
    assert query["error"] == ["invalid_request"] and "code" not in query

    form = dict(
        params,
        email="alice@example.test",
        full_name="Alice",
        imap_username="alice@example.test",
        imap_password="alice-pw",
        use_same_credentials="1",
        csrf_token="x" * 43,
    )
    response, _ = server.request(
        "POST",
        "/oauth/authorize",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.code == 303
    location = response.headers.getRawHeaders(b"location")[0].decode()
    assert location.startswith(REDIRECT + "?")
    assert "code" not in parse_qs(urlsplit(location).query)
    assert server.imap.calls == [] and server.smtp.calls == []
    assert server.store.grants == {}


# -- TK-02 -----------------------------------------------------------------------


def json_serialised_jwe(server: Server, recipients: int) -> str:
    """A general JSON serialisation JWE with C{recipients} recipients (all ``dir``, one real key)."""
    kid, raw = access_key(server)
    token = jwe.JWE(b'{"typ":"access"}', protected=json.dumps({"alg": "A256KW", "enc": "A256GCM"}))
    token.add_recipient(jwk.JWK(kty="oct", k=b64(raw)), header=json.dumps({"kid": kid}))
    document = json.loads(token.serialize())  # flattened: one recipient
    first = {"header": document.pop("header"), "encrypted_key": document.pop("encrypted_key")}
    document["recipients"] = [first] * recipients
    return json.dumps(document)


def test_tk_02_json_serialised_jwe_is_refused_before_jwcrypto(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    TK-02: a JSON-serialised JWE with 200 recipients is refused as an access
    token (401 at /mcp), a refresh token and a code (400 ``invalid_grant``),
    and jwcrypto never parses it (counted, not timed).
    """
    forged = json_serialised_jwe(server, 200)
    assert len(json.loads(forged)["recipients"]) == 200
    calls: list[object] = []
    original = jwe.JWE.deserialize

    def counting(self: jwe.JWE, raw: Any, key: Any = None) -> Any:
        calls.append(raw)
        return original(self, raw, key)

    monkeypatch.setattr(jwe.JWE, "deserialize", counting)
    for kind in ("access", "refresh", "code", "client"):
        with pytest.raises(InvalidToken):
            server.codec.open(kind, forged)
    assert calls == []

    tokens = server.tokens()
    # 200 recipients do not even fit the token endpoint's body cap...
    response, body = server.refresh(forged)
    assert response.code == 413
    # ...and a small JSON-serialised JWE is invalid_grant, as a refresh token or a code.
    small = json_serialised_jwe(server, 3)
    assert len(small) < 4096
    response, body = server.refresh(small)
    assert response.code == 400 and body["error"] == "invalid_grant"
    response, body = server.redeem(small, pkce()[0])
    assert response.code == 400 and body["error"] == "invalid_grant"
    assert small not in json.dumps(body)
    # (jwcrypto did open the genuine client ids; never the forged tokens.)
    assert forged not in calls and small not in calls
    # At /mcp the JSON form is not even an RFC 6750 b64token.
    code, challenge, content = mcp_status(server, small)
    assert code == 401 and b"invalid_token" in challenge
    assert small not in calls and small.encode() not in content
    # Nothing was revoked or rotated by the attempts.
    assert_served_at_mcp(server, tokens["access_token"])
    assert server.refresh(tokens["refresh_token"])[0].code == 200


# -- TK-03 -----------------------------------------------------------------------

HOSTILE_HEADERS: list[tuple[str, dict[str, Any], bool]] = [
    ("zip", {"zip": "DEF"}, True),
    ("crit", {"crit": ["exp"], "exp": 9_999_999_999}, False),
    ("jku", {"jku": "https://evil.example/keys.json"}, False),
    ("x5u", {"x5u": "https://evil.example/cert.pem"}, False),
    ("jwk", {"jwk": {"kty": "oct", "k": b64(b"k" * 32)}}, False),
]


@pytest.mark.parametrize(
    ("name", "extra", "deflate"), HOSTILE_HEADERS, ids=[h[0] for h in HOSTILE_HEADERS]
)
def test_tk_03_hostile_header_parameters_are_refused(
    server: Server, name: str, extra: dict[str, Any], deflate: bool
) -> None:
    """
    TK-03: a token genuinely encrypted under the right access key, with the
    live claims of a real grant, whose header adds ``zip:"DEF"``, ``crit``,
    ``jku``, ``x5u`` or ``jwk``, is refused by the codec and with 401
    ``invalid_token`` at /mcp.  The same construction with the pinned header
    is served, so only the header parameter makes the difference.
    """
    tokens, claims = live_claims(server)
    now = int(server.clock.seconds())
    body = dict(claims, typ="access", iat=now, exp=now + 600)
    kid, key = access_key(server)
    pinned = {"alg": "dir", "enc": "A256GCM", "kid": kid}

    control = forge(key, pinned, body)
    assert server.codec.open("access", control)["gid"] == claims["gid"]
    assert_served_at_mcp(server, control)

    hostile = forge(key, {**pinned, **extra}, body, deflate=deflate)
    with pytest.raises(InvalidToken):
        server.codec.open("access", hostile)
    assert_refused_at_mcp(server, hostile)
    # The grant itself is untouched.
    assert_served_at_mcp(server, tokens["access_token"])


# -- TK-08 -----------------------------------------------------------------------


def test_tk_08_bad_time_and_audience_claims_are_401(server: Server) -> None:
    """
    TK-08: under the right key and with a live grant, an access token with
    no ``exp``, with ``exp`` = now-1, with ``iat`` an hour in the future,
    for another audience, or from another issuer (another deployment's key
    ring reusing our kid) is 401 ``invalid_token`` at /mcp.  The same claims
    sealed normally are served.
    """
    tokens, claims = live_claims(server)
    now = int(server.clock.seconds())
    kid, key = access_key(server)
    pinned = {"alg": "dir", "enc": "A256GCM", "kid": kid}
    good = dict(claims, typ="access", iat=now, exp=now + 600)
    assert_served_at_mcp(server, forge(key, pinned, good))

    no_exp = {k: v for k, v in good.items() if k != "exp"}
    impostor = KeyRing([MasterKey(kid=kid, secret=secrets.token_bytes(32), created=now)])
    cases = {
        "exp missing": forge(key, pinned, no_exp),
        "exp = now-1": forge(key, pinned, dict(good, exp=now - 1)),
        "iat + 1 h": forge(key, pinned, dict(good, iat=now + 3600, exp=now + 7200)),
        "iat missing": forge(key, pinned, {k: v for k, v in good.items() if k != "iat"}),
        "exp not an integer": forge(key, pinned, dict(good, exp=float(now + 600))),
        "wrong aud": forge(key, pinned, dict(good, aud="https://other.example/mcp")),
        "wrong issuer": TokenCodec(impostor, server.clock).seal("access", claims, 600),
    }
    for case, token in cases.items():
        with pytest.raises(InvalidToken):
            server.account(token)
        try:
            assert_refused_at_mcp(server, token)
        except AssertionError as e:
            raise AssertionError(case) from e
    assert_served_at_mcp(server, tokens["access_token"])


def test_tk_08_clock_skew_is_bounded_not_zero(server: Server) -> None:
    """TK-08: an iat a few seconds ahead (another replica's clock) is fine; a minute and more is not."""
    _, claims = live_claims(server)
    now = int(server.clock.seconds())
    kid, key = access_key(server)
    pinned = {"alg": "dir", "enc": "A256GCM", "kid": kid}
    assert_served_at_mcp(
        server, forge(key, pinned, dict(claims, typ="access", iat=now + 5, exp=now + 600))
    )
    assert_refused_at_mcp(
        server, forge(key, pinned, dict(claims, typ="access", iat=now + 61, exp=now + 600))
    )


# -- LG-02 -----------------------------------------------------------------------

LOCAL_CANARY = "".join(["LOCAL", "-CANARY-", "5e1d"])


class Exploding:
    """A part whose route raises, mounted in the daemon's Router like the real parts."""

    app = Klein()

    @app.route("/boom", methods=["GET", "POST"])
    def boom(self, request: IRequest) -> bytes:
        secret = "".join(["LOCAL", "-CANARY-", "5e1d"])
        request.setHeader(b"x-secret-length", str(len(secret)).encode())
        raise RuntimeError("database password is " + "hunter" + "2")


def serve_raw(site: MailMCPSite, raw: bytes) -> bytes:
    protocol = site.buildProtocol(None)
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    return bytes(transport.value())


def test_lg_02_unhandled_exception_is_a_generic_500(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    LG-02: a route that raises, served by the daemon's Site and Router,
    answers a generic 500 (no traceback, exception text or local value in
    the body); the traceback is logged at critical level, without the local
    variables; the next request on the same site is served.
    """
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        site = MailMCPSite(
            Router(
                [("/health", HealthApp().app.resource()), ("/boom", Exploding().app.resource())]
            ),
            max_body=1 << 16,
            reactor=MemoryReactorClock(),
        )
        response = serve_raw(site, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        healthy = serve_raw(site, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(events.append)

    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 "), head
    assert b"Processing Failed" in body
    for leak in (
        b"Traceback",
        b"RuntimeError",
        b"hunter2",
        LOCAL_CANARY.encode(),
        b"boom(",
        b".py",
    ):
        assert leak not in response, leak
    assert healthy.startswith(b"HTTP/1.1 200 ") and b'"status":"ok"' in healthy

    failures = [e for e in events if e.get("log_failure") is not None]
    assert len(failures) == 1
    text = eventAsText(failures[0], includeTimestamp=False)
    assert "Traceback" in text and "RuntimeError: database password is hunter2" in text
    assert "in boom" in text
    assert LOCAL_CANARY not in text
    assert failures[0]["log_failure"].frames  # the traceback itself was kept
    assert all(not frame[3] and not frame[4] for frame in failures[0]["log_failure"].frames)


# -- LG-04 -----------------------------------------------------------------------


def ring_document(*secrets_: str, kid: str = "k1") -> str:
    return json.dumps(
        {
            "version": 1,
            "keys": [
                {"kid": f"{kid}-{i}", "secret": s, "created": 1} for i, s in enumerate(secrets_)
            ],
        }
    )


GOOD_SECRET = b64(b"G" * 32)

BAD_RINGS = [
    ("short key (31 bytes)", ring_document(b64(b"s" * 31)), "not 32 bytes"),
    ("long key (33 bytes)", ring_document(b64(b"s" * 33)), "not 32 bytes"),
    ("empty secret", ring_document(""), "not 32 bytes"),
    ("not base64", ring_document("!!!!" * 11), "not base64url"),
    ("base64 with junk inside", ring_document("!" + GOOD_SECRET), "not base64url"),
    (
        "standard base64 alphabet",
        ring_document(base64.b64encode(b"\xfb" * 32).decode()),
        "not base64url",
    ),
    ("no current kid (no key)", json.dumps({"version": 1, "keys": []}), "no key"),
    (
        "two keys one id",
        json.dumps({"version": 1, "keys": [{"kid": "a", "secret": GOOD_SECRET, "created": 1}] * 2}),
        "same id",
    ),
]


@pytest.mark.parametrize(("why", "text", "reason"), BAD_RINGS, ids=[b[0] for b in BAD_RINGS])
def test_lg_04_unusable_key_rings_refused(tmp_path: Path, why: str, text: str, reason: str) -> None:
    """
    LG-04: MAILMCP_KEYS with a short, long, empty or non-base64url secret,
    or with no key (hence no current kid), is refused with one line naming
    the source and the reason, never the secret; no keys.json is created in
    its place.
    """
    with pytest.raises(KeyRingError) as raised:
        load_or_create_keyring(tmp_path, None, {"MAILMCP_KEYS": text})
    message = str(raised.value)
    assert message.startswith("corrupt key ring in MAILMCP_KEYS: "), message
    assert reason in message and "\n" not in message
    assert GOOD_SECRET not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["", "   "])
def test_lg_04_empty_keys_variable_is_refused_not_replaced(tmp_path: Path, value: str) -> None:
    """
    LG-04 (missing key): MAILMCP_KEYS set but empty is an error, not a
    reason to generate a fresh ring that no other replica shares.
    """
    with pytest.raises(KeyRingError, match="MAILMCP_KEYS is set but empty"):
        load_or_create_keyring(tmp_path, None, {"MAILMCP_KEYS": value})
    assert list(tmp_path.iterdir()) == []


def test_lg_04_good_ring_still_loads(tmp_path: Path) -> None:
    """LG-04 control: a well-formed ring (padded or not) loads, and its last key is current."""
    ring = KeyRing([new_master_key(1), new_master_key(2)])
    loaded = load_or_create_keyring(tmp_path, None, {"MAILMCP_KEYS": ring.to_json()})
    assert loaded.kids == ring.kids and loaded.current_kid == ring.kids[-1]
    padded = ring_document(base64.urlsafe_b64encode(b"P" * 32).decode())
    assert load_or_create_keyring(tmp_path, None, {"MAILMCP_KEYS": padded}).current_kid == "k1-0"
