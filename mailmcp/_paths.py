"""
Where things live when ``--base-url`` has a path (``https://host/mail``).

Every route is served under that path (``/mail/mcp``, ``/mail/oauth/...``):
`MailMCPSite` takes it off each request's path before anything routes on
it, so the parts keep their absolute paths (and a proxy that strips the
prefix itself works too).  The metadata documents of an issuer or resource
with a path are found at path-*inserted* URLs (RFC 8414 §3.1, RFC 9728 §3.1):
``https://host/.well-known/oauth-authorization-server/mail``, which lie
outside the base path; they are served there and at the plain locations.
"""

from __future__ import annotations

from urllib.parse import urlsplit

AUTHORIZATION_SERVER_METADATA = "/.well-known/oauth-authorization-server"
PROTECTED_RESOURCE_METADATA = "/.well-known/oauth-protected-resource"


def base_path(base_url: str) -> str:
    """The path of a normalised base URL: ``""`` or ``/mail`` (no trailing slash)."""
    return urlsplit(base_url).path.rstrip("/")


def _origin(base_url: str) -> str:
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


def resource_metadata_url(base_url: str) -> str:
    """RFC 9728 §3.1: the metadata URL of the resource ``<base>/mcp``."""
    return _origin(base_url) + PROTECTED_RESOURCE_METADATA + base_path(base_url) + "/mcp"


def authorization_server_metadata_url(base_url: str) -> str:
    """RFC 8414 §3.1: the metadata URL of the issuer ``<base>``."""
    return _origin(base_url) + AUTHORIZATION_SERVER_METADATA + base_path(base_url)


def metadata_paths(base_url: str) -> dict[str, str]:
    """
    Every local path answering a metadata document, mapped to which one
    (``"resource"`` or ``"server"``): the path-inserted locations and the
    plain ones clients guess.
    """
    path = base_path(base_url)
    return {
        PROTECTED_RESOURCE_METADATA: "resource",
        PROTECTED_RESOURCE_METADATA + "/mcp": "resource",
        PROTECTED_RESOURCE_METADATA + path + "/mcp": "resource",
        AUTHORIZATION_SERVER_METADATA: "server",
        AUTHORIZATION_SERVER_METADATA + path: "server",
    }


def strip_base_path(path: bytes, prefix: bytes) -> bytes:
    """
    C{path} (with any query) without the base path C{prefix} it starts
    with; unchanged when it does not start with it (or C{prefix} is empty).
    """
    if not prefix:
        return path
    if path == prefix or path.startswith(prefix + b"?"):
        return b"/" + path[len(prefix) :]
    if path.startswith(prefix + b"/"):
        return path[len(prefix) :]
    return path
