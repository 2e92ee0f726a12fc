"""
The unmodified ``mcp`` 2.x client connecting with nothing but the server
URL -- by its Client ID Metadata Document (``client_metadata_url``) or by
dynamic client registration (no client information at all) -- while a real
headless Chromium completes mailmcp's login page; then it lists tools and
calls one.

The client only accepts an ``https`` metadata URL; the test serves the
document on loopback http (allowed by the daemon's
``--client-metadata-allow``), so that one URL check of the client is
relaxed here.  Nothing on the server side is replaced.

Usage: python oauth_url_client.py CONFIG_JSON   (prints one JSON object)
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.parse
from typing import Any

import httpx2
import mcp.client.auth.oauth2 as oauth2
from browser_login import chromium, serve_callback
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait


class Storage:
    def __init__(self) -> None:
        self.info: OAuthClientInformationFull | None = None
        self.tokens: OAuthToken | None = None
        self.registered = False

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.registered = (
            client_info.client_id is not None and not client_info.client_id.startswith("http")
        )
        self.info = client_info


def browser_login(cfg: dict[str, Any], url: str, out: dict[str, Any]) -> dict[str, str]:
    """Chromium opens the login page, types the credentials, submits, lands on the callback."""
    driver = chromium()
    try:
        driver.get(url)
        out["page_names_client"] = cfg["client_name"] in driver.page_source
        out["page_redirect_host"] = driver.find_element(By.CLASS_NAME, "redirect-host").text
        for field, value in (
            ("email", cfg["user"]),
            ("full_name", "URL Client"),
            ("imap_username", cfg["user"]),
            ("imap_password", cfg["password"]),
        ):
            driver.find_element(By.ID, field).send_keys(value)
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, "done")))
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query)
        return {k: v[0] for k, v in query.items() if k in ("code", "state", "iss")}
    finally:
        driver.quit()


async def main(cfg: dict[str, Any]) -> dict[str, Any]:
    callback, redirect_uri = serve_callback()
    out: dict[str, Any] = {}
    got: dict[str, str] = {}

    async def redirect_handler(authorization_url: str) -> None:
        out["authorization_client_id"] = urllib.parse.parse_qs(
            urllib.parse.urlsplit(authorization_url).query
        )["client_id"][0]
        got.update(await asyncio.to_thread(browser_login, cfg, authorization_url, out))

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(**got)

    metadata_url = cfg.get("client_metadata_url")
    if metadata_url:
        # The client insists on https; the document is on loopback http here.
        oauth2.is_valid_client_metadata_url = lambda url: bool(url)  # type: ignore[attr-defined]
    storage = Storage()
    provider = OAuthClientProvider(
        server_url=cfg["base"] + "/mcp",
        client_metadata=OAuthClientMetadata(
            client_name=cfg["client_name"],
            redirect_uris=[redirect_uri],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method=cfg.get("auth_method", "none"),
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=metadata_url,
    )
    try:
        async with httpx2.AsyncClient(auth=provider, timeout=60) as http:
            async with Client(
                streamable_http_client(cfg["base"] + "/mcp", http_client=http)
            ) as client:
                tools = await client.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)
                result = await client.call_tool(cfg["call_tool"], {})
                out["call_is_error"] = result.is_error
                out["call_text"] = "".join(getattr(c, "text", "") for c in result.content)[:2000]
    finally:
        callback.shutdown()
    out["registered_dynamically"] = storage.registered
    out["client_id"] = storage.info.client_id if storage.info else None
    out["got_refresh_token"] = bool(storage.tokens and storage.tokens.refresh_token)
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
