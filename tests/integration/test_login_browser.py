"""
The login page in a real headless Chromium (selenium + chromedriver), against
a real daemon and the real Dovecot/Postfix: the "same credentials" checkbox
hides the SMTP fields with CSS alone, a wrong password shows the error and
keeps the username, and a correct login lands on the loopback redirect with a
code that the token endpoint accepts.  Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import urllib.parse
import urllib.request

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from tests.harness import generate_client
from tests.integration.chromium import PatientWait as WebDriverWait
from tests.integration.chromium import fill

pytestmark = pytest.mark.integration


@pytest.fixture
def flow(services, daemon_factory, callback_server):
    daemon = daemon_factory(services)
    client = generate_client(daemon.state_dir, services, "--name", "Browser test")
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = "browser-" + secrets.token_hex(4)
    params = {
        "client_id": client["client_id"], "redirect_uri": callback_server, "response_type": "code",
        "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
        "resource": daemon.base_url + "/mcp", "scope": "mail",
    }
    url = daemon.base_url + "/oauth/authorize?" + urllib.parse.urlencode(params)
    return {"daemon": daemon, "client": client, "verifier": verifier, "state": state, "url": url,
            "redirect_uri": callback_server}


def test_same_credentials_checkbox_hides_smtp_fields(browser, flow, artifacts) -> None:
    """Checked (the default), the SMTP fields are hidden; unchecked they show; no script involved."""
    browser.get(flow["url"])
    smtp_user = browser.find_element(By.ID, "smtp_username")
    box = browser.find_element(By.ID, "use_same_credentials")
    assert box.is_selected()
    assert not smtp_user.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "label[for=use_same_credentials]").click()
    assert not box.is_selected()
    assert smtp_user.is_displayed()
    assert browser.find_element(By.ID, "smtp_password").is_displayed()
    browser.save_screenshot(str(artifacts / "login-smtp-fields.png"))
    browser.find_element(By.CSS_SELECTOR, "label[for=use_same_credentials]").click()
    assert not smtp_user.is_displayed()
    assert browser.execute_script("return document.scripts.length") == 0


def test_wrong_password_shows_error(browser, flow, artifacts) -> None:
    """A wrong password re-renders the page with the IMAP error line, username kept, password empty."""
    browser.get(flow["url"])
    fill(browser, "alice@example.test", "not-the-password")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.CLASS_NAME, "error-line")))
    lines = [e.text for e in browser.find_elements(By.CLASS_NAME, "error-line")]
    assert lines == ["IMAP: the mail server rejected this username or password."]
    assert "Sign-in failed" in browser.find_element(By.CLASS_NAME, "error-generic").text
    assert browser.find_element(By.ID, "imap_username").get_attribute("value") == "alice@example.test"
    assert browser.find_element(By.ID, "imap_password").get_attribute("value") == ""
    assert "not-the-password" not in browser.page_source
    browser.save_screenshot(str(artifacts / "login-wrong-password.png"))


def test_login_lands_on_redirect_with_code(browser, flow, artifacts) -> None:
    """Typing correct credentials and submitting lands on the registered loopback redirect with code, state and iss; the code redeems."""
    browser.get(flow["url"])
    assert "Browser test" in browser.page_source
    assert "127.0.0.1" in browser.find_element(By.CLASS_NAME, "redirect-host").text
    fill(browser, "bob@example.test", "bobpw")
    browser.save_screenshot(str(artifacts / "login-page.png"))
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "done")))
    final = urllib.parse.urlsplit(browser.current_url)
    assert f"{final.scheme}://{final.netloc}{final.path}" == flow["redirect_uri"]
    query = urllib.parse.parse_qs(final.query)
    assert query["state"] == [flow["state"]]
    assert query["iss"] == [flow["daemon"].base_url]
    browser.save_screenshot(str(artifacts / "login-redirected.png"))

    form = urllib.parse.urlencode({
        "grant_type": "authorization_code", "code": query["code"][0], "code_verifier": flow["verifier"],
        "redirect_uri": flow["redirect_uri"], "client_id": flow["client"]["client_id"],
        "client_secret": flow["client"]["client_secret"],
    }).encode()
    request = urllib.request.Request(flow["daemon"].base_url + "/oauth/token", data=form,
                                     headers={"content-type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as response:
        tokens = json.loads(response.read())
    assert tokens["token_type"] == "Bearer" and tokens["access_token"] and tokens["refresh_token"]
