"""
Socket-free tests of issue 15's parts (`StubTreq`, `Clock`, the memory
store): the verifier's deny-list and last-used writes, the granted scopes
each app shows, and the account page's refusals (no client, CSRF, stale or
foreign sessions, wrong method).
The real-daemon proofs are in tests/integration/test_account_page.py.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from mailmcp._scopes import ALL_SCOPES, DRAFT, LABELS, READ, SEND
from mailmcp.oauth._account_page import FULL_ACCESS, NO_ACCESS, SESSION_LIFETIME, AccountApp
from mailmcp.oauth._clients import open_client
from mailmcp.oauth._grants import (
    TOUCH_INTERVAL,
    AccountGrants,
    CodeRequest,
    Credentials,
    GrantRecord,
    account_index,
    client_ref,
)
from mailmcp.oauth._tokens import InvalidToken
from tests.unit.account_server import AccountServer, session_of, sign_in
from tests.unit.oauth_helpers import BASE, IMAP, REDIRECT, SMTP, make_server, pkce


@pytest.fixture
def server(tmp_path: Path) -> AccountServer:
    return account_server(tmp_path)


def account_server(tmp_path: Path, **config_kw: Any) -> AccountServer:
    s = make_server(tmp_path, server_class=AccountServer, **config_kw)
    assert isinstance(s, AccountServer)
    s.page = StubTreq(AccountApp(s.app, AccountGrants(s.store, s.config.keyring)).app.resource())
    return s


def labels_shown(body: bytes) -> list[list[str]]:
    """Each listed app's capabilities, as shown (FULL_ACCESS / NO_ACCESS when so)."""
    shown = []
    for dd in re.findall(rb'<dd class="app-scopes">(.*?)</dd>', body, re.S):
        items = re.findall(rb'<li class="app-scope">([^<]*)</li>', dd)
        shown.append([i.decode() for i in items] or [dd.decode()])
    return shown


def test_last_used_written_at_most_once_a_minute(server: AccountServer) -> None:
    """Every verified request reads the grant; its last-used time is written once per TOUCH_INTERVAL."""
    tokens = server.tokens()
    writes: list[tuple[str, int]] = []
    original = server.store.touch_grant

    def counting(grant_id: str, when: int) -> Any:
        writes.append((grant_id, when))
        return original(grant_id, when)

    server.store.touch_grant = counting  # type: ignore[method-assign]
    for _ in range(5):
        server.account(tokens["access_token"])
    assert len(writes) == 1
    gid, first = writes[0]
    assert server.store.grants[gid].last_used == first == int(server.clock.seconds())
    server.clock.advance(TOUCH_INTERVAL - 1)
    server.account(tokens["access_token"])
    assert len(writes) == 1
    server.clock.advance(1)
    server.account(tokens["access_token"])
    assert len(writes) == 2 and server.store.grants[gid].last_used == first + TOUCH_INTERVAL


def test_deny_listed_client_is_refused_everywhere(server: AccountServer) -> None:
    """After deny_client: the cached token is refused by the verifier, /oauth/token says invalid_client, /oauth/authorize 403."""
    tokens = server.tokens()
    server.account(tokens["access_token"])  # now in the verifier's cache
    ended = server.run(server.store.deny_client(client_ref(server.client_id)))
    assert ended == 1
    with pytest.raises(InvalidToken):
        server.account(tokens["access_token"])
    response, body = server.refresh(tokens["refresh_token"])
    assert response.code == 401 and body["error"] == "invalid_client"
    response, page = server.request("GET", "/oauth/authorize", params=server.authorize_params())
    assert response.code == 403 and b"revoked" in page
    # The public client of the same servers is another client: unaffected.
    response, _ = server.request("GET", "/oauth/authorize",
                                 params=server.authorize_params(client_id=server.public_id))
    assert response.code == 200


def test_verifier_refuses_a_grant_revoked_meanwhile(server: AccountServer) -> None:
    """The verifier's cache never outlives the grant row: revoke_all ends a cached token at once."""
    tokens = server.tokens()
    server.account(tokens["access_token"])
    accounts = AccountGrants(server.store, server.config.keyring)
    assert server.run(Deferred.fromCoroutine(accounts.revoke_all(IMAP, " Alice@Example.test"))) == 1
    with pytest.raises(InvalidToken):
        server.account(tokens["access_token"])


def test_page_needs_a_known_client(server: AccountServer) -> None:
    """Without a client id (or with a foreign one) the page explains, with no form and no redirect."""
    response, body = server.account_request("GET")
    assert response.code == 400 and b"client_id" in body and b"<form" not in body
    response, body = server.account_request("GET", params={"client_id": "nonsense"})
    assert response.code == 400 and b"not issued by this server" in body


def test_sign_in_lists_and_never_echoes_the_password(server: AccountServer) -> None:
    """A correct sign-in shows the app (name, full access) and a sealed session, never the password."""
    server.tokens()
    response, body = sign_in(server)
    assert response.code == 200, body
    assert b"Test client" in body and b"full access" in body
    assert b"alice-pw" not in body and b"alice@example.test" not in session_of(body).encode()
    assert response.headers.getRawHeaders(b"cache-control") == [b"no-store"]


def test_narrowed_grant_shows_its_scopes_and_refresh_keeps_them(server: AccountServer) -> None:
    """Narrowed to reading on the login page: stored so, shown in the page's words, unchanged by a refresh."""
    server.tokens()  # a full grant beside it
    verifier, challenge = pkce()
    response, body = server.login(params=server.authorize_params(code_challenge=challenge),
                                  extra={"scope": READ})
    assert response.code == 303, body
    code = parse_qs(urlsplit(response.headers.getRawHeaders(b"location")[0].decode()).query)["code"][0]
    response, tokens = server.redeem(code, verifier)
    assert response.code == 200 and tokens["scope"] == READ
    narrowed = [r for r in server.store.grants.values() if r.scope == READ]
    assert len(narrowed) == 1 and narrowed[0].scopes == {READ}
    (full,) = [r for r in server.store.grants.values() if r.scope != READ]
    assert full.scope == " ".join(ALL_SCOPES)
    response, again = server.refresh(tokens["refresh_token"])
    assert response.code == 200 and again["scope"] == READ
    kept = server.store.grants[narrowed[0].grant_id]
    assert kept.generation == 1 and kept.scope == READ
    _, page = sign_in(server)
    assert sorted(labels_shown(page)) == sorted([[FULL_ACCESS], [LABELS[READ]]])
    assert escape(LABELS[SEND]).encode() not in page


def test_max_scope_narrows_what_the_page_shows(tmp_path: Path) -> None:
    """Under --max-scope the page shows what each grant can still do: legacy grants too, and nothing left says so."""
    server = account_server(tmp_path, max_scope=frozenset({READ, SEND}))
    ring = server.config.keyring
    account = account_index(ring, ring.current_kid, IMAP, "alice@example.test")
    now = int(server.clock.seconds())
    for age, scope in enumerate(("", DRAFT, f"{READ} {DRAFT}")):
        gid = f"grant-{age}"
        server.store.grants[gid] = GrantRecord(grant_id=gid, client_ref="c", sealed=b"x",
                                               created=now - 10 + age, expires=now + 600,
                                               account=account, scope=scope)
    _, page = sign_in(server)
    assert labels_shown(page) == [[LABELS[READ], LABELS[SEND]], [NO_ACCESS], [LABELS[READ]]]


def test_a_grant_without_scopes_is_never_stored(server: AccountServer) -> None:
    """An empty scope set would read back as a grant from before scopes (all five): login refuses it."""
    request = CodeRequest(client=open_client(server.codec, server.client_id), redirect_uri=REDIRECT,
                          code_challenge="c", resource=BASE + "/mcp", scopes=frozenset())
    credentials = Credentials(email="a@example.test", full_name="", imap=IMAP, imap_username="a",
                              imap_password="p", smtp=SMTP, smtp_username="a", smtp_password="p")
    with pytest.raises(ValueError, match="at least one scope"):
        server.run(Deferred.fromCoroutine(server.grants.login(request, credentials)))
    assert server.store.grants == {}


def test_wrong_password_is_refused_and_charged(server: AccountServer) -> None:
    """A wrong password: 400 with the IMAP line; the username's failure budget is charged."""
    response, body = sign_in(server, pw="wrong")
    assert response.code == 400
    assert b"IMAP: the mail server rejected this username or password." in body
    assert b'value="wrong"' not in body
    assert any(v[0] == 1 for k, v in server.store.counters.items() if k.startswith("user:"))


def test_csrf_and_action_are_required(server: AccountServer) -> None:
    """No CSRF cookie → 403 and nothing checked; an unknown action → 400."""
    response, body = server.account_post({"action": "sign_in", "imap_username": "alice@example.test",
                                          "imap_password": "alice-pw"}, cookie="")
    assert response.code == 403
    assert server.imap.calls == []
    response, _ = server.account_post({"action": "explode"})
    assert response.code == 400


def test_session_is_bound_to_the_mailbox_and_expires(server: AccountServer) -> None:
    """Bob's session cannot revoke Alice's grant; a session older than SESSION_LIFETIME is refused (403)."""
    server.tokens()
    alice_grant = next(iter(server.store.grants))
    assert server.login("bob@example.test", "bob-pw")[0].code == 303
    _, bob_page = sign_in(server, "bob@example.test", "bob-pw")
    response, body = server.account_post({"action": "revoke", "session": session_of(bob_page),
                                          "grant": alice_grant})
    assert response.code == 200 and b"already disconnected" in body
    assert alice_grant in server.store.grants
    response, body = server.account_post({"action": "revoke", "session": session_of(bob_page),
                                          "grant": "\u00e9" * 32})
    assert response.code == 200 and b"already disconnected" in body
    _, alice_page = sign_in(server)
    server.clock.advance(SESSION_LIFETIME + 1)
    response, body = server.account_post({"action": "revoke_all", "session": session_of(alice_page)})
    assert response.code == 403 and b"expired" in body
    assert alice_grant in server.store.grants


def test_wrong_method(server: AccountServer) -> None:
    response, _ = server.account_request("PUT")
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"GET, HEAD, POST"]


def test_unreadable_deny_list_fails_closed_where_grants_are_made(server: AccountServer) -> None:
    """Store down: the login form still shows (GET), but submitting it (POST) answers 503 and makes no grant."""
    from twisted.internet.defer import fail

    server.store.client_denied = lambda ref: fail(RuntimeError("store down"))  # type: ignore[method-assign]
    response, _ = server.request("GET", "/oauth/authorize", params=server.authorize_params())
    assert response.code == 200
    response, body = server.login()
    assert response.code == 503 and b"temporarily unavailable" in body
    assert server.store.grants == {}


def test_a_grant_from_before_account_indexes_is_listed_after_its_next_use(
    server: AccountServer,
) -> None:
    """
    A grant stored without an account index (made before issue 15) is not on
    the page; the first request with its token fills the index in (one store
    write, not one per request), and the page lists it from then on.
    """
    tokens = server.tokens()
    (gid, record), = server.store.grants.items()
    server.store.grants[gid] = attrs.evolve(record, account="")
    assert b'id="no-apps"' in sign_in(server)[1]
    writes: list[tuple[str, str]] = []
    original = server.store.set_grant_account

    def counting(grant_id: str, account: str) -> Any:
        writes.append((grant_id, account))
        return original(grant_id, account)

    server.store.set_grant_account = counting  # type: ignore[method-assign]
    for _ in range(3):
        assert server.account(tokens["access_token"]).owner == gid
    assert writes == [(gid, record.account)]
    assert server.store.grants[gid] == attrs.evolve(record, last_used=int(server.clock.seconds()))
    response, body = sign_in(server)
    assert response.code == 200 and f'id="app-{gid}"'.encode() in body


def test_default_profile_serves_the_page_without_a_client_id(tmp_path: Path) -> None:
    """
    With a default mail profile, /account needs no client id: the form
    carries none, sign-in checks the profile's IMAP server and lists the
    grants made through any client of that server.
    """
    server = account_server(tmp_path, default_imap=IMAP, default_smtp=SMTP)
    server.tokens()
    response, body = server.account_request("GET")
    assert response.code == 200, body
    assert b'name="client_id"' not in body and f"{IMAP.host}:{IMAP.port}".encode() in body
    cookie = response.headers.getRawHeaders(b"set-cookie")[0].split(b";")[0].decode()
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', body)
    assert csrf is not None
    form = {"action": "sign_in", "csrf_token": csrf.group(1).decode(),
            "email": "alice@example.test", "imap_username": "alice@example.test",
            "imap_password": "alice-pw"}
    response, body = server.account_request(
        "POST", data=form,
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.code == 200, body
    assert b"Test client" in body and b'name="client_id"' not in body
    assert server.imap.calls[-1] == (IMAP.host, IMAP.port, "alice@example.test")
