"""An account-page server on a memory grant store, and signing in to it."""

from __future__ import annotations

import re
from typing import Any

from tests.unit.oauth_helpers import BASE, Server


class AccountServer(Server):
    """The OAuth server plus /account on its own StubTreq."""

    page: Any = None

    def account_request(self, method: str, **kw: Any) -> tuple[Any, bytes]:
        kw.setdefault("allow_redirects", False)
        response = self.run(self.page.request(method, BASE + "/account", **kw))
        return response, self.run(response.content())

    def account_form(self) -> tuple[str, str]:
        response, body = self.account_request("GET", params={"client_id": self.client_id})
        assert response.code == 200, body
        cookie = self.cookie
        for header in response.headers.getRawHeaders(b"set-cookie", []):
            cookie = self.cookie = header.split(b";")[0].decode()
        m = re.search(rb'name="csrf_token" value="([^"]+)"', body)
        assert m is not None
        return cookie, m.group(1).decode()

    def account_post(self, form: dict[str, str], cookie: str | None = None) -> tuple[Any, bytes]:
        got_cookie, csrf = self.account_form()
        data = {"client_id": self.client_id, "csrf_token": csrf, **form}
        headers = {"Cookie": got_cookie if cookie is None else cookie,
                   "Content-Type": "application/x-www-form-urlencoded"}
        return self.account_request("POST", data=data, headers=headers)


def sign_in(server: AccountServer, user: str = "alice@example.test", pw: str = "alice-pw") -> tuple[Any, bytes]:
    return server.account_post({"action": "sign_in", "email": user, "imap_username": user,
                                "imap_password": pw})


def session_of(body: bytes) -> str:
    m = re.search(rb'name="session" value="([^"]+)"', body)
    assert m is not None, body
    return m.group(1).decode()
