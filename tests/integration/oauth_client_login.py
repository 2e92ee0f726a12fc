"""
What the plain-asyncio ``mcp`` client scripts (`acceptance_client.py`,
`oauth_mcp_client.py`) share: token storage for a pre-registered client, the
`OAuthClientProvider` built on it, and the browser they play (GET the login
page, POST the credentials with the CSRF cookie, read the 303).

The scripts run as ``python SCRIPT``, so they import this module by its bare
name from their own folder.
"""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)


class Storage:
    def __init__(self, info: OAuthClientInformationFull) -> None:
        self.info: OAuthClientInformationFull | None = info
        self.tokens: OAuthToken | None = None
        self.registered = False

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.registered = True
        self.info = client_info


def ticked_scopes(page: str) -> list[str]:
    """The scope checkboxes the login page shows ticked."""
    return re.findall(r'<input type="checkbox" name="scope" value="([^"]+)"[^>]* checked="checked"', page)


async def log_in(cfg: dict[str, Any], authorization_url: str, full_name: str,
                 seen: dict[str, Any], got: dict[str, Any]) -> None:
    """
    Play the browser at C{authorization_url} with C{cfg}'s user and password,
    leaving the scope checkboxes as the page ticks them: record
    ``form_status``, ``login_status`` and ``redirect_prefix`` in C{seen}, and
    the redirect's ``code``, ``state`` and ``iss`` in C{got}.
    """
    base = cfg["base"]
    async with httpx2.AsyncClient(follow_redirects=False) as browser:
        page = await browser.get(authorization_url)
        seen["form_status"] = page.status_code
        fields = {html.unescape(k): html.unescape(v) for k, v in
                  re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)}
        fields.update(email=cfg["user"], full_name=full_name, imap_username=cfg["user"],
                      imap_password=cfg["password"], use_same_credentials="1")
        form: dict[str, Any] = {**fields, "scope": ticked_scopes(page.text)}
        # A browser's Origin is scheme://host:port, never the base URL's path.
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(base))
        answer = await browser.post(base + "/oauth/authorize", data=form, headers={"origin": origin})
        seen["login_status"] = answer.status_code
        location = answer.headers.get("location", "")
        seen["redirect_prefix"] = location.split("?")[0]
        query = parse_qs(urlsplit(location).query)
        got.update({k: v[0] for k, v in query.items() if k in ("code", "state", "iss")})


def provider_for(cfg: dict[str, Any], client_name: str,
                 redirect_handler: Callable[[str], Awaitable[None]],
                 got: dict[str, Any]) -> tuple[OAuthClientProvider, Storage]:
    """
    An `OAuthClientProvider` for C{cfg}'s pre-registered client (so no
    dynamic registration happens), whose callback answers what C{got} holds.
    """

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(**got)

    auth_method = cfg["auth_method"]
    info = OAuthClientInformationFull(
        client_id=cfg["client_id"],
        client_secret=cfg.get("client_secret") or None,
        redirect_uris=[cfg["redirect_uri"]],
        token_endpoint_auth_method=auth_method,
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
    )
    storage = Storage(info)
    provider = OAuthClientProvider(
        server_url=cfg["base"] + "/mcp",
        client_metadata=OAuthClientMetadata(
            client_name=client_name, redirect_uris=[cfg["redirect_uri"]],
            grant_types=["authorization_code", "refresh_token"], response_types=["code"],
            token_endpoint_auth_method=auth_method,
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    return provider, storage
