"""
``/account`` for a provider user (issue 18) through the public surface: a
real daemon whose default profile signs in at the harness's test OAuth
provider (``--imap-auth xoauth2``), the real Dovecot (``oauth2`` passdb),
and a real headless Chromium on mailmcp's pages and the provider's consent
page.

The user connects an app with "Continue with …", opens ``/account``, signs
in there with "Continue with …" too (no password field anywhere), sees the
app, disconnects it, and the app's token then gets 401 at ``/mcp``.  No
provider token appears in the daemon's log, the pages or the URLs (OA-51).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import urllib.parse
from typing import Any

import httpx2
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from tests.integration.browser_login import serve_callback
from tests.integration.chromium import PatientWait as WebDriverWait
from tests.integration.mcp_probe import mcp_status
from tests.integration.provider_profile import TOKEN_SHAPES, provider_args

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def consent(driver: webdriver.Chrome, provider: str, user: str) -> str:
    """At the test provider's sign-in page: sign in as C{user} and approve; the provider URL."""
    WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(provider + "/authorize"))
    url = str(driver.current_url)
    email = driver.find_element(By.NAME, "email")
    email.clear()
    email.send_keys(user)
    driver.find_element(By.ID, "approve").click()
    return url


def test_provider_user_sees_and_disconnects_an_app_on_the_account_page(
    services: Any, daemon_factory: Any, browser: webdriver.Chrome, artifacts: Any
) -> None:
    """Connect with "Continue with …", then /account with "Continue with …": listed, disconnected, 401."""
    op = services.oauth_provider
    user = f"p18-acct-{secrets.token_hex(4)}@example.test"
    op.add_user(user)
    daemon = daemon_factory(services, *provider_args(services))
    base = daemon.base_url
    callback_server, redirect = serve_callback()
    try:
        # 1. An app (RFC 7591) connects: "Continue with …" at the provider.
        client_id = httpx2.post(
            base + "/oauth/register",
            timeout=30,
            json={
                "redirect_uris": [redirect],
                "token_endpoint_auth_method": "none",
                "client_name": "Provider App",
            },
        ).json()["client_id"]
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        browser.get(
            base
            + "/oauth/authorize?"
            + urllib.parse.urlencode(
                {
                    "client_id": client_id,
                    "redirect_uri": redirect,
                    "response_type": "code",
                    "state": "app-state",
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                }
            )
        )
        browser.find_element(By.ID, "full_name").send_keys("Provider User")
        browser.find_element(By.ID, "provider").click()
        consent(browser, op.issuer, user)
        WebDriverWait(browser, 60).until(lambda d: d.current_url.startswith(redirect + "?"))
        code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(browser.current_url).query))[
            "code"
        ]
        tokens = httpx2.post(
            base + "/oauth/token",
            timeout=30,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": verifier,
                "redirect_uri": redirect,
                "client_id": client_id,
            },
        ).json()
        access = tokens["access_token"]
        assert mcp_status(base, access) == 200

        # 2. /account: no password field, "Continue with …".
        browser.get(base + "/account")
        sign_in_page = browser.page_source
        assert browser.find_elements(By.CSS_SELECTOR, "input[type=password]") == []
        assert browser.find_elements(By.NAME, "imap_username") == []
        button = browser.find_element(By.ID, "provider")
        assert button.text == "Continue with 127.0.0.1"
        browser.save_screenshot(str(artifacts / "account-provider-sign-in.png"))
        button.click()
        provider_url = consent(browser, op.issuer, user)
        assert "code_challenge_method=S256" in provider_url

        # 3. Back on the account page, signed in: the app is listed.
        WebDriverWait(browser, 60).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "li.app"))
        )
        apps = browser.find_elements(By.CSS_SELECTOR, "li.app")
        assert len(apps) == 1
        assert apps[0].find_element(By.CLASS_NAME, "app-name").text == "Provider App"
        listed_page, listed_url = browser.page_source, browser.current_url
        # Not left at the callback URL (the provider's code): on /account itself.
        assert listed_url == base + "/account"
        browser.save_screenshot(str(artifacts / "account-provider-apps.png"))

        # 4. Disconnect: the app's token is refused at /mcp.
        apps[0].find_element(By.CSS_SELECTOR, "button.revoke").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "no-apps")))
        assert "The app was disconnected." in browser.find_element(By.ID, "notice").text
        assert mcp_status(base, access) == 401
    finally:
        callback_server.shutdown()
        callback_server.server_close()

    # Nothing of the provider's tokens in the log, the pages or the URLs;
    log = daemon.log_text()
    assert TOKEN_SHAPES.findall(log) == []
    assert TOKEN_SHAPES.findall(sign_in_page + listed_page + listed_url + provider_url) == []
    stats = op.stats()[user]
    assert stats["code_exchanges"] == 2  # the connection and the account-page sign-in
    for secret in stats.get("refresh_tokens_issued", []):
        assert secret not in log + listed_page
    assert "Traceback" not in log
