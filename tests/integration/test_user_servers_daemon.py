"""
``--allow-user-servers`` end to end: a real ``twistd mailmcp`` with no
default mail profile, a client registered at ``/oauth/register`` (so it
brings no servers), and a real headless Chromium on the login page.  The
user types the harness's loopback Dovecot/Postfix (there is no DNS here, so
no SRV prefill: the page must work without it), the code is redeemed and
``list_mailboxes`` answers from Dovecot.  A server the policy refuses gets a
clear error line on the page and no connection at all (OA-32): a plain
loopback listener on a port that is deliberately not widened counts that
nothing reached it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import select
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from tests.hostile import mcp_http
from tests.integration.chromium import PatientWait as WebDriverWait

pytestmark = pytest.mark.integration


@pytest.fixture
def user_servers_daemon(services, daemon_factory) -> Any:
    """A daemon with no --imap-host/--smtp-host, letting users name the harness's TLS ports."""
    allow = f"127.0.0.1:{services.imaps_port},127.0.0.1:{services.smtps_port}"
    return daemon_factory(services, "--allow-user-servers", "--user-servers-allow", allow)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain loopback socket nobody is allowed to make the daemon connect to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def register(daemon: Any, redirect_uri: str) -> str:
    """RFC 7591 registration of a public client (no servers of its own); its client_id."""
    body = json.dumps({
        "client_name": "Own Servers Agent", "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }).encode()
    request = urllib.request.Request(daemon.base_url + "/oauth/register", data=body,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        client_id: str = json.loads(response.read())["client_id"]
    return client_id


def authorize_url(daemon: Any, client_id: str, redirect_uri: str, verifier: str) -> str:
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {
        "client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code",
        "state": "own-servers", "code_challenge": challenge, "code_challenge_method": "S256",
        "resource": daemon.base_url + "/mcp", "scope": "mail",
    }
    return daemon.base_url + "/oauth/authorize?" + urllib.parse.urlencode(params)


def replaced(element: Any) -> Any:
    """
    A wait condition: the page holding C{element} has been replaced.  As
    Selenium's ``staleness_of``, but also when Chrome, asked about the old
    element while the new page loads, answers "Node with given id does not
    belong to the document" instead of a stale-element error (it did once
    in CI).
    """

    def check(_driver: Any) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return True
            raise
        return False

    return check


def type_into(browser, field: str, value: str) -> None:
    element = browser.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def fill_login(browser, user: str, password: str, imap: tuple[str, int],
               smtp: tuple[str, int], security: str = "tls") -> None:
    """Type the account and both servers as a user would."""
    for field, value in (("email", user), ("full_name", "Own Servers"),
                         ("imap_username", user), ("imap_password", password)):
        type_into(browser, field, value)
    for kind, (host, port) in (("imap", imap), ("smtp", smtp)):
        type_into(browser, f"{kind}_host", host)
        type_into(browser, f"{kind}_port", str(port))
        Select(browser.find_element(By.ID, f"{kind}_security")).select_by_value(security)


def token_request(daemon: Any, form: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(daemon.base_url + "/oauth/token",
                                     data=urllib.parse.urlencode(form).encode(),
                                     headers={"content-type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as response:
        tokens: dict[str, Any] = json.loads(response.read())
    return tokens


def mailbox_names(daemon: Any, access_token: str) -> str:
    result = mcp_http.call(daemon.base_url, access_token, "list_mailboxes")
    text = "".join(c.get("text", "") for c in result["content"])
    assert result.get("isError") is not True, text
    return text


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_user_named_servers_log_in_and_list_mailboxes(
    browser, services, daemon_factory, callback_server, artifacts, security
) -> None:
    """OA-32: a registered client, no default profile: the page asks for the servers (empty, no SRV), the user types the loopback Dovecot/Postfix (implicit TLS or STARTTLS), the code redeems and list_mailboxes answers from Dovecot, also after a refresh."""
    imap_port, smtp_port = ((services.imaps_port, services.smtps_port) if security == "tls"
                            else (services.imap_port, services.submission_port))
    daemon = daemon_factory(services, "--allow-user-servers", "--user-servers-allow",
                            f"127.0.0.1:{imap_port},127.0.0.1:{smtp_port}")
    client_id = register(daemon, callback_server)
    verifier = secrets.token_urlsafe(48)
    browser.get(authorize_url(daemon, client_id, callback_server, verifier))
    assert "Own Servers Agent" in browser.page_source
    # Nothing to prefill from: no default profile, and SRV cannot answer here.
    assert browser.find_element(By.ID, "imap_host").get_attribute("value") == ""
    assert browser.find_element(By.ID, "smtp_host").get_attribute("value") == ""
    assert browser.find_element(By.ID, "imap_port").get_attribute("value") == "993"

    # "Find my servers" finds no SRV records (no DNS here): the page comes
    # back with the email kept and the server fields still empty to type in.
    type_into(browser, "email", "alice@example.test")
    before = browser.find_element(By.ID, "email")
    browser.find_element(By.ID, "discover").click()
    WebDriverWait(browser, 30).until(replaced(before))
    assert browser.find_element(By.ID, "email").get_attribute("value") == "alice@example.test"
    assert browser.find_element(By.ID, "imap_host").get_attribute("value") == ""
    assert not browser.find_elements(By.CLASS_NAME, "error-line")

    fill_login(browser, "alice@example.test", "alicepw",
               ("127.0.0.1", imap_port), ("127.0.0.1", smtp_port), security)
    browser.save_screenshot(str(artifacts / f"login-user-servers-{security}.png"))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "done")))
    final = urllib.parse.urlsplit(browser.current_url)
    assert f"{final.scheme}://{final.netloc}{final.path}" == callback_server
    query = urllib.parse.parse_qs(final.query)
    assert query["state"] == ["own-servers"] and query["iss"] == [daemon.base_url]

    tokens = token_request(daemon, {
        "grant_type": "authorization_code", "code": query["code"][0], "code_verifier": verifier,
        "redirect_uri": callback_server, "client_id": client_id,
    })
    assert tokens["token_type"] == "Bearer"
    assert "INBOX" in mailbox_names(daemon, tokens["access_token"])
    # The grant keeps the user's servers: a refreshed token reaches them too.
    refreshed = token_request(daemon, {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id,
    })
    assert "INBOX" in mailbox_names(daemon, refreshed["access_token"])
    assert "alicepw" not in daemon.log_text()


@pytest.mark.parametrize("target", ["unlisted-loopback-port", "private-10-net"])
def test_refused_server_shows_error_and_connects_nowhere(
    browser, services, user_servers_daemon, callback_server, listener, artifacts, target
) -> None:
    """OA-32: a loopback port not in --user-servers-allow, or 10.0.0.1 on 993, answers a clear error line, keeps the user on the page, and the daemon opens no connection."""
    daemon = user_servers_daemon
    client_id = register(daemon, callback_server)
    browser.get(authorize_url(daemon, client_id, callback_server, secrets.token_urlsafe(48)))
    port = listener.getsockname()[1]
    imap = ("127.0.0.1", port) if target == "unlisted-loopback-port" else ("10.0.0.1", 993)
    fill_login(browser, "alice@example.test", "alicepw", imap, ("127.0.0.1", services.smtps_port))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.CLASS_NAME, "error-line")))
    lines = [e.text for e in browser.find_elements(By.CLASS_NAME, "error-line")]
    assert lines == [
        f"IMAP server: {imap[0]} port {imap[1]} is not allowed here "
        "(only public servers on ports 993, 143, 465 and 587)."
    ]
    browser.save_screenshot(str(artifacts / f"login-user-servers-refused-{target}.png"))
    assert urllib.parse.urlsplit(browser.current_url).netloc != urllib.parse.urlsplit(callback_server).netloc
    # What the user typed is kept, the password is not.
    assert browser.find_element(By.ID, "imap_host").get_attribute("value") == imap[0]
    assert browser.find_element(By.ID, "imap_password").get_attribute("value") == ""
    # The page has answered, so any connection would already be queued.
    readable, _, _ = select.select([listener], [], [], 0.5)
    assert readable == []
    assert f"refused user-named IMAP server {imap[0]}:{imap[1]}" in daemon.log_text()


def test_widened_port_is_connected_to(
    browser, services, daemon_factory, callback_server, listener
) -> None:
    """The control for the test above: once --user-servers-allow names the listener's port, the same login does reach it (so the listener would have seen a refused connection), and the failed TLS handshake is a clear error line."""
    port = listener.getsockname()[1]
    daemon = daemon_factory(services, "--allow-user-servers", "--user-servers-allow",
                            f"127.0.0.1:{port},127.0.0.1:{services.smtps_port}")
    client_id = register(daemon, callback_server)
    browser.get(authorize_url(daemon, client_id, callback_server, secrets.token_urlsafe(48)))
    fill_login(browser, "alice@example.test", "alicepw", ("127.0.0.1", port),
               ("127.0.0.1", services.smtps_port))
    # A WebDriver click waits for the answer, which waits for the daemon's
    # handshake: a thread takes the connection and hangs up on it (no TLS).
    taken: list[tuple[str, int]] = []

    def hang_up() -> None:
        readable, _, _ = select.select([listener], [], [], 20)
        if readable:
            connection, peer = listener.accept()
            taken.append(peer)
            connection.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    browser.find_element(By.ID, "submit").click()
    thread.join(25)
    assert len(taken) == 1 and taken[0][0] == "127.0.0.1"
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.CLASS_NAME, "error-line")))
    lines = [e.text for e in browser.find_elements(By.CLASS_NAME, "error-line")]
    assert lines == ["IMAP: the mail server could not be reached securely. Please try again later."]
    assert urllib.parse.urlsplit(browser.current_url).netloc != urllib.parse.urlsplit(callback_server).netloc
