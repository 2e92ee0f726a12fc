"""
The harness's provider sign-in side (issue 18): the test OAuth provider
(`tests.oauth_provider`, ``services.oauth_provider``) and Dovecot and Postfix
taking its tokens with SASL XOAUTH2 and OAUTHBEARER (RFC 7628), checked with
the standard library's clients so that mailmcp's own SASL code is not needed
to trust the servers.
"""

from __future__ import annotations

import base64
import imaplib
import json
import re
import secrets
import smtplib
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import pytest
from jwcrypto import jwk, jwt

from tests.harness import USERS, OAuthProviderHandle, Services
from tests.oauth_provider import s256

pytestmark = pytest.mark.integration

CALLBACK = "http://127.0.0.1:8123/oauth/provider/callback"

_counter = iter(range(1, 1_000_000))


@pytest.fixture
def provider(services: Services) -> OAuthProviderHandle:
    services.oauth_provider.set_access_token_lifetime(3600)
    return services.oauth_provider


@pytest.fixture
def user(provider: OAuthProviderHandle) -> str:
    """A fresh provider user with a Dovecot mailbox and no password."""
    email = f"oauth{next(_counter)}-{secrets.token_hex(3)}@example.test"
    provider.add_user(email)
    return email


@pytest.fixture
def tls(services: Services) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(services.ca_file))


def xoauth2(email: str, token: str) -> bytes:
    return f"user={email}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer(email: str, token: str, port: int) -> bytes:
    return f"n,a={email},\x01host=localhost\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


def sasl_once(initial: bytes) -> Callable[[bytes], bytes]:
    """
    An imaplib authobject: the initial response, then an empty line for the
    server's error challenge (the XOAUTH2/OAUTHBEARER failure dance).
    """
    sent: list[bytes] = []

    def step(challenge: bytes) -> bytes:
        if sent:
            return b""
        sent.append(initial)
        return initial

    return step


def dovecot_log(services: Services) -> str:
    return (services.svc / "dovecot" / "dovecot.log").read_text(errors="replace")


def imap_login(services: Services, tls: ssl.SSLContext, mechanism: str, blob: bytes,
               starttls: bool = False) -> imaplib.IMAP4:
    if starttls:
        client: imaplib.IMAP4 = imaplib.IMAP4("localhost", services.imap_port, timeout=10)
        client.starttls(ssl_context=tls)
    else:
        client = imaplib.IMAP4_SSL("localhost", services.imaps_port, ssl_context=tls, timeout=10)
    try:
        client.authenticate(mechanism, sasl_once(blob))
    except BaseException:
        client.shutdown()
        raise
    return client


def smtp_connect(services: Services, tls: ssl.SSLContext, port: str) -> smtplib.SMTP:
    """An SMTP session after TLS and EHLO, at the submission (STARTTLS) or SMTPS port."""
    client: smtplib.SMTP
    if port == "submission":
        client = smtplib.SMTP("localhost", services.submission_port, timeout=10)
        client.starttls(context=tls)
    else:
        client = smtplib.SMTP_SSL("localhost", services.smtps_port, context=tls, timeout=10)
    client.ehlo()
    return client


def smtp_auth(services: Services, tls: ssl.SSLContext, mechanism: str, blob: bytes,
              port: str = "submission") -> tuple[smtplib.SMTP, int, bytes]:
    client = smtp_connect(services, tls, port)
    code, reply = client.docmd("AUTH", f"{mechanism} {base64.b64encode(blob).decode()}")
    if code == 334:  # the error challenge: answer with an empty line
        code, reply = client.docmd("")
    return client, code, reply


def inbox_subjects(services: Services, tls: ssl.SSLContext, email: str, token: str) -> list[str]:
    client = imap_login(services, tls, "XOAUTH2", xoauth2(email, token))
    try:
        _, count = client.select("INBOX", readonly=True)
        if count == [b"0"]:
            return []
        _, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    finally:
        client.logout()
    return [item[1].decode().strip() for item in data if isinstance(item, tuple)]


# -- Dovecot IMAP ----------------------------------------------------------------


def test_xoauth2_login_at_imaps_is_logged_with_the_mechanism(
    services: Services, provider: OAuthProviderHandle, user: str, tls: ssl.SSLContext
) -> None:
    """A provider access token logs in with XOAUTH2 at IMAPS; Dovecot logs method=XOAUTH2."""
    token = provider.issue_tokens(user)["access_token"]
    client = imap_login(services, tls, "XOAUTH2", xoauth2(user, token))
    try:
        assert client.state == "AUTH"
        assert client.select("INBOX")[0] == "OK"
    finally:
        client.logout()
    assert re.search(rf"Login: user=<{re.escape(user)}>, method=XOAUTH2", dovecot_log(services))
    assert provider.stats()[user]["introspections_active"] >= 1
    assert token not in dovecot_log(services)


def test_oauthbearer_login_at_imap_starttls(
    services: Services, provider: OAuthProviderHandle, user: str, tls: ssl.SSLContext
) -> None:
    """OAUTHBEARER (RFC 7628) on the STARTTLS port; Dovecot logs method=OAUTHBEARER."""
    token = provider.issue_tokens(user)["access_token"]
    client = imap_login(services, tls, "OAUTHBEARER",
                        oauthbearer(user, token, services.imap_port), starttls=True)
    try:
        assert client.select("INBOX")[0] == "OK"
    finally:
        client.logout()
    assert re.search(rf"Login: user=<{re.escape(user)}>, method=OAUTHBEARER",
                     dovecot_log(services))


def test_xoauth2_at_imap_starttls_and_delivery_to_an_oauth_user(
    services: Services, provider: OAuthProviderHandle, user: str, tls: ssl.SSLContext
) -> None:
    """services.deliver() reaches a password-less provider user, who reads it over XOAUTH2."""
    services.deliver(user, f"Subject: hello {user}\r\n\r\nbody\r\n".encode())
    token = provider.issue_tokens(user)["access_token"]
    client = imap_login(services, tls, "XOAUTH2", xoauth2(user, token), starttls=True)
    try:
        assert client.select("INBOX", readonly=True) == ("OK", [b"1"])
    finally:
        client.logout()


def test_a_provider_user_has_no_password(
    services: Services, provider: OAuthProviderHandle, user: str, tls: ssl.SSLContext
) -> None:
    """PLAIN with the provider user's access token as the password is refused."""
    token = provider.issue_tokens(user)["access_token"]
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login(services, tls, "PLAIN", f"\0{user}\0{token}".encode())


def test_a_refused_login_earns_no_dovecot_penalty(
    services: Services, provider: OAuthProviderHandle, user: str, tls: ssl.SSLContext
) -> None:
    """
    The harness turns Dovecot's per-address auth penalty off: after a refused
    token ``doveadm penalty`` lists no address, so one test's refusals do not
    delay the next tests' logins (all from 127.0.0.1) by 2 to 15 s.
    """
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(services, tls, "XOAUTH2", xoauth2(user, "at-not-a-token"))
    listing = subprocess.run(
        ["doveadm", "-c", str(services.svc / "dovecot" / "dovecot.conf"), "penalty"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.splitlines()
    assert listing[0].split()[:2] == ["IP", "penalty"]
    assert listing[1:] == []


def test_a_token_for_another_user_is_refused(
    services: Services, provider: OAuthProviderHandle, user: str, tls: ssl.SSLContext
) -> None:
    """A valid token presented under another user's name does not log in (username check)."""
    token = provider.issue_tokens(user)["access_token"]
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(services, tls, "XOAUTH2", xoauth2("bob@example.test", token))


def test_expired_token_is_refused_and_a_refreshed_one_works(
    services: Services, provider: OAuthProviderHandle, user: str, tls: ssl.SSLContext
) -> None:
    """After expire_access_tokens IMAP and SMTP refuse the token; the refreshed token logs in."""
    tokens = provider.issue_tokens(user)
    provider.expire_access_tokens(user)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login(services, tls, "XOAUTH2", xoauth2(user, tokens["access_token"]))
    smtp, code, _ = smtp_auth(services, tls, "XOAUTH2", xoauth2(user, tokens["access_token"]))
    smtp.close()
    assert code == 535
    fresh = provider.refresh(tokens["refresh_token"])
    imap_login(services, tls, "XOAUTH2", xoauth2(user, fresh["access_token"])).logout()


def test_short_lifetime_expires_by_itself(
    services: Services, provider: OAuthProviderHandle, user: str
) -> None:
    """set_access_token_lifetime(0): tokens issued from now on are inactive at once."""
    provider.set_access_token_lifetime(0)
    token = provider.issue_tokens(user)
    assert token["expires_in"] == 0
    assert introspect(provider, token["access_token"]) == {"active": False}
    provider.set_access_token_lifetime(3600)
    assert introspect(provider, provider.issue_tokens(user)["access_token"])["active"] is True


def test_revoked_consent_kills_access_and_refresh_tokens(
    services: Services, provider: OAuthProviderHandle, user: str, tls: ssl.SSLContext
) -> None:
    """revoke_consent: IMAP refuses, introspection says inactive, the refresh is invalid_grant."""
    tokens = provider.issue_tokens(user)
    imap_login(services, tls, "XOAUTH2", xoauth2(user, tokens["access_token"])).logout()
    provider.revoke_consent(user)
    assert introspect(provider, tokens["access_token"]) == {"active": False}
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login(services, tls, "XOAUTH2", xoauth2(user, tokens["access_token"]))
    with pytest.raises(RuntimeError, match="400: invalid_grant"):
        provider.refresh(tokens["refresh_token"])
    # Consent given again: a new sign-in works.
    again = provider.issue_tokens(user)
    imap_login(services, tls, "XOAUTH2", xoauth2(user, again["access_token"])).logout()


def test_password_user_keeps_plain_and_a_password_is_no_token(
    services: Services, tls: ssl.SSLContext
) -> None:
    """alice still logs in with PLAIN and LOGIN; her password as an XOAUTH2 token is refused."""
    client = imaplib.IMAP4_SSL("localhost", services.imaps_port, ssl_context=tls, timeout=10)
    try:
        assert client.authenticate(
            "PLAIN", lambda _: f"\0alice@example.test\0{USERS['alice@example.test']}".encode()
        )[0] == "OK"
    finally:
        client.logout()
    client = imaplib.IMAP4("localhost", services.imap_port, timeout=10)
    client.starttls(ssl_context=tls)
    assert client.login("alice@example.test", USERS["alice@example.test"])[0] == "OK"
    client.logout()
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(services, tls, "XOAUTH2",
                   xoauth2("alice@example.test", USERS["alice@example.test"]))
    smtp = smtplib.SMTP("localhost", services.submission_port, timeout=10)
    smtp.starttls(context=tls)
    smtp.login("bob@example.test", USERS["bob@example.test"])
    smtp.quit()


# -- Postfix submission through Dovecot SASL ----------------------------------------


@pytest.mark.parametrize("port", ["submission", "smtps"])
def test_smtp_offers_xoauth2_and_oauthbearer(services: Services, tls: ssl.SSLContext,
                                             port: str) -> None:
    """EHLO's AUTH list on the submission ports names XOAUTH2 and OAUTHBEARER next to PLAIN."""
    smtp = smtp_connect(services, tls, port)
    try:
        mechanisms = smtp.esmtp_features["auth"].split()
    finally:
        smtp.close()
    assert {"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"} <= set(mechanisms)


@pytest.mark.parametrize(("mechanism", "port"), [("XOAUTH2", "submission"),
                                                  ("OAUTHBEARER", "smtps")])
def test_smtp_submission_with_a_provider_token(
    services: Services, provider: OAuthProviderHandle, user: str, tls: ssl.SSLContext,
    mechanism: str, port: str,
) -> None:
    """A provider token authenticates at Postfix and the mail it sends is delivered."""
    token = provider.issue_tokens(user)["access_token"]
    smtp_port = services.submission_port if port == "submission" else services.smtps_port
    blob = xoauth2(user, token) if mechanism == "XOAUTH2" else oauthbearer(user, token, smtp_port)
    smtp, code, reply = smtp_auth(services, tls, mechanism, blob, port)
    try:
        assert code == 235, reply
        message = EmailMessage()
        message["From"], message["To"] = user, user
        message["Subject"] = f"sent with {mechanism}"
        message.set_content("hi")
        assert smtp.send_message(message) == {}
    finally:
        smtp.quit()
    for _ in range(100):
        subjects = inbox_subjects(services, tls, user, token)
        if subjects:
            break
        time.sleep(0.05)
    assert subjects == [f"Subject: sent with {mechanism}"]
    maillog = (services.svc / "postfix" / "maillog").read_text(errors="replace")
    assert f"sasl_method={mechanism}, sasl_username={user}" in maillog
    assert token not in maillog


def test_smtp_refuses_a_revoked_token_with_oauthbearer(
    services: Services, provider: OAuthProviderHandle, user: str, tls: ssl.SSLContext
) -> None:
    """After revoke_consent Postfix answers 535 to OAUTHBEARER (after the error challenge)."""
    token = provider.issue_tokens(user)["access_token"]
    provider.revoke_consent(user)
    smtp, code, reply = smtp_auth(services, tls, "OAUTHBEARER",
                                  oauthbearer(user, token, services.submission_port))
    smtp.close()
    assert code == 535, reply


# -- the provider's OAuth endpoints ---------------------------------------------------


def introspect(provider: OAuthProviderHandle, token: str) -> dict[str, object]:
    status, _, raw = provider.request("POST", provider.introspect_url, form={"token": token},
                                      headers=provider.basic_auth())
    assert status == 200
    result: dict[str, object] = json.loads(raw)
    return result


def authorize_url(provider: OAuthProviderHandle, **overrides: str) -> str:
    params = {
        "response_type": "code", "client_id": provider.client_id, "redirect_uri": CALLBACK,
        "scope": provider.scope, "state": "st-123", "code_challenge": s256("v" * 50),
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return provider.authorize_url + "?" + urllib.parse.urlencode(
        {k: v for k, v in params.items() if v != "-"}
    )


def query_of(location: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def test_refresh_rotates_and_the_old_refresh_token_is_dead(
    provider: OAuthProviderHandle, user: str
) -> None:
    """A refresh answers a new refresh token; the used one is invalid_grant, and stats show both."""
    first = provider.issue_tokens(user)
    second = provider.refresh(first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["token_type"] == "Bearer" and second["scope"] == provider.scope
    with pytest.raises(RuntimeError, match="400: invalid_grant"):
        provider.refresh(first["refresh_token"])
    third = provider.refresh(second["refresh_token"])
    assert introspect(provider, third["access_token"])["active"] is True
    stats = provider.stats()[user]
    assert stats["code_exchanges"] == 1
    assert stats["refreshes"] == 2
    assert stats["refresh_failures"] == 1
    assert stats["refresh_tokens_seen"] == [first["refresh_token"], first["refresh_token"],
                                            second["refresh_token"]]


def test_introspection_answers_what_dovecot_needs(
    provider: OAuthProviderHandle, user: str
) -> None:
    """RFC 7662: active, email, sub, exp, scope, client_id; client authentication required."""
    tokens = provider.issue_tokens(user)
    answer = introspect(provider, tokens["access_token"])
    assert answer["active"] is True and answer["email"] == user
    assert answer["client_id"] == provider.client_id and answer["scope"] == provider.scope
    assert isinstance(answer["exp"], int) and isinstance(answer["sub"], str)
    assert introspect(provider, "at-unknown") == {"active": False}
    assert introspect(provider, tokens["refresh_token"]) == {"active": False}
    status, _, raw = provider.request("POST", provider.introspect_url,
                                      form={"token": tokens["access_token"]})
    assert status == 401 and json.loads(raw)["error"] == "invalid_client"


def test_id_token_is_a_signed_jwt_and_userinfo_agrees(
    provider: OAuthProviderHandle, user: str
) -> None:
    """The ID token verifies with the provider's JWKS and names the user; /userinfo says the same."""
    tokens = provider.issue_tokens(user)
    _, _, raw = provider.request("GET", provider.issuer + "/jwks")
    keys = jwk.JWKSet.from_json(raw)
    claims = json.loads(jwt.JWT(jwt=tokens["id_token"], key=keys, algs=["RS256"]).claims)
    assert claims["iss"] == provider.issuer and claims["aud"] == provider.client_id
    assert claims["email"] == user and claims["email_verified"] is True
    assert claims["exp"] > claims["iat"]
    status, _, raw = provider.request("GET", provider.userinfo_url,
                                      headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert status == 200
    assert json.loads(raw) == {"sub": claims["sub"], "email": user, "email_verified": True}
    provider.expire_access_tokens(user)
    status, headers, _ = provider.request(
        "GET", provider.userinfo_url, headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert status == 401 and "invalid_token" in headers["WWW-Authenticate"]


def test_revoke_endpoint_ends_the_refresh_tokens_grant(
    provider: OAuthProviderHandle, user: str
) -> None:
    """RFC 7009: revoking the refresh token kills it and its access tokens; unknown tokens are 200."""
    tokens = provider.issue_tokens(user)
    for token in (tokens["refresh_token"], "no-such-token"):
        status, _, _ = provider.request("POST", provider.revoke_url, form={"token": token},
                                        headers=provider.basic_auth())
        assert status == 200
    assert introspect(provider, tokens["access_token"]) == {"active": False}
    with pytest.raises(RuntimeError, match="invalid_grant"):
        provider.refresh(tokens["refresh_token"])


def test_consent_page_and_redirect(provider: OAuthProviderHandle, user: str) -> None:
    """The page prefills login_hint and has approve/deny; approve and deny redirect with state."""
    url = authorize_url(provider, login_hint=user)
    status, _, page = provider.request("GET", url)
    html = page.decode()
    assert status == 200
    assert f"name='email' type='email' value='{user}'" in html
    assert "id='approve' name='decision' value='approve'" in html
    assert "id='deny' name='decision' value='deny'" in html
    approved = query_of(provider.approve(url, user))
    assert approved["state"] == "st-123" and approved["code"].startswith("code-")
    denied = provider.approve(url, user, decision="deny")
    assert denied.startswith(CALLBACK + "?")
    assert query_of(denied) == {"error": "access_denied", "state": "st-123"}


@pytest.mark.parametrize("overrides", [
    {"client_id": "someone-else"},
    {"redirect_uri": "http://evil.example/oauth/provider/callback"},
    {"redirect_uri": "https://127.0.0.1:8123/oauth/provider/callback"},
    {"redirect_uri": "http://127.0.0.1:8123/oauth/other"},
    {"redirect_uri": "http://127.0.0.1:8123@evil.example/oauth/provider/callback"},
    {"redirect_uri": "-"},
])
def test_authorize_refuses_unknown_client_or_redirect_without_redirecting(
    provider: OAuthProviderHandle, overrides: dict[str, str]
) -> None:
    """Unknown client or unregistered redirect_uri: a 400 page and no Location, GET and POST."""
    url = authorize_url(provider, **overrides)
    status, headers, _ = provider.request("GET", url)
    assert status == 400 and "Location" not in headers
    form = query_of(url) | {"email": "x@example.test", "decision": "approve"}
    status, headers, _ = provider.request("POST", provider.authorize_url, form=form)
    assert status == 400 and "Location" not in headers


def test_redirect_uri_under_a_base_path_is_accepted(provider: OAuthProviderHandle,
                                                     user: str) -> None:
    """Any loopback port and base path before /oauth/provider/callback is registered."""
    uri = "http://localhost:45678/mail/mcp/oauth/provider/callback"
    location = provider.approve(authorize_url(provider, redirect_uri=uri), user)
    assert location.startswith(uri + "?code=")


@pytest.mark.parametrize(("overrides", "error"), [
    ({"code_challenge": "-"}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge_method": "-"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
])
def test_authorize_requires_pkce_s256(provider: OAuthProviderHandle,
                                      overrides: dict[str, str], error: str) -> None:
    """Without an S256 code_challenge (or with another response_type) the client gets an error."""
    status, headers, _ = provider.request("GET", authorize_url(provider, **overrides))
    assert status == 302
    answer = query_of(headers["Location"])
    assert answer["error"] == error and answer["state"] == "st-123"
    assert "code" not in answer


def test_unknown_account_gets_the_form_again(provider: OAuthProviderHandle) -> None:
    """Approving as an address the provider does not know: 400 page, no code."""
    url = authorize_url(provider)
    form = query_of(url) | {"email": "nobody-here@example.test", "decision": "approve"}
    status, headers, page = provider.request("POST", provider.authorize_url, form=form)
    assert status == 400 and "Location" not in headers
    assert "No account" in page.decode()


@pytest.fixture
def code_for(provider: OAuthProviderHandle, user: str) -> Iterator[Callable[[str], str]]:
    def issue(verifier: str) -> str:
        location = provider.approve(authorize_url(provider, code_challenge=s256(verifier)), user)
        return query_of(location)["code"]

    yield issue


def test_token_checks_pkce_redirect_uri_client_and_single_use(
    provider: OAuthProviderHandle, code_for: Callable[[str], str]
) -> None:
    """Wrong verifier, wrong redirect_uri, a used code: invalid_grant; wrong secret: invalid_client."""
    verifier = secrets.token_urlsafe(48)

    def exchange(code: str, auth: dict[str, str] | None = None, **form: str) -> tuple[int, dict]:
        body = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
                "code_verifier": verifier} | form
        status, _, raw = provider.request("POST", provider.token_url, form=body,
                                          headers=provider.basic_auth() if auth is None else auth)
        return status, json.loads(raw)

    assert exchange(code_for(verifier), code_verifier="x" * 50) == (
        400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
    assert exchange(code_for(verifier), code_verifier="")[1]["error"] == "invalid_grant"
    assert exchange(code_for(verifier), redirect_uri=CALLBACK + "x")[1]["error"] == "invalid_grant"
    bad = {"Authorization": "Basic " + base64.b64encode(b"mailmcp-test:wrong").decode()}
    assert exchange(code_for(verifier), auth=bad)[0] == 401
    assert exchange(code_for(verifier), auth={})[1]["error"] == "invalid_client"
    code = code_for(verifier)
    # Client credentials in the form body work as well as HTTP Basic.
    status, tokens = exchange(code, auth={}, client_id=provider.client_id,
                              client_secret=provider.client_secret)
    assert status == 200 and tokens["token_type"] == "Bearer"
    assert exchange(code)[1]["error"] == "invalid_grant"


def test_client_secret_file_is_private(provider: OAuthProviderHandle) -> None:
    """The client secret lives in a 0600 file (pass its path, never the secret, to mailmcp)."""
    assert provider.client_secret_file.stat().st_mode & 0o777 == 0o600
    assert len(provider.client_secret) >= 32
