"""
The provider sign-in options (``--imap-auth``, ``--oauth-*``), shared by the
daemon's default mail profile (``twistd mailmcp``) and a provisioned
client's own profile (``twistd mailmcp-generate``).

Mail servers that no longer take passwords (Microsoft 365, Outlook.com;
Gmail without app passwords) take an OAuth access token over SASL XOAUTH2 or
OAUTHBEARER instead.  These options say which provider signs the user in and
with which registration; they become one `ProviderProfile`, checked here so
that every incomplete or contradictory combination is one line at startup.

The daemon also reads each option from its ``MAILMCP_<NAME>`` variable;
``mailmcp-generate`` does not (like its ``--imap-host``): those variables
describe the daemon's default profile, and taking them silently into every
provisioned client would give it a provider it was not meant to have.

The client secret is read from a file (``--oauth-client-secret-file``), never
taken from the command line or the environment's value itself, and never
logged; a file that group or others may read earns a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.python import usage

from ..oauth._clients import is_loopback_host
from ._client import ProviderProfile

IMAP_AUTH = ("password", "xoauth2", "oauthbearer")
PROVIDERS = ("microsoft", "google", "custom")
#: Options that only ``--oauth-provider custom`` takes.
CUSTOM_ONLY = ("oauth-authorize-url", "oauth-token-url", "oauth-scope", "oauth-userinfo-url")
#: A secret file larger than this is not a client secret.
MAX_SECRET_BYTES = 4096

#: The options (declared in `mailmcp._options`), in the order checked.
PROVIDER_OPTIONS = (
    "imap-auth",
    "oauth-provider",
    "oauth-client-id",
    "oauth-client-secret-file",
    *CUSTOM_ONLY,
)


def _text(values: Mapping[str, object], name: str) -> str:
    value = values.get(name)
    return str(value).strip() if value else ""


def check_provider_url(option: str, url: str) -> str:
    """
    An endpoint of the provider: https, or http on a loopback host (tests).

    :raises usage.UsageError: one line naming the option.
    """
    parts = urlsplit(url)
    if parts.fragment or parts.username or parts.password or not parts.hostname:
        raise usage.UsageError(f"--{option} must be an absolute https URL, not {url!r}")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise usage.UsageError(
        f"--{option} must use https (http only on a loopback host, for tests), not {url!r}"
    )


def read_client_secret(path: Path, warn: Callable[[str], None]) -> str:
    """
    The client secret in C{path} (surrounding whitespace dropped).  A file
    that group or others may read is used, with a warning saying how to
    make it private: unlike ``keys.json`` it is the operator's file, maybe
    on a read-only mount, so it is not changed here.

    :raises usage.UsageError: when it cannot be read or is empty; the
        message never shows its content.
    """
    option = "--oauth-client-secret-file"
    try:
        mode = path.stat().st_mode & 0o777
        with open(path, "rb") as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as e:
        raise usage.UsageError(f"{option} {path} cannot be read: {e.strerror}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise usage.UsageError(f"{option} {path} is too large to be a client secret")
    try:
        secret = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise usage.UsageError(f"{option} {path} is not UTF-8 text") from None
    if not secret or any(ord(c) < 0x20 or ord(c) == 0x7F for c in secret):
        raise usage.UsageError(f"{option} {path} must hold the secret on one line")
    if mode & 0o077:
        warn(
            f"OAuth client secret file {path} is accessible to group/others (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )
    return secret


def parse_provider(
    values: Mapping[str, object],
    warn: Callable[[str], None],
) -> ProviderProfile | None:
    """
    The provider profile C{values} (option name → value, already merged with
    the environment) describe, or None for password sign-in.

    :raises usage.UsageError: one line, for an incomplete or contradictory
        combination.
    """
    imap_auth = (_text(values, "imap-auth") or "password").lower()
    if imap_auth not in IMAP_AUTH:
        raise usage.UsageError(
            f"--imap-auth must be one of {', '.join(IMAP_AUTH)}, not {imap_auth!r}"
        )
    given = [name for name in PROVIDER_OPTIONS[1:] if _text(values, name)]
    if imap_auth == "password":
        if given:
            raise usage.UsageError(
                f"--{given[0]} needs --imap-auth xoauth2 or oauthbearer (it is password)"
            )
        return None
    provider = _text(values, "oauth-provider").lower()
    if not provider:
        raise usage.UsageError(
            f"--imap-auth {imap_auth} needs --oauth-provider ({', '.join(PROVIDERS)})"
        )
    if provider not in PROVIDERS:
        raise usage.UsageError(
            f"--oauth-provider must be one of {', '.join(PROVIDERS)}, not {provider!r}"
        )
    client_id = _text(values, "oauth-client-id")
    if not client_id:
        raise usage.UsageError(f"--oauth-provider {provider} needs --oauth-client-id")
    secret_file = _text(values, "oauth-client-secret-file")
    if not secret_file:
        raise usage.UsageError(
            f"--oauth-provider {provider} needs --oauth-client-secret-file "
            "(a file holding the client secret)"
        )
    secret = read_client_secret(Path(secret_file), warn)
    if provider != "custom":
        extra = [name for name in CUSTOM_ONLY if _text(values, name)]
        if extra:
            raise usage.UsageError(
                f"--{extra[0]} only goes with --oauth-provider custom "
                f"({provider} has its endpoints built in)"
            )
        return ProviderProfile.builtin(provider, client_id, secret, imap_auth=imap_auth)
    missing = [name for name in CUSTOM_ONLY[:3] if not _text(values, name)]
    if missing:
        raise usage.UsageError(
            "--oauth-provider custom needs " + ", ".join(f"--{name}" for name in missing)
        )
    authorize_url = check_provider_url("oauth-authorize-url", _text(values, "oauth-authorize-url"))
    token_url = check_provider_url("oauth-token-url", _text(values, "oauth-token-url"))
    userinfo = _text(values, "oauth-userinfo-url")
    userinfo_url = check_provider_url("oauth-userinfo-url", userinfo) if userinfo else None
    scope = " ".join(_text(values, "oauth-scope").split())
    return ProviderProfile.custom(
        label=urlsplit(authorize_url).hostname or "your provider",
        authorize_url=authorize_url,
        token_url=token_url,
        scope=scope,
        userinfo_url=userinfo_url,
        client_id=client_id,
        client_secret=secret,
        imap_auth=imap_auth,
    )


def profile_claims(profile: ProviderProfile) -> dict[str, Any]:
    """A profile as sealed into a provisioned client's description."""
    return {
        "name": profile.name,
        "label": profile.label,
        "authorize_url": profile.authorize_url,
        "token_url": profile.token_url,
        "scope": profile.scope,
        "userinfo_url": profile.userinfo_url,
        "client_id": profile.client_id,
        "client_secret": profile.client_secret,
        "imap_auth": profile.imap_auth,
    }


def profile_from_claims(claims: Any) -> ProviderProfile:
    """
    The profile `profile_claims` sealed.

    :raises ValueError: for anything else.
    """
    if not isinstance(claims, dict):
        raise ValueError("not a provider profile")
    fields = (
        "name",
        "label",
        "authorize_url",
        "token_url",
        "scope",
        "client_id",
        "client_secret",
        "imap_auth",
    )
    if not all(isinstance(claims.get(f), str) for f in fields):
        raise ValueError("bad provider profile")
    userinfo = claims.get("userinfo_url")
    if userinfo is not None and not isinstance(userinfo, str):
        raise ValueError("bad provider profile")
    if claims["name"] in ("microsoft", "google"):
        return ProviderProfile.builtin(
            claims["name"],
            claims["client_id"],
            claims["client_secret"],
            imap_auth=claims["imap_auth"],
        )
    return ProviderProfile.custom(
        label=claims["label"],
        authorize_url=claims["authorize_url"],
        token_url=claims["token_url"],
        scope=claims["scope"],
        userinfo_url=userinfo,
        client_id=claims["client_id"],
        client_secret=claims["client_secret"],
        imap_auth=claims["imap_auth"],
    )
