"""
The daemon's configuration: one frozen value built from ``twistd mailmcp``'s
options, with ``MAILMCP_*`` environment variables as fallbacks.

Validation happens here, before any service starts, so every bad setting is a
`usage.UsageError` with one clear line and never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs
from twisted.python import usage

from ._options import (
    DAEMON,
    default_of,
    parse_numbers,
    resolve,
)
from ._scopes import FULL, parse_scope_list
from .mail._sendpolicy import parse_allow_domains
from .oauth._clients import MailServer, is_loopback_host, parse_mail_server
from .oauth._keyring import KEYRING_FILENAME, KeyRing, KeyRingError, load_or_create_keyring
from .oauth._throttle import IPNetwork, parse_networks
from .oauth._user_servers import AllowRule, parse_allow
from .provider._options import parse_provider

if TYPE_CHECKING:
    from .provider._client import ProviderProfile

LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("text", "json")
#: An authserv-id as RFC 8601 writes it: one token (a host name, usually).
_AUTHSERV_ID = re.compile(r"[a-z0-9!#$%&'*+\-/=?^_`{|}~.]{1,253}")


@attrs.frozen
class Config:
    """Everything ``twistd mailmcp`` was told, validated."""

    listen: tuple[str, ...]
    base_url: str
    state_dir: Path
    store: str
    attachments: str
    mail_ca_file: Path | None
    keyring: KeyRing = attrs.field(repr=False)
    store_ca_file: Path | None = None
    pool_size: int = default_of("pool-size")
    pool_wait_timeout: float = default_of("pool-wait-timeout")
    pool_idle_timeout: float = default_of("pool-idle-timeout")
    imap_timeout: float = default_of("imap-timeout")
    smtp_timeout: float = default_of("smtp-timeout")
    access_token_lifetime: int = default_of("access-token-lifetime")
    refresh_token_lifetime: int = default_of("refresh-token-lifetime")
    code_lifetime: int = default_of("code-lifetime")
    attachment_link_lifetime: int = default_of("attachment-link-lifetime")
    max_request_body: int = default_of("max-request-body")
    max_requests_per_account: int = default_of("max-requests-per-account")
    max_queued_requests: int = default_of("max-queued-requests")
    login_concurrency: int = default_of("login-concurrency")
    login_attempts_per_address: int = default_of("login-attempts-per-address")
    login_failures_per_user: int = default_of("login-failures-per-user")
    login_failures_per_address: int = default_of("login-failures-per-address")
    login_failures_global: int = default_of("login-failures-global")
    trusted_proxies: tuple[IPNetwork, ...] = ()
    attachment_max_bytes: int = default_of("attachment-max-bytes")
    attachments_max_message_bytes: int = default_of("attachments-max-message-bytes")
    shutdown_timeout: float = default_of("shutdown-timeout")
    allowed_origins: tuple[str, ...] = ()
    log_level: str = default_of("log-level")
    log_format: str = default_of("log-format")
    imap_connect_concurrency: int = default_of("imap-connect-concurrency")
    metrics_listen: str | None = None
    send_burst: int = default_of("send-burst")
    sends_per_hour: float = default_of("sends-per-hour")
    send_allow_domains: tuple[str, ...] = ()
    trusted_authserv_id: str | None = None
    audit_log: str | None = None
    trust_forwarded: bool = default_of("trust-forwarded")
    #: ``--max-scope``: every grant is narrowed to this.
    max_scope: frozenset[str] = FULL
    allow_insecure_base_url: bool = default_of("allow-insecure-base-url")
    imap_connect_per_call: bool = default_of("imap-connect-per-call")
    #: The default mail profile (both or neither): clients that bring no
    #: servers (CIMD, registered) log in to these.
    default_imap: MailServer | None = None
    default_smtp: MailServer | None = None
    client_metadata_dir: Path | None = None
    client_metadata_allow: tuple[str, ...] = ()
    registrations_per_address: int = default_of("registrations-per-address")
    allow_user_servers: bool = default_of("allow-user-servers")
    user_servers_allow: tuple[AllowRule, ...] = ()
    #: ``--imap-auth xoauth2|oauthbearer``: the provider that signs users of
    #: the default mail profile in (`mailmcp.provider._options`).
    provider: ProviderProfile | None = attrs.field(default=None, repr=False)

    @property
    def mcp_url(self) -> str:
        return self.base_url + "/mcp"


def normalise_base_url(url: str) -> str:
    """
    The canonical issuer / base URL: lower-case scheme and host, no trailing
    slash, no query or fragment.

    :raises usage.UsageError: for anything else.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise usage.UsageError(f"--base-url must be an http(s) URL, not {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise usage.UsageError("--base-url must not carry a query, fragment or credentials")
    netloc = parts.hostname.lower()
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def check_base_url_transport(base_url: str, allow_insecure: bool) -> None:
    """
    Refuse a plain-http base URL that other machines would use: MCP requires
    the authorization endpoints over HTTPS, and over http the login form's
    password and every bearer token cross the network in the clear.  Loopback
    stays allowed (local use, tests); a TLS-terminating proxy in front is the
    one reason for C{allow_insecure}.

    :raises usage.UsageError: with one line saying what to do.
    """
    parts = urlsplit(base_url)
    if parts.scheme != "http" or allow_insecure or is_loopback_host(parts.hostname or ""):
        return
    raise usage.UsageError(
        f"base URL {base_url} is plain http on a host that is not loopback: "
        "use an https:// --base-url (MCP requires HTTPS), or pass "
        "--allow-insecure-base-url if a proxy in front adds TLS"
    )


def base_url_from_listen(listen: Sequence[str]) -> str:
    """
    A base URL for the common local case: the first ``tcp:PORT`` endpoint,
    served over plain http on its interface (loopback when it listens on all).
    """
    for description in listen:
        # Endpoint strings escape colons inside values: interface=\:\:1.
        fields = re.split(r"(?<!\\):", description)
        if fields[0] in ("tcp", "tcp6") and len(fields) > 1 and fields[1].isdigit():
            host = "127.0.0.1"
            for field in fields[2:]:
                if field.startswith("interface="):
                    candidate = field.split("=", 1)[1].replace("\\", "")
                    try:
                        address = ipaddress.ip_address(candidate)
                    except ValueError:
                        continue
                    if not address.is_unspecified:
                        host = f"[{candidate}]" if address.version == 6 else candidate
            return f"http://{host}:{fields[1]}"
    return "http://127.0.0.1:8080"


def _make_private(path: Path, what: str, mode: int, hint: str = "") -> str | None:
    """
    Take group and other permissions off C{path} (to C{mode}) if it has any.

    :return: the warning to show when it had to be fixed, else None.
    :raises usage.UsageError: when it cannot be fixed (e.g. owned by
        another user): refusing beats running with a readable secret.
    """
    try:
        old = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
    except OSError as e:
        raise usage.UsageError(f"cannot check {what} {path}: {e.strerror}") from None
    if not old & 0o077:
        return None
    try:
        os.chmod(path, mode)
    except OSError as e:
        raise usage.UsageError(
            f"{what} {path} is accessible to group/others (mode {old:04o}) and cannot be "
            f"made private ({e.strerror}); run: chmod {mode:o} {path}"
        ) from None
    return f"{what} {path} was accessible to group/others (mode {old:04o}); changed to {mode:04o}{hint}"


def prepare_state_dir(path: Path, warn: Callable[[str], None] | None = None) -> Path:
    """
    Create the state directory (0700) if needed and check that it is usable.

    An existing directory, or its ``keys.json``, that group or others may
    access is made private (0700, 0600) and C{warn} (default: one line on
    stderr) is told, since the daemon owns both and tightening them is always
    safe; if it cannot be tightened, that is an error.

    :raises usage.UsageError: with one line saying why it is not.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise usage.UsageError(f"cannot create state directory {path}: {e.strerror}") from None
    if not path.is_dir():
        raise usage.UsageError(f"state directory {path} is not a directory")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise usage.UsageError(f"state directory {path} is not readable and writable")
    fixed = [
        _make_private(path, "state directory", 0o700),
        _make_private(
            path / KEYRING_FILENAME,
            "key ring",
            0o600,
            "; if anyone else could read it, rotate the key ring (README: key rotation)",
        ),
    ]
    for message in fixed:
        if message is not None:
            (warn or _warn_stderr)(message)
    return path.resolve()


def _warn_stderr(message: str) -> None:
    sys.stderr.write(f"mailmcp: warning: {message}\n")
    sys.stderr.flush()


def check_store(store: str) -> None:
    if store.startswith("sqlite:") and len(store) > len("sqlite:"):
        return
    if store.startswith(("redis://", "rediss://", "unix://")):
        return
    raise usage.UsageError(f"--store must be sqlite:PATH or redis://host:port/db, not {store!r}")


def _check_ca_bundle(path: Path, option: str) -> None:
    """A readable PEM file holding at least one certificate, or one line saying why not."""
    from ._tls import load_pem_certificates

    try:
        certificates = load_pem_certificates(path)
    except OSError as e:
        raise usage.UsageError(f"{option} {path} is not a readable file ({e.strerror})") from None
    except Exception:
        raise usage.UsageError(f"{option} {path} holds a damaged PEM certificate") from None
    if not certificates:
        raise usage.UsageError(f"{option} {path} holds no PEM certificate")


def _check_audit_file(path: Path) -> None:
    """The --audit-log file can be appended to (created 0600 if new), or one line saying why not."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError as e:
        raise usage.UsageError(f"--audit-log {path} cannot be written: {e.strerror}") from None


def _check_attachments(value: str) -> None:
    if value == "local":
        return
    parts = urlsplit(value)
    if parts.scheme == "s3" and parts.netloc and not parts.query and not parts.fragment:
        return
    raise usage.UsageError(f"--attachments must be local or s3://bucket/prefix, not {value!r}")


def _check_listen(listen: Sequence[str], option: str = "--listen") -> None:
    for description in listen:
        if not description or ":" not in description:
            raise usage.UsageError(
                f"{option} needs an endpoint string like tcp:8080, not {description!r}"
            )


def _mail_profile(resolved: Mapping[str, object]) -> tuple[MailServer | None, MailServer | None]:
    """The default mail profile: both servers or neither."""
    if not resolved["imap-host"] and not resolved["smtp-host"]:
        for name in ("imap-port", "smtp-port"):
            if resolved[name]:
                raise usage.UsageError(f"--{name} needs --imap-host and --smtp-host")
        return None, None
    servers = []
    for kind in ("imap", "smtp"):
        host, port, security = (resolved[f"{kind}-{f}"] for f in ("host", "port", "security"))
        try:
            servers.append(
                parse_mail_server(
                    kind,
                    str(host) if host else None,
                    str(port) if port else None,
                    str(security) if security else None,
                )
            )
        except ValueError as e:
            raise usage.UsageError(f"{e} (the default mail profile needs both servers)") from None
    return servers[0], servers[1]


def build_config(
    values: Mapping[str, object],
    listen: Sequence[str],
    environ: Mapping[str, str],
) -> Config:
    """
    Turn parsed option C{values} (L{None} where not given) into a L{Config},
    taking environment fallbacks and defaults, validating everything and
    loading (or creating) the key ring.
    """
    resolved = resolve({**values, "listen": listen}, DAEMON, environ)
    listen = [str(description) for description in resolved["listen"]]  # type: ignore[attr-defined]
    _check_listen(listen)
    metrics_listen = str(resolved["metrics-listen"] or "").strip() or None
    if metrics_listen is not None:
        _check_listen([metrics_listen], "--metrics-listen")

    default_imap, default_smtp = _mail_profile(resolved)
    provider = parse_provider(resolved, _warn_stderr)
    if provider is not None and default_imap is None:
        raise usage.UsageError(
            f"--imap-auth {provider.imap_auth} is for the default mail profile: "
            "it needs --imap-host and --smtp-host"
        )
    metadata_dir = None
    if resolved["client-metadata-dir"]:
        metadata_dir = Path(str(resolved["client-metadata-dir"]))
        if not metadata_dir.is_dir():
            raise usage.UsageError(f"--client-metadata-dir {metadata_dir} is not a directory")
    allow = tuple(str(prefix) for prefix in resolved["client-metadata-allow"])  # type: ignore[attr-defined]
    for prefix in allow:
        parts = urlsplit(prefix)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.path:
            raise usage.UsageError(
                f"--client-metadata-allow needs an http(s) URL prefix with a path, not {prefix!r}"
            )

    numbers = parse_numbers(resolved, DAEMON)

    state_dir = prepare_state_dir(Path(str(resolved["state-dir"])))
    store = str(resolved["store"] or f"sqlite:{state_dir / 'mailmcp.sqlite3'}")
    check_store(store)
    attachments = str(resolved["attachments"])
    _check_attachments(attachments)

    ca_file = None
    if resolved["mail-ca-file"]:
        ca_file = Path(str(resolved["mail-ca-file"]))
        if not ca_file.is_file() or not os.access(ca_file, os.R_OK):
            raise usage.UsageError(f"--mail-ca-file {ca_file} is not a readable file")

    store_ca_file = None
    if resolved["store-ca-file"]:
        store_ca_file = Path(str(resolved["store-ca-file"]))
        _check_ca_bundle(store_ca_file, "--store-ca-file")

    key_file = Path(str(resolved["key-file"])) if resolved["key-file"] else None
    try:
        keyring = load_or_create_keyring(state_dir, key_file, environ)
    except KeyRingError as e:
        raise usage.UsageError(str(e)) from None

    base_url = normalise_base_url(
        str(resolved["base-url"]) if resolved["base-url"] else base_url_from_listen(listen)
    )
    check_base_url_transport(base_url, bool(resolved["allow-insecure-base-url"]))
    origins = tuple(str(resolved["allowed-origins"] or "").split())
    log_level = str(resolved["log-level"]).strip().lower()
    if log_level not in LOG_LEVELS:
        raise usage.UsageError(
            f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}"
        )
    log_format = str(resolved["log-format"]).strip().lower()
    if log_format not in LOG_FORMATS:
        raise usage.UsageError(
            f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}"
        )

    try:
        trusted_proxies = parse_networks(str(resolved["trusted-proxies"] or ""))
    except ValueError as e:
        raise usage.UsageError(f"--trusted-proxies: {e}") from None

    try:
        user_servers_allow = parse_allow(str(resolved["user-servers-allow"] or ""))
    except ValueError as e:
        raise usage.UsageError(f"--user-servers-allow: {e}") from None
    try:
        send_allow_domains = parse_allow_domains(str(resolved["send-allow-domains"] or ""))
    except ValueError as e:
        raise usage.UsageError(f"--send-allow-domains: {e}") from None
    authserv_id = str(resolved["trusted-authserv-id"] or "").strip().lower() or None
    if authserv_id is not None and not _AUTHSERV_ID.fullmatch(authserv_id):
        raise usage.UsageError(
            f"--trusted-authserv-id must be one token like mx.example.com, not {authserv_id!r}"
        )
    audit_log = str(resolved["audit-log"] or "").strip() or None
    if audit_log is not None and audit_log != "-":
        # Absolute: a daemonizing twistd changes directory before SIGHUP reopens it.
        audit_log = os.path.abspath(audit_log)
        _check_audit_file(Path(audit_log))
    max_scope = FULL
    if str(resolved["max-scope"] or "").strip():
        try:
            max_scope = parse_scope_list(str(resolved["max-scope"]))
        except ValueError as e:
            raise usage.UsageError(f"--max-scope: {e}") from None

    return Config(
        listen=tuple(listen),
        max_scope=max_scope,
        base_url=base_url,
        state_dir=state_dir,
        store=store,
        attachments=attachments,
        mail_ca_file=ca_file,
        keyring=keyring,
        store_ca_file=store_ca_file,
        allowed_origins=origins,
        metrics_listen=metrics_listen,
        log_level=log_level,
        log_format=log_format,
        trust_forwarded=bool(resolved["trust-forwarded"]),
        trusted_proxies=trusted_proxies,
        allow_insecure_base_url=bool(resolved["allow-insecure-base-url"]),
        imap_connect_per_call=bool(resolved["imap-connect-per-call"]),
        default_imap=default_imap,
        default_smtp=default_smtp,
        client_metadata_dir=metadata_dir,
        client_metadata_allow=allow,
        allow_user_servers=bool(resolved["allow-user-servers"]),
        user_servers_allow=user_servers_allow,
        send_allow_domains=send_allow_domains,
        trusted_authserv_id=authserv_id,
        audit_log=audit_log,
        provider=provider,
        **numbers,  # type: ignore[arg-type]
    )
