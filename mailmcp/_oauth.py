"""The authorization server moved to `mailmcp.oauth`; this name stays for its importers."""

from .oauth import OAuthApp, build_authorization_server, open_store

__all__ = ["OAuthApp", "build_authorization_server", "open_store"]
