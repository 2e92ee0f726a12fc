"""
The test OAuth provider's sign-in page in a real browser (headless Chromium):
what mailmcp's "Continue with …" sends the user to must work with clicks,
not only with `OAuthProviderHandle.approve`.
"""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from tests.harness import OAuthProviderHandle, Services
from tests.integration.browser_login import chromium, serve_callback
from tests.integration.chromium import PatientWait as WebDriverWait
from tests.oauth_provider import s256

pytestmark = pytest.mark.integration


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def callback() -> Iterator[str]:
    """A loopback page at .../oauth/provider/callback the provider may redirect to."""
    server, uri = serve_callback()
    try:
        yield uri.rsplit("/", 1)[0] + "/base/oauth/provider/callback"
    finally:
        server.shutdown()
        server.server_close()


def test_sign_in_page_approve_and_deny_with_clicks(
    services: Services, browser: webdriver.Chrome, callback: str
) -> None:
    """login_hint prefills the email field; #approve lands on the callback with a code that
    exchanges for tokens, #deny with error=access_denied; state comes back both times."""
    provider: OAuthProviderHandle = services.oauth_provider
    email = f"browser-{secrets.token_hex(3)}@example.test"
    provider.add_user(email)
    verifier = secrets.token_urlsafe(48)

    def open_page(state: str) -> None:
        browser.get(provider.authorize_url + "?" + urllib.parse.urlencode({
            "response_type": "code", "client_id": provider.client_id, "redirect_uri": callback,
            "scope": provider.scope, "state": state, "code_challenge": s256(verifier),
            "code_challenge_method": "S256", "login_hint": email,
        }))

    def landed() -> dict[str, str]:
        WebDriverWait(browser, 15).until(ec.presence_of_element_located((By.ID, "done")))
        assert browser.current_url.startswith(callback + "?")
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(browser.current_url).query))

    open_page("first")
    field = browser.find_element(By.NAME, "email")
    assert field.get_attribute("value") == email
    browser.find_element(By.ID, "approve").click()
    answer = landed()
    assert answer["state"] == "first"
    tokens = provider.token({"grant_type": "authorization_code", "code": answer["code"],
                             "redirect_uri": callback, "code_verifier": verifier})
    assert tokens["token_type"] == "Bearer"

    open_page("second")
    browser.find_element(By.ID, "deny").click()
    assert landed() == {"error": "access_denied", "state": "second"}
