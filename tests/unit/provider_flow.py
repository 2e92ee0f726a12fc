"""A sign-in at a fake upstream OAuth provider driven through the login resource, and reading the provider query."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from tests.unit.oauth_helpers import BASE, REDIRECT, Server, pkce
from tests.unit.provider_fake import FakeProvider


@attrs.define
class Flow:
    server: Server
    provider: FakeProvider
    client_id: str
    verifier: str = ""
    challenge: str = ""
    cookies: dict[str, str] = attrs.Factory(dict)
    pages: list[bytes] = attrs.Factory(list)
    locations: list[str] = attrs.Factory(list)
    params: dict[str, str] = attrs.Factory(dict)

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def keep(self, response: Any, body: bytes) -> None:
        for header in response.headers.getRawHeaders(b"set-cookie", []):
            name, _, rest = header.decode().partition("=")
            value = rest.split(";")[0]
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        self.pages.append(body)
        self.locations += [h.decode() for h in response.headers.getRawHeaders(b"location", [])]

    def page(self) -> tuple[Any, bytes]:
        self.verifier, self.challenge = pkce()
        params = {"client_id": self.client_id, "redirect_uri": REDIRECT, "response_type": "code",
                  "state": "mcp-state-1", "code_challenge": self.challenge,
                  "code_challenge_method": "S256", "resource": BASE + "/mcp", "scope": "mail"}
        self.params = params
        response, body = self.server.request("GET", "/oauth/authorize", params=params)
        self.keep(response, body)
        return response, body

    def submit(self, *, csrf: str | None = None, scopes: list[str] | None = None,
               full_name: str = "Una User") -> tuple[Any, bytes]:
        _, page = self.page()
        found = re.search(rb'name="csrf_token" value="([^"]+)"', page)
        assert found is not None
        form: dict[str, Any] = dict(self.params)
        form.pop("scope")
        form["requested_scope"] = re.search(rb'name="requested_scope" value="([^"]*)"', page).group(1).decode()
        form["scope"] = " ".join(scopes) if scopes is not None else form["requested_scope"]
        form.update(full_name=full_name, action="provider",
                    csrf_token=found.group(1).decode() if csrf is None else csrf)
        response, body = self.server.request(
            "POST", "/oauth/authorize", data=form,
            headers={"Cookie": self.cookie_header(), "Content-Type": "application/x-www-form-urlencoded"})
        self.keep(response, body)
        return response, body

    def callback(self, cookie: str | None = None, **query: str) -> tuple[Any, bytes]:
        response, body = self.server.request(
            "GET", "/oauth/provider/callback", params=query,
            headers={"Cookie": self.cookie_header() if cookie is None else cookie})
        self.keep(response, body)
        return response, body


def provider_query(response: Any) -> dict[str, str]:
    location = response.headers.getRawHeaders(b"location")[0].decode()
    assert location.startswith("https://provider.test/authorize?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
