"""
The unmodified ``mcp`` 2.x client's `OAuthClientProvider` through a scope
step-up, with a real headless Chromium on the login page.

1. The first authorization: the user unticks everything but "Read and
   search your mail" and signs in; the client lists its tools.
2. With that read-only token, a scripted ``tools/call send_mail_message``
   (subject ``refused_subject``) records the 403 answer.
3. The client itself calls ``send_mail_message`` (subject ``sent_subject``):
   the 403 ``insufficient_scope`` makes the provider authorize again with
   the challenged scope; the browser shows what that asks for, the user
   keeps what the challenge named ticked and signs in; the provider retries
   the call.

Every ``/mcp`` answer the client saw is recorded (status and
``WWW-Authenticate``).  Usage: python scopes_mcp_client.py CONFIG_JSON
(prints one JSON object on its last line).
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
from mcp.client.streamable_http import streamable_http_client
from oauth_client_login import provider_for
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def sign_in(driver: webdriver.Chrome, cfg: dict[str, Any], url: str, keep: set[str] | None,
            shot: str) -> dict[str, Any]:
    """
    Open C{url}, untick every scope not in C{keep} (None: leave as offered),
    sign in, and return what the page offered and where it landed.
    """
    driver.get(url)
    boxes = driver.find_elements(By.CSS_SELECTOR, "input[type=checkbox][name=scope]")
    offered = {box.get_attribute("value"): box.is_selected() for box in boxes}
    labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "li.scope label")]
    if keep is not None:
        for box in boxes:
            if box.is_selected() != (box.get_attribute("value") in keep):
                box.click()
    driver.find_element(By.ID, "email").send_keys(cfg["user"])
    driver.find_element(By.ID, "full_name").send_keys("Scope Tester")
    driver.find_element(By.ID, "imap_username").send_keys(cfg["user"])
    driver.find_element(By.ID, "imap_password").send_keys(cfg["password"])
    driver.save_screenshot(f"{cfg['artifacts']}/{shot}.png")
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(cfg["redirect_uri"]))
    query = parse_qs(urlsplit(driver.current_url).query)
    return {"offered": offered, "labels": labels,
            "got": {k: v[0] for k, v in query.items() if k in ("code", "state", "iss")}}


def challenged(answers: list[list[Any]]) -> str:
    """The ``scope`` of the last 403 challenge the client saw."""
    header = next(h for status, h in reversed(answers) if status == 403)
    return header.split('scope="', 1)[1].split('"', 1)[0]


def send_arguments(cfg: dict[str, Any], subject: str) -> dict[str, Any]:
    return {"to": [cfg["recipient"]], "subject": subject, "text_body": "scope test"}


async def main(cfg: dict[str, Any]) -> dict[str, Any]:
    url = cfg["base"] + "/mcp"
    out: dict[str, Any] = {"logins": [], "mcp_answers": []}
    got: dict[str, Any] = {}
    driver = chromium(height=1400)
    callback, cfg["redirect_uri"] = serve_callback()

    async def redirect_handler(authorization_url: str) -> None:
        first = not out["logins"]
        # First the user allows reading only; at the step-up, what the 403
        # challenge named (the client may ask for more: the union of all it
        # ever asked, SEP-2350).
        keep = {"mail.read"} if first else set(challenged(out["mcp_answers"]).split())
        # Selenium is blocking: off the event loop.
        seen = await asyncio.to_thread(sign_in, driver, cfg, authorization_url, keep,
                                       "scopes-first" if first else "scopes-step-up")
        seen["requested_scope"] = parse_qs(urlsplit(authorization_url).query).get("scope", [None])[0]
        out["logins"].append(seen)
        got.clear()
        got.update(seen["got"])

    async def record(response: httpx2.Response) -> None:
        if response.request.url.path == "/mcp":
            out["mcp_answers"].append([response.status_code, response.headers.get("www-authenticate")])

    provider, storage = provider_for(cfg, "scopes test", redirect_handler, got)
    try:
        async with httpx2.AsyncClient(auth=provider, timeout=60,
                                      event_hooks={"response": [record]}) as http:
            async with Client(streamable_http_client(url, http_client=http)) as client:
                out["tools_first"] = sorted(t.name for t in (await client.list_tools()).tools)
                assert storage.tokens is not None
                out["scope_first"] = storage.tokens.scope
                # 2. the read-only token, scripted: the raw 403.
                async with httpx2.AsyncClient(timeout=60) as raw:
                    refused = await raw.post(url, json={
                        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                        "params": {"name": "send_mail_message",
                                   "arguments": send_arguments(cfg, cfg["refused_subject"])}},
                        headers={"accept": "application/json, text/event-stream",
                                 "mcp-protocol-version": "2025-11-25",
                                 "authorization": "Bearer " + storage.tokens.access_token})
                    out["raw_refusal"] = [refused.status_code, refused.headers.get("www-authenticate"),
                                          refused.json()]
                # 3. the client's own call: 403, step-up, retry.
                result = await client.call_tool(
                    "send_mail_message", send_arguments(cfg, cfg["sent_subject"]))
                out["send_is_error"] = result.is_error
                out["send_text"] = "".join(getattr(c, "text", "") for c in result.content)[:1000]
                out["scope_after"] = storage.tokens.scope if storage.tokens else None
                # The list is per grant (cacheScope private), and the client's
                # cache does not know the grant changed: ask again.
                listing = await client.list_tools(cache_mode="refresh")
                out["tools_after"] = sorted(t.name for t in listing.tools)
    finally:
        driver.quit()
        callback.shutdown()
    return out


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(main(config))))
