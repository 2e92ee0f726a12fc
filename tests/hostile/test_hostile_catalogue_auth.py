"""
The authorization side of the attack catalogue (docs/threat-model.rst, OA, OT, TK, MCP)
against a real ``twistd mailmcp`` on loopback, with a client from
``twistd mailmcp-generate``, a real Dovecot user and a real OAuth login.

Each case asserts the refusal (status, RFC error JSON or
``WWW-Authenticate``) and that nothing changed: no code or token was issued
(the SQLite grant rows are counted), the mailbox holds the same UIDs and
flags, and the response does not echo the token.  Cases that need a
``Clock`` or a raising route live in ``tests/unit/test_catalogue_auth_unit.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import attrs
import httpx2
import pytest
from jwcrypto import jwe, jwk
from twisted.internet.task import Clock

from benchmarks._clients import REDIRECT_URI, _cookie_header, _hidden_fields
from mailmcp.oauth._keyring import KeyRing, read_keyring_file, write_keyring
from mailmcp.oauth._tokens import TokenCodec
from tests.harness import Daemon, Services, free_port, generate_client
from tests.hostile import mcp_http
from tests.hostile.catalogue import snapshot
from tests.hostile.daemon_clients import error_lines, refresh, seed
from tests.unit.forge import forge

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APP_REDIRECT = "https://app.example/cb"
BODY_CAP = 1 << 20


@attrs.define
class Env:
    services: Services
    daemon: Daemon
    client: dict[str, Any]
    app_client: dict[str, Any]
    user: str
    password: str
    tokens: dict[str, Any]

    @property
    def base(self) -> str:
        return self.daemon.base_url

    @property
    def token(self) -> str:
        return str(self.tokens["access_token"])


@pytest.fixture(scope="module")
def env(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One daemon (1 MiB body cap), a default client, an app-only client and one logged-in user."""
    ((user, password),) = seed(services, 1, messages=2)
    root = tmp_path_factory.mktemp("catalogue-auth")
    daemon = Daemon.start(root / "state", services, ["--max-request-body", str(BODY_CAP)])
    try:
        client = generate_client(daemon.state_dir, services)
        app_client = generate_client(daemon.state_dir, services, "--redirect-uri", APP_REDIRECT)
        tokens = mcp_http.login(daemon.base_url, client, user, password, "127.6.0.1")
        yield Env(services, daemon, client, app_client, user, password, tokens)
        assert error_lines(daemon) == [], error_lines(daemon)[:3]
    finally:
        daemon.stop()


def grant_rows(daemon: Daemon) -> int:
    with closing(
        sqlite3.connect(f"file:{daemon.state_dir / 'mailmcp.sqlite3'}?mode=ro", uri=True)
    ) as db:
        return int(db.execute("SELECT count(*) FROM grants").fetchone()[0])


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"="
    ).decode()


def authorize_params(
    env: Env, client: dict[str, Any], redirect_uri: str, challenge: str | None = None
) -> dict[str, str]:
    return {
        "client_id": client["client_id"],
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "code_challenge": challenge or pkce()[1],
        "code_challenge_method": "S256",
        "state": "st-42",
        "resource": env.base + "/mcp",
    }


def login_form(env: Env, params: dict[str, str]) -> dict[str, str]:
    return dict(
        params,
        email=env.user,
        full_name="Catalogue",
        imap_username=env.user,
        imap_password=env.password,
        use_same_credentials="1",
        csrf_token="x" * 43,
    )


def assert_error_page(response: Any, what: str) -> None:
    assert response.status_code == 400, (what, response.status_code, response.text[:300])
    assert "location" not in response.headers, what
    assert response.headers["content-type"].startswith("text/html"), what
    assert "redirect" in response.text.lower(), what
    assert "code=" not in response.text


def refuse_redirects(env: Env, client: dict[str, Any], uris: list[str]) -> None:
    """Each URI: the form and a full login POST are 400 error pages; no grant is stored."""
    rows = grant_rows(env.daemon)
    for uri in uris:
        params = authorize_params(env, client, uri)
        assert_error_page(httpx2.get(env.base + "/oauth/authorize", params=params, timeout=30), uri)
        posted = httpx2.post(
            env.base + "/oauth/authorize",
            data=login_form(env, params),
            timeout=30,
            headers={"Origin": env.base},
        )
        assert_error_page(posted, "POST " + uri)
    assert grant_rows(env.daemon) == rows


def test_oa_03_malformed_redirect_uris_refused(env: Env) -> None:
    """
    OA-03: ``http://claude.ai/...``, ``javascript:``, ``data:``, a
    ``#fragment`` and userinfo (``https://claude.ai@evil/``) are 400 error
    pages, never a redirect, for the form and for a login POST carrying good
    credentials; no grant is stored.  A loopback ``http://127.0.0.1:<any>``
    callback is allowed only for a client registered with loopback URIs.
    """
    refuse_redirects(
        env,
        env.client,
        [
            "http://claude.ai/api/mcp/auth_callback",
            "javascript:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "https://claude.ai/api/mcp/auth_callback#frag",
            "https://claude.ai@evil.example/api/mcp/auth_callback",
            "https://claude.ai/api/mcp/auth_callback@evil.example",
            "http://127.0.0.1.evil.example/callback",
            "http://user:pw@127.0.0.1:54321/callback",
        ],
    )
    loopback = "http://127.0.0.1:54321/callback"
    allowed = httpx2.get(
        env.base + "/oauth/authorize",
        params=authorize_params(env, env.client, loopback),
        timeout=30,
    )
    assert allowed.status_code == 200 and 'name="csrf_token"' in allowed.text
    refuse_redirects(env, env.app_client, [loopback, "http://localhost:8000/callback"])


def test_oa_04_near_misses_of_a_registered_uri_refused(env: Env) -> None:
    """
    OA-04: the registered ``https://app.example/cb`` plus a trailing slash,
    in another case, percent-encoded, or with an extra query parameter is
    refused (exact string match) for the form and the login POST; the exact
    URI is served.
    """
    refuse_redirects(
        env,
        env.app_client,
        [
            APP_REDIRECT + "/",
            "https://APP.example/cb",
            "https://app.example/CB",
            "https://app.example/c%62",
            "https://app.example%2Fcb",
            "https://app.example/cb%2F",
            APP_REDIRECT + "?x=1",
            APP_REDIRECT + "?",
            "https://app.example:443/cb",
        ],
    )
    refuse_redirects(
        env,
        env.client,
        [
            "https://claude.ai/api/mcp/auth_callback/",
            "https://Claude.ai/api/mcp/auth_callback",
            "https://claude.ai/api%2Fmcp/auth_callback",
            "https://claude.ai/api/mcp/auth_callback?next=/evil",
        ],
    )
    exact = httpx2.get(
        env.base + "/oauth/authorize",
        params=authorize_params(env, env.app_client, APP_REDIRECT),
        timeout=30,
    )
    assert exact.status_code == 200


# -- OA-14 -----------------------------------------------------------------------


def raw_http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request; read until the server closes (HTTP/1.0, or Connection: close)."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=30)) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = (headers[key] + "\n" if key in headers else "") + value.strip()
    return int(lines[0].split()[1]), headers, body


def redeem(env: Env, client: dict[str, Any], location: str, verifier: str) -> Any:
    query = parse_qs(urlsplit(location).query)
    form = {
        "grant_type": "authorization_code",
        "code": query["code"][0],
        "code_verifier": verifier,
        "redirect_uri": REDIRECT_URI,
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
    }
    return httpx2.post(env.base + "/oauth/token", data=form, timeout=30)


def assert_good_redirect(env: Env, status: int, location: str) -> None:
    assert status == 303, (status, location)
    assert location.startswith(REDIRECT_URI + "?"), location
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == ["st-42"] and query["iss"] == [env.base]
    assert "evil" not in location


def test_oa_14_http10_and_proxied_logins_still_303(env: Env) -> None:
    """
    OA-14: the whole login over HTTP/1.0 (raw socket: form, then POST) ends
    in a 303 to the registered URI with state and iss; so does a POST that
    arrives through an HTTP/2 front proxy (Via, X-Forwarded-*, Forwarded
    naming another host and https).  Both codes redeem, one grant each.
    """
    port = env.daemon.port
    rows = grant_rows(env.daemon)
    verifier, challenge = pkce()
    query = urlencode(authorize_params(env, env.client, REDIRECT_URI, challenge))
    status, headers, body = raw_http(
        port, f"GET /oauth/authorize?{query} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    )
    assert status == 200
    form = _hidden_fields(body.decode())
    form.update(
        email=env.user,
        full_name="HTTP 1.0",
        imap_username=env.user,
        imap_password=env.password,
        use_same_credentials="1",
    )
    payload = urlencode(form).encode()
    status, headers, body = raw_http(
        port,
        (
            f"POST /oauth/authorize HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nOrigin: {env.base}\r\n"
            f"Cookie: {_cookie_header(headers['set-cookie'])}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        + payload,
    )
    assert_good_redirect(env, status, headers["location"])
    assert env.password.encode() not in body
    assert redeem(env, env.client, headers["location"], verifier).status_code == 200

    verifier, challenge = pkce()
    proxy = {
        "Via": "2 edge-proxy",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-For": "203.0.113.9",
        "Forwarded": "for=203.0.113.9;proto=https;host=evil.example",
    }
    page = httpx2.get(
        env.base + "/oauth/authorize",
        params=authorize_params(env, env.client, REDIRECT_URI, challenge),
        headers=proxy,
        timeout=30,
    )
    assert page.status_code == 200 and "evil.example" not in page.text
    form = _hidden_fields(page.text)
    form.update(
        email=env.user,
        full_name="Proxied",
        imap_username=env.user,
        imap_password=env.password,
        use_same_credentials="1",
    )
    posted = httpx2.post(
        env.base + "/oauth/authorize",
        data=form,
        timeout=30,
        headers={**proxy, "Origin": env.base, "Cookie": _cookie_header(page.headers["set-cookie"])},
    )
    assert_good_redirect(env, posted.status_code, posted.headers["location"])
    assert redeem(env, env.client, posted.headers["location"], verifier).status_code == 200
    assert grant_rows(env.daemon) == rows + 2


# -- tokens forged with the daemon's own key ring ---------------------------------


def daemon_codec(env: Env, at: float | None = None) -> TokenCodec:
    clock = Clock()
    clock.advance(time.time() if at is None else at)
    return TokenCodec(read_keyring_file(env.daemon.state_dir / "keys.json"), clock)


def live_claims(env: Env) -> dict[str, Any]:
    claims = daemon_codec(env).open("access", env.token)
    return {k: v for k, v in claims.items() if k not in ("typ", "iat", "exp")}


def mcp_post(
    env: Env,
    body: dict[str, Any] | bytes,
    token: str | None,
    *,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    query: str = "",
) -> Any:
    all_headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": mcp_http.PROTOCOL_VERSION,
    }
    if token is not None:
        all_headers["authorization"] = "Bearer " + token
    all_headers.update(headers or {})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx2.request(
        method, env.base + "/mcp" + query, content=content, headers=all_headers, timeout=30
    )


TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
PRM_PATH = "/.well-known/oauth-protected-resource/mcp"


def assert_invalid_token(env: Env, response: Any, token: str) -> None:
    assert response.status_code == 401, (response.status_code, response.text[:300])
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer resource_metadata="{env.base}{PRM_PATH}"')
    assert 'error="invalid_token"' in challenge
    assert token not in response.text and token not in challenge
    assert '"tools"' not in response.text


def test_tk_02_json_serialised_jwe_refused_by_the_daemon(env: Env) -> None:
    """
    TK-02: a JSON-serialised JWE (under the daemon's real access key) is 401
    ``invalid_token`` as a Bearer token; as a refresh token or a code it is
    400 ``invalid_grant``, and with 200 recipients the token endpoint
    refuses the body (413).  No grant is created or revoked.
    """
    ring = read_keyring_file(env.daemon.state_dir / "keys.json")
    kid = ring.current_kid
    key = jwk.JWK(
        kty="oct",
        k=base64.urlsafe_b64encode(ring.subkey(kid, "token/access")).rstrip(b"=").decode(),
    )

    def json_jwe(recipients: int) -> str:
        token = jwe.JWE(
            json.dumps(dict(live_claims(env), typ="access")).encode(),
            protected=json.dumps({"alg": "A256KW", "enc": "A256GCM"}),
        )
        token.add_recipient(key, header=json.dumps({"kid": kid}))
        document = json.loads(token.serialize())
        first = {"header": document.pop("header"), "encrypted_key": document.pop("encrypted_key")}
        return json.dumps(dict(document, recipients=[first] * recipients))

    rows = grant_rows(env.daemon)
    small, big = json_jwe(3), json_jwe(200)
    assert_invalid_token(env, mcp_post(env, TOOLS_LIST, small), small)
    for form in (
        {"grant_type": "refresh_token", "refresh_token": small},
        {
            "grant_type": "authorization_code",
            "code": small,
            "code_verifier": pkce()[0],
            "redirect_uri": REDIRECT_URI,
        },
    ):
        form.update(client_id=env.client["client_id"], client_secret=env.client["client_secret"])
        response = httpx2.post(env.base + "/oauth/token", data=form, timeout=30)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
        assert small not in response.text
    response = httpx2.post(
        env.base + "/oauth/token",
        timeout=30,
        data={
            "grant_type": "refresh_token",
            "refresh_token": big,
            "client_id": env.client["client_id"],
        },
    )
    assert response.status_code == 413
    assert grant_rows(env.daemon) == rows
    assert mcp_post(env, TOOLS_LIST, env.token).status_code == 200


@pytest.mark.parametrize(
    ("name", "extra", "deflate"),
    [
        ("zip", {"zip": "DEF"}, True),
        ("crit", {"crit": ["exp"], "exp": 9_999_999_999}, False),
        ("jku", {"jku": "https://evil.example/keys.json"}, False),
        ("x5u", {"x5u": "https://evil.example/cert.pem"}, False),
        ("jwk", {"jwk": {"kty": "oct", "k": "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s"}}, False),
    ],
)
def test_tk_03_hostile_header_refused_by_the_daemon(
    env: Env, name: str, extra: dict[str, Any], deflate: bool
) -> None:
    """
    TK-03: the live grant's claims, genuinely encrypted under the daemon's
    access key, are served with the pinned header and refused (401
    ``invalid_token``) when the header adds ``zip``, ``crit``, ``jku``,
    ``x5u`` or ``jwk``.
    """
    ring = read_keyring_file(env.daemon.state_dir / "keys.json")
    kid = ring.current_kid
    key = ring.subkey(kid, "token/access")
    now = int(time.time())
    claims = dict(live_claims(env), typ="access", iat=now, exp=now + 600)
    pinned = {"alg": "dir", "enc": "A256GCM", "kid": kid}
    control = mcp_post(env, TOOLS_LIST, forge(key, pinned, claims))
    assert control.status_code == 200 and control.json()["result"]["tools"]
    hostile = forge(key, {**pinned, **extra}, claims, deflate=deflate)
    assert_invalid_token(env, mcp_post(env, TOOLS_LIST, hostile), hostile)


# -- /mcp transport -------------------------------------------------------------------


def first_uid(env: Env) -> int:
    listing = mcp_http.call(env.base, env.token, "list_mail_messages", {"folder": "INBOX"})
    return int(listing["structuredContent"]["messages"][0]["uid"])


def delete_call(uid: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {
            "name": "delete_mail_message",
            "arguments": {"folder": "INBOX", "uid": uid, "permanent": True},
        },
    }


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "catalogue", "version": "1"},
    },
}


def test_mcp_01_no_authorization_is_401_with_resource_metadata(env: Env) -> None:
    """
    MCP-01: POST ``initialize``, ``tools/list`` and a ``tools/call`` that
    would delete a message, without Authorization: 401 with exactly
    ``WWW-Authenticate: Bearer resource_metadata="<base>/.well-known/oauth-protected-resource/mcp", scope="<all five>"``,
    which names this server's resource; nothing is served and the mailbox
    is unchanged.
    """
    before = snapshot(env.services, env.user, env.password)
    for body in (INITIALIZE, TOOLS_LIST, delete_call(first_uid(env))):
        response = mcp_post(env, body, None)
        assert response.status_code == 401
        assert (
            response.headers["www-authenticate"]
            == f'Bearer resource_metadata="{env.base}{PRM_PATH}", scope="mail.read mail.organize mail.draft mail.send mail.delete"'
        )
        assert "protocolVersion" not in response.text and '"tools"' not in response.text
        assert "result" not in response.json()
    metadata = httpx2.get(env.base + PRM_PATH, timeout=30).json()
    assert metadata["resource"] == env.base + "/mcp" and metadata["authorization_servers"] == [
        env.base
    ]
    assert snapshot(env.services, env.user, env.password) == before


def test_mcp_02_expired_token_is_401_invalid_token_without_echo(env: Env) -> None:
    """
    MCP-02: the live grant's access token, re-sealed as it was two hours
    ago with a one-hour lifetime (so expired an hour ago), is 401
    ``error="invalid_token"``; neither the body nor the challenge echoes it.
    The same claims sealed now are served.
    """
    claims = live_claims(env)
    expired = daemon_codec(env, time.time() - 7200).seal("access", claims, 3600)
    assert_invalid_token(env, mcp_post(env, TOOLS_LIST, expired), expired)
    fresh = daemon_codec(env).seal("access", claims, 3600)
    assert mcp_post(env, TOOLS_LIST, fresh).status_code == 200


def test_mcp_03_token_in_query_is_401(env: Env) -> None:
    """
    MCP-03: ``?access_token=<a valid token>`` is 401 whether or not a
    Bearer header comes too; the deletion it carries does not happen, the
    token is not echoed and the access log never records it.
    """
    before = snapshot(env.services, env.user, env.password)
    uid = first_uid(env)
    query = "?" + urlencode({"access_token": env.token})
    for header_token in (None, env.token):
        response = mcp_post(env, delete_call(uid), header_token, query=query)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith(
            f'Bearer resource_metadata="{env.base}{PRM_PATH}"'
        )
        assert env.token not in response.text and "result" not in response.json()
    assert snapshot(env.services, env.user, env.password) == before
    assert env.token not in env.daemon.log_text()


def test_mcp_04_foreign_origin_is_403(env: Env) -> None:
    """
    MCP-04: with a valid token, ``Origin: https://evil.example`` (and a
    look-alike of our own origin) is 403 for ``tools/list`` and for a
    deletion, which does not happen; our own origin passes.
    """
    before = snapshot(env.services, env.user, env.password)
    uid = first_uid(env)
    lookalike = env.base.replace("127.0.0.1", "127.0.0.1.evil.example")
    for origin in ("https://evil.example", lookalike, "null"):
        for body in (TOOLS_LIST, delete_call(uid)):
            response = mcp_post(env, body, env.token, headers={"origin": origin})
            assert response.status_code == 403, (origin, response.text)
            assert "Origin" in response.json()["error"]["message"]
            assert "result" not in response.json()
    assert snapshot(env.services, env.user, env.password) == before
    assert mcp_post(env, TOOLS_LIST, env.token, headers={"origin": env.base}).status_code == 200


def deleted_temp_files(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith("(deleted)"):
            found.append(target)
    return found


def send_raw(port: int, head: bytes, body: bytes = b"") -> tuple[bytes, bool]:
    """Send C{head} and as much of C{body} as the server takes; return the response and whether it closed."""
    with closing(socket.create_connection(("127.0.0.1", port), timeout=30)) as s:
        s.sendall(head)
        try:
            for i in range(0, len(body), 65536):
                s.sendall(body[i : i + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, closed = b"", False
        try:
            while chunk := s.recv(65536):
                data += chunk
            closed = True
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
    return data, closed


def test_mcp_11_oversized_and_mistyped_bodies(env: Env) -> None:
    """
    MCP-11: with a 1 MiB cap, a 2 MiB body (by Content-Length, and chunked)
    and ``Content-Length: 10^12`` are 413 and the connection is closed;
    ``Content-Type: text/plain`` is 415 with a JSON-RPC error.  The daemon
    keeps no temporary file, the mailbox is unchanged and the next request
    is served.
    """
    port, pid = env.daemon.port, env.daemon.process.pid
    before = snapshot(env.services, env.user, env.password)
    uid = first_uid(env)
    call = json.dumps(delete_call(uid)).encode()
    padded = call[:-1] + b',"pad":"' + b"x" * (2 * BODY_CAP) + b'"}'
    common = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {env.token}\r\n"
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
    ).encode()
    chunked = (
        b"".join(
            b"%x\r\n%s\r\n" % (len(padded[i : i + 65536]), padded[i : i + 65536])
            for i in range(0, len(padded), 65536)
        )
        + b"0\r\n\r\n"
    )
    cases = [
        ("2 MiB", common + b"Content-Length: %d\r\n\r\n" % len(padded), padded),
        ("10^12", common + b"Content-Length: 1000000000000\r\n\r\n", b"x" * 65536),
        ("chunked 2 MiB", common + b"Transfer-Encoding: chunked\r\n\r\n", chunked),
    ]
    for case, head, body in cases:
        response, closed = send_raw(port, head, body)
        assert response.startswith(b"HTTP/1.1 413 "), (case, response[:200])
        assert closed, case
        assert env.token.encode() not in response
    assert deleted_temp_files(pid) == []

    plain = mcp_post(env, delete_call(uid), env.token, headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    assert (
        plain.json()["error"]["code"] == -32600
        and "Content-Type" in plain.json()["error"]["message"]
    )
    assert snapshot(env.services, env.user, env.password) == before
    assert mcp_post(env, TOOLS_LIST, env.token).status_code == 200


def test_mcp_12_accept_without_json_is_406(env: Env) -> None:
    """
    MCP-12: an Accept header that admits neither ``application/json`` nor a
    wildcard (``text/html``; ``text/event-stream`` alone, since every answer
    here is JSON) is 406 with a JSON-RPC error; the deletion it carried does
    not happen.
    """
    before = snapshot(env.services, env.user, env.password)
    uid = first_uid(env)
    for accept in ("text/html", "text/event-stream", "text/plain, image/png"):
        for body in (TOOLS_LIST, delete_call(uid)):
            response = mcp_post(env, body, env.token, headers={"accept": accept})
            assert response.status_code == 406, (accept, response.text)
            assert response.json()["error"]["code"] == -32600
            assert "result" not in response.json()
    assert snapshot(env.services, env.user, env.password) == before


def test_mcp_13_get_and_delete_are_405(env: Env) -> None:
    """
    MCP-13: with a valid token, GET ``/mcp`` (the SSE listen stream, not
    offered) and DELETE (no sessions) are 405 with ``Allow: POST``; without
    a token they are 401 first, so nothing is learnt unauthenticated.
    """
    for method in ("GET", "DELETE"):
        response = mcp_post(
            env, b"", env.token, method=method, headers={"accept": "text/event-stream"}
        )
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "POST"
        assert "text/event-stream" not in response.headers.get("content-type", "")
        anonymous = mcp_post(env, b"", None, method=method)
        assert anonymous.status_code == 401 and "allow" not in anonymous.headers


def annotations(env: Env) -> dict[str, dict[str, Any]]:
    response = mcp_post(env, TOOLS_LIST, env.token)
    assert response.status_code == 200
    return {tool["name"]: tool["annotations"] for tool in response.json()["result"]["tools"]}


def test_mcp_14_annotations_are_truthful(env: Env) -> None:
    """
    MCP-14: tools/list from the daemon: list_mailboxes, list_mail_messages
    search_mail_messages, get_mail_thread and get_mailbox_changes are
    readOnlyHint true and not destructive; delete_mail_message and
    delete_mailbox are destructiveHint true and not read-only; every tool
    that writes (send, draft, move, flags, delete, reply, forward, folders)
    is not read-only.
    """
    tools = annotations(env)
    for name in ("list_mailboxes", "list_mail_messages", "search_mail_messages",
                 "get_mail_thread", "get_mailbox_changes"):
        assert tools[name]["readOnlyHint"] is True, name
        assert tools[name]["destructiveHint"] is False, name
    for name in ("delete_mail_message", "delete_mailbox"):
        assert tools[name]["destructiveHint"] is True, name
        assert tools[name]["readOnlyHint"] is False, name
    for name in (
        "send_mail_message",
        "create_draft_mail_message",
        "move_mail_message",
        "update_mail_message_flags",
        "delete_mail_message",
        "reply_mail_message",
        "forward_mail_message",
        "create_mailbox",
        "rename_mailbox",
        "delete_mailbox",
    ):
        assert tools[name]["readOnlyHint"] is False, name


def test_mcp_14_get_mail_message_is_not_read_only(env: Env) -> None:
    """MCP-14: get_mail_message stores attachment parts, so tools/list must not call it readOnlyHint."""
    assert annotations(env)["get_mail_message"]["readOnlyHint"] is False


# -- TK-07 ------------------------------------------------------------------------------


def test_tk_07_old_kid_accepted_while_in_the_ring_then_401(
    services: Services, daemon_factory: Any, tmp_path: Path
) -> None:
    """
    TK-07: tokens sealed under a key stay valid after ``mailmcp-generate
    --add-key`` (the old key stays in the ring: the grace window) while new
    ones are sealed under the new kid; once the operator drops the old key
    and restarts, the old-kid access token is 401 ``invalid_token`` and a
    new-kid token of the same grant is still served.
    """
    ((user, password),) = seed(services, 1, messages=1)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--listen", f"tcp:{port}:interface=127.0.0.1", "--base-url", base]
    state = tmp_path / "state"
    first = daemon_factory(services, *args, state_dir=state)
    client = generate_client(state, services)
    old = mcp_http.login(base, client, user, password, "127.6.1.1")
    old_kid = read_keyring_file(state / "keys.json").current_kid
    assert first.stop() == 0

    rotated = generate_client(state, None, "--add-key")
    assert rotated["kids"][0] == old_kid and rotated["current_kid"] != old_kid
    second = daemon_factory(services, *args, state_dir=state)
    assert mcp_post_raw(base, old["access_token"]).status_code == 200
    fresh = refresh(base, client, old["refresh_token"])
    assert fresh.status_code == 200, fresh.text
    new_access = fresh.json()["access_token"]
    header = json.loads(base64.urlsafe_b64decode(new_access.split(".")[0] + "=="))
    assert header["kid"] == rotated["current_kid"]
    assert second.stop() == 0

    document = json.loads(read_keyring_file(state / "keys.json").to_json())
    document["keys"] = [k for k in document["keys"] if k["kid"] != old_kid]
    write_keyring(state / "keys.json", KeyRing.from_json(json.dumps(document), "test"))
    daemon_factory(services, *args, state_dir=state)
    response = mcp_post_raw(base, old["access_token"])
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert old["access_token"] not in response.text
    assert mcp_post_raw(base, new_access).status_code == 200


def mcp_post_raw(base: str, token: str) -> Any:
    return httpx2.post(
        base + "/mcp",
        content=json.dumps(TOOLS_LIST).encode(),
        timeout=30,
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": mcp_http.PROTOCOL_VERSION,
            "authorization": "Bearer " + token,
        },
    )


# -- LG-04 ------------------------------------------------------------------------------

GOOD = base64.urlsafe_b64encode(b"G" * 32).rstrip(b"=").decode()


def ring_json(*entries: dict[str, Any]) -> str:
    return json.dumps({"version": 1, "keys": list(entries)})


@pytest.mark.parametrize(
    ("case", "keys", "expected"),
    [
        ("short key", ring_json({"kid": "a", "secret": GOOD[:40], "created": 1}), "not 32 bytes"),
        (
            "non-base64 key",
            ring_json({"kid": "a", "secret": "*" + GOOD, "created": 1}),
            "not base64url",
        ),
        ("no current kid", ring_json(), "no key"),
        ("empty variable", "", "MAILMCP_KEYS is set but empty"),
    ],
)
def test_lg_04_daemon_refuses_to_start_with_a_bad_key(
    tmp_path: Path, case: str, keys: str, expected: str
) -> None:
    """
    LG-04: ``twistd mailmcp`` with MAILMCP_KEYS holding a short key, a
    non-base64 key or no key (so no current kid), or set but empty, exits
    non-zero with one line on stderr naming the problem (never the secret,
    never a traceback), listens on nothing and writes no key ring.
    """
    from tests.integration.daemon_proc import Proc, assert_one_line_error, clean_env

    port = free_port()
    proc = Proc(
        ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{port}:interface=127.0.0.1"],
        tmp_path,
        clean_env(MAILMCP_KEYS=keys),
    )
    try:
        line = assert_one_line_error(proc, expected)
    finally:
        proc.close()
    assert GOOD not in line
    assert not (tmp_path / "mailmcp-state" / "keys.json").exists()
    with closing(socket.socket()) as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
