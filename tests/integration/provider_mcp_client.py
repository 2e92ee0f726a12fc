"""
The unmodified ``mcp`` 2.x client (registering itself at ``/oauth/register``)
connecting to a daemon whose default mail profile signs in at an OAuth
provider (issue 18), with a real headless Chromium:

1. The login page offers "Continue with …" and no password field; the user
   types a name and continues; the test provider's consent page is
   approved; the provider sends the browser to
   ``/oauth/provider/callback`` and the daemon back to the client.
2. The client lists tools, reads the mailbox and sends a message.
3. The provider expires the access tokens (``/admin/expire``): the client
   sends again and reads again.
4. The provider revokes consent (``/admin/revoke``): the next send is a tool
   result with ``isError`` telling the user to reconnect.

Usage: python provider_mcp_client.py CONFIG_JSON (prints one JSON object on
its last line).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
from browser_login import chromium, serve_callback
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from oauth_client_login import Storage
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def sign_in(driver: webdriver.Chrome, cfg: dict[str, Any], url: str) -> dict[str, Any]:
    """The login page, 'Continue with …', the provider's consent, back at the client."""
    seen: dict[str, Any] = {}
    driver.get(url)
    seen["login_page"] = driver.page_source
    seen["password_inputs"] = len(driver.find_elements(By.CSS_SELECTOR, "input[type=password]"))
    seen["email_inputs"] = len(driver.find_elements(By.CSS_SELECTOR, "input[name=email]"))
    seen["scope_boxes"] = len(driver.find_elements(By.CSS_SELECTOR, "input[type=checkbox][name=scope]"))
    button = driver.find_element(By.ID, "provider")
    seen["button"] = button.text
    driver.find_element(By.ID, "full_name").send_keys("Provider Tester")
    driver.save_screenshot(f"{cfg['artifacts']}/provider-login-page.png")
    button.click()
    WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(cfg["provider"] + "/authorize"))
    seen["provider_url"] = driver.current_url
    seen["provider_query"] = {k: v[0] for k, v in parse_qs(urlsplit(driver.current_url).query).items()}
    email = driver.find_element(By.NAME, "email")
    email.clear()
    email.send_keys(cfg["user"])
    driver.save_screenshot(f"{cfg['artifacts']}/provider-consent.png")
    driver.find_element(By.ID, "approve").click()
    WebDriverWait(driver, 60).until(lambda d: d.current_url.startswith(cfg["redirect_uri"]))
    seen["final_url"] = driver.current_url
    query = parse_qs(urlsplit(driver.current_url).query)
    seen["got"] = {k: v[0] for k, v in query.items() if k in ("code", "state", "iss")}
    return seen


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)[:2000]


async def main(cfg: dict[str, Any]) -> dict[str, Any]:
    url = cfg["base"] + "/mcp"
    out: dict[str, Any] = {"logins": [], "calls": {}}
    got: dict[str, Any] = {}
    driver = chromium(height=1400)
    callback, cfg["redirect_uri"] = serve_callback()

    async def redirect_handler(authorization_url: str) -> None:
        seen = await asyncio.to_thread(sign_in, driver, cfg, authorization_url)
        out["logins"].append(seen)
        got.clear()
        got.update(seen["got"])

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(**got)

    storage = Storage(None)  # type: ignore[arg-type]
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="provider sign-in test", redirect_uris=[cfg["redirect_uri"]],
            grant_types=["authorization_code", "refresh_token"], response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )

    async def call(name: str, tool: str, arguments: dict[str, Any]) -> None:
        result = await client.call_tool(tool, arguments)
        out["calls"][name] = {"is_error": result.is_error, "text": text_of(result)}

    def send(subject: str) -> dict[str, Any]:
        return {"to": [cfg["recipient"]], "subject": subject, "text_body": "sent with XOAUTH2"}

    admin = httpx2.Client(timeout=10)
    try:
        async with httpx2.AsyncClient(auth=provider, timeout=60) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                out["registered"] = storage.registered
                out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
                await call("list_mailboxes", "list_mailboxes", {})
                await call("read", "list_mail_messages", {"folder": "INBOX"})
                await call("send", "send_mail_message", send(cfg["subjects"][0]))
                # The provider's access tokens expire: refreshed, and on it goes.
                admin.post(cfg["provider"] + "/admin/expire", json={"email": cfg["user"]})
                await call("send_after_expiry", "send_mail_message", send(cfg["subjects"][1]))
                await call("read_after_expiry", "list_mail_messages", {"folder": "INBOX"})
                # The user withdraws consent at the provider.
                admin.post(cfg["provider"] + "/admin/revoke", json={"email": cfg["user"]})
                await call("send_after_revocation", "send_mail_message", send(cfg["subjects"][2]))
                out["logins_before_end"] = len(out["logins"])
    finally:
        admin.close()
        driver.quit()
        callback.shutdown()
    for login in out["logins"]:
        login["login_page_length"] = len(login["login_page"])
    return out


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(main(config))))
