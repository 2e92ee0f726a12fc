"""
The two ways an authorization request can fail: the error page
(`BadRequest`, never a redirect) and an error sent back to the client's
validated redirect URI (`RedirectError`).  Each surface maps them in one
place: `mailmcp.oauth._login.LoginRoom` and `mailmcp.oauth._account_page`.
"""

from __future__ import annotations

UNAVAILABLE_TEXT = "Sign-in is temporarily unavailable. Please try again in a minute."


class BadRequest(Exception):
    """A request we answer with the error page (never a redirect)."""

    def __init__(self, title: str, message: str, status: int = 400) -> None:
        super().__init__(title)
        self.title = title
        self.message = message
        self.status = status


UNAVAILABLE = BadRequest("Temporarily unavailable", UNAVAILABLE_TEXT, 503)


class RedirectError(Exception):
    """
    An authorization error sent back to the redirect URI, which (with the
    state) is known good by the time this is raised.
    """

    def __init__(
        self, error: str, description: str, redirect_uri: str = "", state: str | None = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state
