"""
`ProviderClient` against a socket-free provider (``StubTreq``): the
authorization URL, code exchange, refresh, the mailbox address, and
errors that never carry a token or the client secret.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet.task import Clock

from mailmcp.oauth._clients import MailServer
from mailmcp.oauth._grants import Credentials, new_grant_key, open_credentials, seal_credentials
from mailmcp.provider._client import (
    ProviderProfile,
    ProviderRefused,
    ProviderTokens,
    ProviderUnavailable,
)
from tests.helpers import run
from tests.unit.provider_fake import (
    CLIENT_ID,
    CLIENT_SECRET,
    FakeProvider,
    client,
    id_token,
    profile,
)

VERIFIER = "v" * 43
REDIRECT = "https://mail.example.test/oauth/provider/callback"


def setup() -> tuple[FakeProvider, Clock]:
    clock = Clock()
    clock.advance(1_000_000)
    return FakeProvider(), clock


def test_builtin_profiles_carry_the_providers_endpoints_and_scopes() -> None:
    """Microsoft and Google: IMAP+SMTP access plus offline access, and their endpoints."""
    ms = ProviderProfile.builtin("microsoft", "id", "secret")
    assert ms.label == "Microsoft"
    assert ms.authorize_url == "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
    assert ms.token_url == "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    assert set(ms.scope.split()) == {
        "openid", "email", "offline_access",
        "https://outlook.office.com/IMAP.AccessAsUser.All", "https://outlook.office.com/SMTP.Send",
    }  # fmt: skip
    google = ProviderProfile.builtin("google", "id", "secret", imap_auth="oauthbearer")
    assert google.label == "Google"
    assert google.authorize_url == "https://accounts.google.com/o/oauth2/v2/auth"
    assert google.token_url == "https://oauth2.googleapis.com/token"
    assert google.scope == "openid email https://mail.google.com/"
    assert google.userinfo_url == "https://openidconnect.googleapis.com/v1/userinfo"
    assert google.extra_authorize_params == {"access_type": "offline", "prompt": "consent"}
    assert google.imap_auth == "oauthbearer"
    with pytest.raises(ValueError):
        ProviderProfile.builtin("yahoo", "id", "secret")
    with pytest.raises(ValueError):
        ProviderProfile.builtin("google", "id", "secret", imap_auth="plain")


def test_profile_and_tokens_reprs_hide_secrets() -> None:
    """The client secret and every token stay out of reprs (and so out of logs)."""
    prof = profile()
    assert CLIENT_SECRET not in repr(prof)
    assert CLIENT_ID in repr(prof)
    tokens = ProviderTokens("CANARY-a", "CANARY-r", 5, id_token="CANARY-i")
    assert "CANARY" not in repr(tokens)
    assert "CANARY" not in str(tokens)
    fake, clock = setup()
    assert CLIENT_SECRET not in repr(client(fake, clock))


def test_authorization_url_has_pkce_state_and_google_extras() -> None:
    fake, clock = setup()
    c = client(fake, clock, profile("google"))
    url = c.authorization_url(
        redirect_uri=REDIRECT, state="st-1", code_challenge="ch-1", login_hint="a@b.test"
    )
    parts = urlsplit(url)
    assert (
        f"{parts.scheme}://{parts.netloc}{parts.path}"
        == "https://accounts.google.com/o/oauth2/v2/auth"
    )
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q == {
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
        "scope": "openid email https://mail.google.com/", "state": "st-1",
        "code_challenge": "ch-1", "code_challenge_method": "S256",
        "access_type": "offline", "prompt": "consent", "login_hint": "a@b.test",
    }  # fmt: skip
    assert CLIENT_SECRET not in url


def test_exchange_code_posts_the_grant_and_computes_expiry() -> None:
    fake, clock = setup()
    tokens = run(client(fake, clock).exchange_code("code-1", VERIFIER, REDIRECT))
    assert fake.requests == [
        {
            "grant_type": "authorization_code", "code": "code-1", "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        }
    ]  # fmt: skip
    assert tokens.access_token == "CANARY-access-1"
    assert tokens.refresh_token == "CANARY-refresh-1"
    assert tokens.expires_at == 1_000_000 + 3600
    assert tokens.id_token is not None


def test_refresh_rotates_or_keeps_the_refresh_token() -> None:
    """A rotating provider's new refresh token is used; a non-rotating one keeps the old."""
    fake, clock = setup()
    c = client(fake, clock)
    rotated = run(c.refresh("old-refresh"))
    assert fake.requests[-1]["grant_type"] == "refresh_token"
    assert fake.requests[-1]["refresh_token"] == "old-refresh"
    assert rotated.refresh_token == "CANARY-refresh-1"
    fake.queue(200, {"access_token": "a2", "expires_in": "600", "token_type": "bearer"})
    kept = run(c.refresh("old-refresh"))
    assert (kept.access_token, kept.refresh_token) == ("a2", "old-refresh")
    assert kept.expires_at == 1_000_000 + 600


def test_invalid_grant_is_refused_without_echoing_the_body() -> None:
    """Revoked consent: `ProviderRefused` with the RFC code only, no description, no token."""
    fake, clock = setup()
    fake.queue(400, {"error": "invalid_grant", "error_description": "CANARY-desc token CANARY-r"})
    with pytest.raises(ProviderRefused) as info:
        run(client(fake, clock).refresh("CANARY-r"))
    assert info.value.error == "invalid_grant"
    assert "sign in again" in str(info.value)
    assert "CANARY" not in str(info.value)
    assert CLIENT_SECRET not in str(info.value)


@pytest.mark.parametrize(
    "code,body,needle",
    [
        (500, b"CANARY oops", "HTTP 500"),
        (503, {"error": "temporarily_unavailable"}, "HTTP 503"),
        (401, {"error": "invalid_client", "error_description": "CANARY"}, "invalid_client"),
        (200, b"not json CANARY", "malformed"),
        (200, {"access_token": "CANARY-a"}, "usable access and refresh token"),
        (200, {"access_token": "a", "refresh_token": "r", "token_type": "mac"}, "usable"),
        (400, {"error": "<script>CANARY</script>"}, "HTTP 400"),
    ],
)
def test_other_failures_are_unavailable_and_safe(code: int, body: object, needle: str) -> None:
    fake, clock = setup()
    fake.queue(code, body if isinstance(body, bytes) else json.dumps(body).encode())
    with pytest.raises(ProviderUnavailable) as info:
        run(client(fake, clock).exchange_code("c", VERIFIER, REDIRECT))
    assert needle in str(info.value)
    assert "CANARY" not in str(info.value)


def test_mailbox_address_from_id_token_then_userinfo() -> None:
    fake, clock = setup()
    c = client(fake, clock)
    with_email = ProviderTokens("a", "r", 1, id_token({"aud": CLIENT_ID, "email": "me@x.test"}))
    assert run(c.mailbox_address(with_email)) == "me@x.test"
    assert fake.userinfo_auth == []
    # An ID token for another audience, or without an email: userinfo decides.
    for other in (
        id_token({"aud": "someone-else", "email": "evil@x.test"}),
        id_token({"aud": CLIENT_ID}),
        id_token({"aud": CLIENT_ID, "email": "u@x.test", "email_verified": False}),
        "not-a-jwt",
    ):
        fake.userinfo = (200, {"email": "info@x.test", "email_verified": True})
        assert run(c.mailbox_address(ProviderTokens("CANARY-a", "r", 1, other))) == "info@x.test"
    assert fake.userinfo_auth[-1] == "Bearer CANARY-a"
    fake.userinfo = (200, {"email": "info@x.test", "email_verified": False})
    with pytest.raises(ProviderUnavailable):
        run(c.mailbox_address(ProviderTokens("a", "r", 1, None)))
    fake.userinfo = (401, {"error": "invalid_token"})
    with pytest.raises(ProviderRefused):
        run(c.mailbox_address(ProviderTokens("a", "r", 1, None)))


def test_microsoft_falls_back_to_the_sign_in_name() -> None:
    """Microsoft work accounts may have no ``email`` claim: the UPN is the mailbox."""
    fake, clock = setup()
    c = client(fake, clock, profile("microsoft"))
    tokens = ProviderTokens(
        "a", "r", 1, id_token({"aud": CLIENT_ID, "preferred_username": "u@c.test"})
    )
    assert run(c.mailbox_address(tokens)) == "u@c.test"


def test_provider_timeout_is_unavailable() -> None:
    """A provider that never answers: `ProviderUnavailable` after the timeout, on the clock."""
    from twisted.internet.defer import Deferred

    from mailmcp.provider._client import ProviderClient

    class Hanging:
        def request(self, *a: object, **kw: object) -> Deferred[object]:
            return Deferred()

    clock = Clock()
    c = ProviderClient(profile(), Hanging(), clock, timeout=5)
    d = Deferred.fromCoroutine(c.refresh("r"))
    out: list[object] = []
    d.addErrback(out.append)
    clock.advance(4)
    assert not out
    clock.advance(2)
    assert out and out[0].check(ProviderUnavailable)  # type: ignore[attr-defined]
    assert "in time" in str(out[0].value)  # type: ignore[attr-defined]


def test_credentials_with_tokens_round_trip_and_old_rows_open() -> None:
    """Provider tokens are sealed with the credentials; rows sealed before them still open."""
    imap, smtp = MailServer("imap.x.test", 993, "tls"), MailServer("smtp.x.test", 465, "tls")
    tokens = ProviderTokens("CANARY-a", "CANARY-r", 77, id_token="CANARY-i")
    creds = Credentials(
        "u@x.test", "U", imap, "u@x.test", "", smtp, "u@x.test", "",
        imap_auth="xoauth2", provider="client-7", oauth=tokens,
    )  # fmt: skip
    assert "CANARY" not in repr(creds)
    key = new_grant_key()
    sealed = seal_credentials(key, "g", creds)
    assert b"CANARY" not in sealed
    back = open_credentials(key, "g", sealed)
    assert back == creds
    old = Credentials("u@x.test", "U", imap, "u", "pw", smtp, "u", "pw")
    assert b"oauth" not in old.to_json()  # the old format, byte for byte
    assert open_credentials(key, "g", seal_credentials(key, "g", old)).imap_auth == "password"
