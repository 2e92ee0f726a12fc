"""
The user's account page and the operator's revocation (issue 15), through
the public surface against real daemons, Dovecot and Redis: ``/account`` in
a real headless Chromium (sign in, see two apps, disconnect one: its next
``/mcp`` call is 401, the other's still works), the same page revoking for a
second daemon sharing Redis, wrong passwords throttled with the login page's
budgets, and ``twistd mailmcp-generate --revoke-account`` /
``--revoke-client`` against a running daemon's SQLite file and Redis
(S-08: a user-facing disconnect page and revocation).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx2
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from benchmarks._clients import oauth_login
from benchmarks._http import Connection
from mailmcp._scopes import ALL_SCOPES, LABELS, READ
from tests.harness import Services, generate_client
from tests.integration.chromium import PatientWait as WebDriverWait
from tests.integration.cluster import Cluster
from tests.integration.generate_cli import generate, generate_json
from tests.integration.mcp_probe import mcp_status

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def new_user(services: Services) -> tuple[str, str]:
    user = f"acct-{secrets.token_hex(4)}@example.test"
    password = "pw-" + secrets.token_hex(6)
    services.add_user(user, password)
    return user, password


def login(
    daemon_url: str,
    client: dict[str, Any],
    user: str,
    password: str,
    base: str | None = None,
    scope: str | None = None,
) -> dict[str, Any]:
    """The token response of a login on the page; C{scope}: the boxes left ticked (default: all)."""

    async def run() -> dict[str, Any]:
        conn = Connection(daemon_url, timeout=60)
        try:
            return await oauth_login(base or daemon_url, client, user, password, conn, scope)
        finally:
            conn.close()

    return asyncio.run(run())


class _Forms(HTMLParser):
    """
    The page's forms, each as its hidden fields (and the id of its button),
    and each app's access (its capabilities joined by "; ").
    """

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []
        self.errors: list[str] = []
        self.access: dict[str, str] = {}
        self._in_access = False
        self._in_error = False
        self._in_name = False
        self._name = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"_app": self._name})
        elif tag == "input" and a.get("type") == "hidden" and self.forms:
            self.forms[-1][a["name"] or ""] = a.get("value") or ""
        elif tag == "button" and self.forms:
            self.forms[-1]["_button"] = a.get("id") or ""
        elif tag == "li" and a.get("class") == "error-line":
            self._in_error = True
        elif tag == "div" and a.get("class") == "app-name":
            self._in_name = True
        elif tag == "dd" and a.get("class") == "app-scopes":
            self._in_access = True
            self.access[self._name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "dd":
            self._in_access = False

    def handle_data(self, data: str) -> None:
        if self._in_access and data.strip():
            joined = self.access[self._name]
            self.access[self._name] = f"{joined}; {data}" if joined else data
        if self._in_name:
            self._name = data
            self._in_name = False
        if self._in_error:
            self.errors.append(data)
            self._in_error = False


def parse(html: str) -> _Forms:
    forms = _Forms()
    forms.feed(html)
    return forms


class AccountSession:
    """The account page driven over plain HTTP, as a browser would (cookie jar, forms)."""

    def __init__(self, daemon_url: str, client: dict[str, Any]) -> None:
        self.url = daemon_url + "/account"
        self.client_id = client["client_id"]
        self.http = httpx2.Client(timeout=60)

    def open(self) -> dict[str, str]:
        page = self.http.get(self.url, params={"client_id": self.client_id})
        assert page.status_code == 200, page.text
        return parse(page.text).forms[0]

    def sign_in(self, user: str, password: str) -> httpx2.Response:
        form = self.open()
        form = {k: v for k, v in form.items() if not k.startswith("_")}
        form.update({"email": user, "imap_username": user, "imap_password": password})
        return self.http.post(self.url, data=form)

    def submit(self, form: dict[str, str]) -> httpx2.Response:
        return self.http.post(
            self.url, data={k: v for k, v in form.items() if not k.startswith("_")}
        )


def test_account_page_in_browser_lists_and_revokes(
    browser,
    services: Services,
    daemon_factory,
    artifacts,
) -> None:
    """
    Sign in on /account in Chromium: both connected apps are listed (name,
    access, connected, last used), the one narrowed to reading on the login
    page with only the read capability in the login page's words, the other
    with full access; Disconnect on one makes its next /mcp call 401 while
    the other app's token still works.
    """
    user, password = new_user(services)
    daemon = daemon_factory(services)
    writer = generate_client(daemon.state_dir, services, "--name", "Writer App")
    reader = generate_client(daemon.state_dir, services, "--name", "Reader App")
    full = login(daemon.base_url, writer, user, password)
    narrowed = login(daemon.base_url, reader, user, password, scope=READ)
    assert full["scope"] == " ".join(ALL_SCOPES) and narrowed["scope"] == READ
    t_writer, t_reader = full["access_token"], narrowed["access_token"]
    assert mcp_status(daemon.base_url, t_writer) == 200
    assert mcp_status(daemon.base_url, t_reader) == 200

    browser.get(
        daemon.base_url + "/account?" + urllib.parse.urlencode({"client_id": reader["client_id"]})
    )
    browser.find_element(By.ID, "email").send_keys(user)
    browser.find_element(By.ID, "imap_username").send_keys(user)
    browser.find_element(By.ID, "imap_password").send_keys(password)
    browser.save_screenshot(str(artifacts / "account-sign-in.png"))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.CLASS_NAME, "app")))
    apps = browser.find_elements(By.CLASS_NAME, "app")
    names = [a.find_element(By.CLASS_NAME, "app-name").text for a in apps]
    assert sorted(names) == ["Reader App", "Writer App"]
    access = {
        name: [li.text for li in app.find_elements(By.CLASS_NAME, "app-scope")]
        for name, app in zip(names, apps, strict=True)
    }
    assert access == {"Writer App": [], "Reader App": [LABELS[READ]]}
    writer_access = apps[names.index("Writer App")].find_element(By.CLASS_NAME, "app-scopes")
    assert writer_access.text == "full access"
    for app in apps:
        assert app.find_element(By.CLASS_NAME, "app-connected").text.endswith("UTC")
        # The /mcp calls above count as use.
        assert app.find_element(By.CLASS_NAME, "app-last-used").text != "never"
    assert password not in browser.page_source
    assert browser.execute_script("return document.scripts.length") == 0
    browser.save_screenshot(str(artifacts / "account-apps.png"))

    apps[names.index("Writer App")].find_element(By.CSS_SELECTOR, "button.revoke").click()
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "notice")))
    assert browser.find_element(By.ID, "notice").text == "The app was disconnected."
    names = [e.text for e in browser.find_elements(By.CLASS_NAME, "app-name")]
    assert names == ["Reader App"]
    browser.save_screenshot(str(artifacts / "account-revoked.png"))
    assert mcp_status(daemon.base_url, t_writer) == 401
    assert mcp_status(daemon.base_url, t_reader) == 200

    browser.find_element(By.ID, "revoke-all").click()
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "no-apps")))
    assert browser.find_element(By.ID, "notice").text == "Disconnected 1 app."
    assert mcp_status(daemon.base_url, t_reader) == 401


def test_account_page_revocation_reaches_a_second_daemon_on_redis(
    services: Services, tmp_path: Path
) -> None:
    """Revoking on daemon A's account page makes the token's next call on daemon B (same Redis) 401."""
    cluster = Cluster(services, tmp_path)
    try:
        cluster.start("A")
        cluster.states["B"].mkdir(mode=0o700, parents=True)
        cluster.copy_ring("A", "B")
        cluster.start("B")
        one = generate_client(cluster.states["A"], services, "--name", "One")
        two = generate_client(cluster.states["A"], services, "--name", "Two")
        t_one = cluster.login("A", one)["access_token"]
        b_url = cluster.daemons["B"].base_url
        # Narrowed on B's login page: A's page reads the scope back from Redis.
        t_two = login(b_url, two, "alice@example.test", "alicepw", cluster.base, READ)[
            "access_token"
        ]
        assert mcp_status(b_url, t_one) == 200 and mcp_status(b_url, t_two) == 200

        page = AccountSession(cluster.daemons["A"].base_url, one)
        signed_in = page.sign_in("alice@example.test", "alicepw")
        assert signed_in.status_code == 200, signed_in.text
        assert "alicepw" not in signed_in.text
        assert parse(signed_in.text).access == {"One": "full access", "Two": LABELS[READ]}
        forms = {f["_app"]: f for f in parse(signed_in.text).forms if f.get("action") == "revoke"}
        assert set(forms) == {"One", "Two"}
        assert page.submit(forms["One"]).status_code == 200
        assert mcp_status(b_url, t_one) == 401
        assert mcp_status(b_url, t_two) == 200
        # A stale session field is refused (403), nothing changes.
        stale = dict(forms["Two"], session=forms["Two"]["session"][:-4] + "AAAA")
        assert page.submit(stale).status_code == 403
        assert mcp_status(b_url, t_two) == 200
    finally:
        cluster.stop()


def test_account_page_wrong_password_is_throttled_like_the_login_page(
    services: Services, daemon_factory
) -> None:
    """
    A wrong password on /account shows the IMAP error; the failures spend
    the login page's per-username budget, so the next attempt (there or on
    the login page) is 429; the CSRF token is required.
    """
    user, password = new_user(services)
    daemon = daemon_factory(services, "--login-failures-per-user", "2")
    client = generate_client(daemon.state_dir, services, "--name", "Throttled")
    page = AccountSession(daemon.base_url, client)

    no_csrf = page.open()
    no_csrf.update({"csrf_token": "x" * 43, "imap_username": user, "imap_password": password})
    assert page.submit(no_csrf).status_code == 403

    for _ in range(2):
        wrong = page.sign_in(user, "not-the-password")
        assert wrong.status_code == 400
        assert parse(wrong.text).errors == [
            "IMAP: the mail server rejected this username or password."
        ]
        assert "not-the-password" not in wrong.text
    throttled = page.sign_in(user, password)
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"]
    assert "Too many sign-in attempts" in throttled.text
    with pytest.raises(Exception, match="429"):
        login(daemon.base_url, client, user, password)
    assert password not in daemon.log_text()


def test_operator_revoke_account_on_sqlite(
    services: Services, daemon_factory, tmp_path: Path
) -> None:
    """
    ``mailmcp-generate --revoke-account`` on the running daemon's SQLite
    file ends every grant of that mailbox (count printed): the tokens' next
    /mcp call is 401, the refresh token is invalid_grant; other mailboxes
    keep working.
    """
    user, password = new_user(services)
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services, "--name", "Ops")
    mine = [login(daemon.base_url, client, user, password) for _ in range(2)]
    other = login(daemon.base_url, client, "bob@example.test", "bobpw")
    result = generate_json(
        tmp_path,
        "--state-dir",
        str(daemon.state_dir),
        "--revoke-account",
        user.upper(),
        "--imap-host",
        "localhost",
        "--imap-port",
        str(services.imaps_port),
    )
    assert result == {
        "revoked_account": user.upper(),
        "imap": f"localhost:{services.imaps_port}",
        "grants_ended": 2,
    }
    for tokens in mine:
        assert mcp_status(daemon.base_url, tokens["access_token"]) == 401
    refreshed = httpx2.post(
        daemon.base_url + "/oauth/token",
        timeout=30,
        data={
            "grant_type": "refresh_token",
            "refresh_token": mine[0]["refresh_token"],
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert mcp_status(daemon.base_url, other["access_token"]) == 200


def test_operator_revoke_client_on_redis(
    services: Services, daemon_factory, tmp_path: Path
) -> None:
    """
    ``mailmcp-generate --revoke-client`` on the daemon's Redis store: that
    client's grants end (/mcp 401), its refresh is invalid_client and its
    authorization page is refused; another client is untouched.
    """
    user, password = new_user(services)
    prefix_db = f"redis://127.0.0.1:{services.redis_port}/3"
    daemon = daemon_factory(services, "--store", prefix_db)
    bad = generate_client(daemon.state_dir, services, "--name", "Bad")
    good = generate_client(daemon.state_dir, services, "--name", "Good")
    t_bad = login(daemon.base_url, bad, user, password)
    t_good = login(daemon.base_url, good, user, password)
    result = generate_json(
        tmp_path,
        "--state-dir",
        str(daemon.state_dir),
        "--store",
        prefix_db,
        "--revoke-client",
        bad["client_id"],
    )
    assert result["grants_ended"] == 1
    assert mcp_status(daemon.base_url, t_bad["access_token"]) == 401
    assert mcp_status(daemon.base_url, t_good["access_token"]) == 200
    refreshed = httpx2.post(
        daemon.base_url + "/oauth/token",
        timeout=30,
        data={
            "grant_type": "refresh_token",
            "refresh_token": t_bad["refresh_token"],
            "client_id": bad["client_id"],
            "client_secret": bad["client_secret"],
        },
    )
    assert refreshed.status_code == 401 and refreshed.json()["error"] == "invalid_client"
    with pytest.raises(Exception, match="403"):
        login(daemon.base_url, bad, user, password)
    assert login(daemon.base_url, good, user, password)["access_token"]
    # Again, in text: idempotent, nothing left to end.
    again = generate(tmp_path, "--state-dir", str(daemon.state_dir), "--store", prefix_db,
                     "--revoke-client", bad["client_id"])
    assert again.returncode == 0 and again.stderr == ""
    assert again.stdout.endswith("is revoked for good; ended 0 grant(s).\n")


def test_operator_revoke_needs_the_daemons_state(tmp_path: Path) -> None:
    """Without a key ring or store in --state-dir, --revoke-account says so in one line and exits 1."""
    result = generate(
        tmp_path,
        "--state-dir",
        str(tmp_path / "empty"),
        "--revoke-account",
        "x@example.test",
        "--imap-host",
        "localhost",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("mailmcp-generate: no key ring in")
    assert "Traceback" not in result.stderr


def test_account_page_without_client_id_uses_the_default_profile(
    services: Services, daemon_factory
) -> None:
    """
    A daemon with a default mail profile serves /account without
    ``?client_id=``: the user signs in against the profile's IMAP server,
    sees the app connected through it and disconnects it (its next /mcp
    call is 401).  A daemon without one answers a page that names the
    missing parameter: 400, no form, no traceback.
    """
    user, password = new_user(services)
    profile = [
        "--imap-host", "localhost", "--imap-port", str(services.imaps_port),
        "--smtp-host", "localhost", "--smtp-port", str(services.smtps_port),
    ]
    daemon = daemon_factory(services, *profile)
    client = generate_client(daemon.state_dir, services, "--name", "Profile App")
    token = login(daemon.base_url, client, user, password)["access_token"]
    assert mcp_status(daemon.base_url, token) == 200

    page = AccountSession(daemon.base_url, {"client_id": None})
    http = page.http
    shown = http.get(page.url)
    assert shown.status_code == 200, shown.text
    form = parse(shown.text).forms[0]
    assert "client_id" not in form and f"localhost:{services.imaps_port}" in shown.text
    form = {k: v for k, v in form.items() if not k.startswith("_")}
    form.update({"email": user, "imap_username": user, "imap_password": password})
    signed_in = http.post(page.url, data=form)
    assert signed_in.status_code == 200, signed_in.text
    assert password not in signed_in.text
    assert parse(signed_in.text).access == {"Profile App": "full access"}
    revoke = next(f for f in parse(signed_in.text).forms if f.get("action") == "revoke")
    assert "client_id" not in revoke
    done = page.submit(revoke)
    assert done.status_code == 200 and "The app was disconnected." in done.text
    assert mcp_status(daemon.base_url, token) == 401

    bare = daemon_factory(services)
    missing = httpx2.get(bare.base_url + "/account", timeout=60)
    assert missing.status_code == 400
    assert "client_id" in missing.text and "<form" not in missing.text
    assert "Traceback" not in missing.text and "Traceback" not in bare.log_text()


def test_a_grant_from_before_account_indexes_is_listed_after_its_next_use(
    services: Services, daemon_factory
) -> None:
    """
    A grant whose row has no account index (as grants made before the
    account page were stored) is not on the page; its next /mcp call fills
    the index in, and the page lists it from then on (real daemon, SQLite).
    """
    user, password = new_user(services)
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services, "--name", "Old App")
    token = login(daemon.base_url, client, user, password)["access_token"]
    db = sqlite3.connect(daemon.state_dir / "mailmcp.sqlite3", timeout=30)
    try:
        with db:
            assert db.execute("UPDATE grants SET account = ''").rowcount == 1
    finally:
        db.close()
    page = AccountSession(daemon.base_url, client)
    before = page.sign_in(user, password)
    assert before.status_code == 200 and 'id="no-apps"' in before.text
    assert mcp_status(daemon.base_url, token) == 200
    after = page.sign_in(user, password)
    assert after.status_code == 200
    assert parse(after.text).access == {"Old App": "full access"}
