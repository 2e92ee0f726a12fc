"""
The login page under a base URL with a path, in the real Chromium: the page,
its stylesheet and its form all live under the path, and signing in lands on
the client's redirect with a code that redeems at the path's token endpoint.
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

from tests.harness import free_port, generate_client
from tests.integration.chromium import PatientWait as WebDriverWait
from tests.integration.chromium import fill

pytestmark = pytest.mark.integration


def test_login_under_base_path_in_chromium(browser, callback_server, services, daemon_factory) -> None:
    """--base-url .../mail: Chromium loads /mail/oauth/authorize styled, posts to /mail, lands on the redirect."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/mail"
    daemon = daemon_factory(services, "--listen", f"tcp:{port}:interface=127.0.0.1", "--base-url", base)
    client = generate_client(daemon.state_dir, services, "--name", "Base path test")
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {"client_id": client["client_id"], "redirect_uri": callback_server, "response_type": "code",
              "state": "bp", "code_challenge": challenge, "code_challenge_method": "S256",
              "resource": base + "/mcp", "scope": "mail"}
    browser.get(base + "/oauth/authorize?" + urllib.parse.urlencode(params))
    assert "Base path test" in browser.page_source
    # The stylesheet (under /mail) loaded and applies: the SMTP fields are hidden by CSS alone.
    assert browser.execute_script("return document.styleSheets.length") == 1
    assert browser.execute_script("return document.styleSheets[0].cssRules.length") > 0
    assert not browser.find_element(By.ID, "smtp_username").is_displayed()
    assert browser.find_element(By.TAG_NAME, "form").get_attribute("action") == base + "/oauth/authorize"
    fill(browser, "bob@example.test", "bobpw")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "done")))
    final = urllib.parse.urlsplit(browser.current_url)
    query = urllib.parse.parse_qs(final.query)
    assert query["state"] == ["bp"] and query["iss"] == [base]
    form = urllib.parse.urlencode({
        "grant_type": "authorization_code", "code": query["code"][0], "code_verifier": verifier,
        "redirect_uri": callback_server, "client_id": client["client_id"],
        "client_secret": client["client_secret"]}).encode()
    request = urllib.request.Request(base + "/oauth/token", data=form,
                                     headers={"content-type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["token_type"] == "Bearer"
