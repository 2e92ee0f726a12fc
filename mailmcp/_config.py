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

from ._clients import MailServer, is_loopback_host, parse_mail_server
from ._keyring import KEYRING_FILENAME, KeyRing, KeyRingError, load_or_create_keyring
from ._provider_options import PROVIDER_PARAMETERS, parse_provider
from ._scopes import FULL, parse_scope_list
from ._sendpolicy import parse_allow_domains
from ._throttle import IPNetwork, parse_networks
from ._user_servers import AllowRule, parse_allow

if TYPE_CHECKING:
    from ._provider import ProviderProfile

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_STATE_DIR = "mailmcp-state"

#: (option name, default, help) for every single-valued option.  Each one is
#: also read from MAILMCP_<NAME> (upper case, dashes as underscores).
PARAMETERS: list[tuple[str, str | None, str]] = [
    (
        "base-url",
        None,
        "Public base URL, e.g. https://mail-mcp.example.com "
        "(default: derived from the first tcp --listen).",
    ),
    (
        "state-dir",
        DEFAULT_STATE_DIR,
        "Directory for the key ring, SQLite store and local attachments.",
    ),
    (
        "store",
        None,
        "Grant store: sqlite:PATH (default <state-dir>/mailmcp.sqlite3) or redis://host:port/db.",
    ),
    (
        "attachments",
        "local",
        "Attachment store: local (files under the state dir) or s3://bucket/prefix.",
    ),
    ("mail-ca-file", None, "Extra PEM CA bundle trusted for IMAP/SMTP servers with a private CA."),
    (
        "store-ca-file",
        None,
        "PEM CA bundle that a rediss:// --store server's certificate must chain to "
        "(default: the system trust store).",
    ),
    ("key-file", None, "Read the key ring from this file instead of <state-dir>/keys.json."),
    ("pool-size", "4", "Logged-in IMAP connections kept per account."),
    ("pool-wait-timeout", "15", "Seconds a call waits for a free pooled IMAP connection."),
    ("pool-idle-timeout", "300", "Seconds an idle pooled IMAP connection is kept."),
    ("imap-timeout", "30", "Seconds one IMAP command (or connect/login) may take."),
    ("smtp-timeout", "60", "Seconds one SMTP send may take."),
    ("access-token-lifetime", "28800", "Access token lifetime in seconds."),
    (
        "refresh-token-lifetime",
        "2592000",
        "Absolute refresh token lifetime from login, in seconds.",
    ),
    ("code-lifetime", "60", "Authorization code lifetime in seconds."),
    ("attachment-link-lifetime", "3600", "Lifetime of attachment download links in seconds."),
    (
        "max-request-body",
        "33554432",
        "Largest accepted /mcp request body in bytes, once its access token is verified "
        "(before that, and on every other path, 64 KiB).",
    ),
    (
        "max-requests-per-account",
        "16",
        "Most /mcp requests one mailbox may have in progress or waiting at once; "
        "more are answered 503 with Retry-After.",
    ),
    (
        "max-queued-requests",
        "2048",
        "Most /mcp requests waiting for their turn, all accounts together; "
        "more are answered 503 with Retry-After.",
    ),
    ("login-concurrency", "32", "Most live IMAP/SMTP login checks in flight at once."),
    ("login-attempts-per-address", "20", "Login attempts allowed per client address per minute."),
    (
        "login-failures-per-user",
        "5",
        "Failed logins allowed per username (IMAP and SMTP, normalised) per 5 minutes.",
    ),
    ("login-failures-per-address", "30", "Failed logins allowed per client address per hour."),
    (
        "login-failures-global",
        "300",
        "Failed logins allowed across all users and addresses per 5 minutes.",
    ),
    (
        "trusted-proxies",
        "",
        "Reverse proxies (comma/space separated addresses or CIDR networks) whose "
        "X-Forwarded-For hops are believed.",
    ),
    (
        "attachment-max-bytes",
        "26214400",
        "Largest single attachment linked, stored or sent, in bytes.",
    ),
    (
        "attachments-max-message-bytes",
        "36700160",
        "Most attachment bytes linked or sent per message.",
    ),
    ("shutdown-timeout", "10", "Seconds in-flight requests may take to finish on SIGTERM."),
    (
        "allowed-origins",
        "",
        "Extra browser Origins (space separated) allowed to call /mcp, and answered with "
        "CORS there and on the metadata, token, revocation and registration endpoints "
        "(browser clients such as the MCP Inspector's direct mode).",
    ),
    (
        "max-scope",
        "",
        "The most any grant may allow: scopes separated by commas (mail.read, "
        "mail.organize, mail.draft, mail.send, mail.delete; default: all).",
    ),
    ("log-level", "info", "Lowest level of log events written: debug, info, warn or error."),
    (
        "log-format",
        "text",
        "Log line format: text (twistd's lines) or json (one JSON object per line).",
    ),
    (
        "imap-connect-concurrency",
        "16",
        "Most new IMAP connections (connect, TLS, LOGIN) in progress at once; "
        "further calls wait their turn (bounds reactor lag in a login burst).",
    ),
    (
        "metrics-listen",
        None,
        "Endpoint serving GET /metrics (Prometheus; ?format=json for the benchmarks), "
        "like --listen, e.g. tcp:9100:interface=127.0.0.1; off when not given. "
        "Keep it private: it is not on the public listener.",
    ),
    (
        "send-burst",
        "20",
        "Recipients one account may send to at once before --sends-per-hour applies "
        "(each message costs its to+cc+bcc count; one with more is refused).",
    ),
    (
        "sends-per-hour",
        "120",
        "Recipients one account may send to per hour after its burst; shared by all "
        "daemons on one Redis --store, per process with SQLite.",
    ),
    (
        "imap-host",
        None,
        "Default mail profile: the IMAP server of clients that bring none (Claude, the MCP "
        "Inspector: Client ID Metadata Documents and /oauth/register are on only with a "
        "default profile).",
    ),
    ("imap-port", None, "Default profile's IMAP port (default 993 for tls, 143 for starttls)."),
    (
        "imap-security",
        "tls",
        "Default profile's IMAP tls, starttls or plain (plain only on loopback).",
    ),
    ("smtp-host", None, "Default profile's SMTP submission server (required with --imap-host)."),
    ("smtp-port", None, "Default profile's SMTP port (default 465 for tls, 587 for starttls)."),
    (
        "smtp-security",
        "tls",
        "Default profile's SMTP tls, starttls or plain (plain only on loopback).",
    ),
    (
        "client-metadata-dir",
        None,
        "Directory of Client ID Metadata Documents (*.json) used instead of fetching their "
        "URLs; they replace the pinned copies of Claude's documents with the same client_id.",
    ),
    (
        "client-metadata-allow",
        "",
        "URL prefix of Client ID Metadata Documents fetched although the address rules would "
        "refuse them (private addresses, plain http: in-house clients); repeatable, space "
        "separated in the variable.",
    ),
    (
        "registrations-per-address",
        "20",
        "Dynamic client registrations (/oauth/register) allowed per client address per hour.",
    ),
    (
        "user-servers-allow",
        "",
        "With --allow-user-servers: networks (and ports) user-named mail servers may be in "
        "besides public addresses on ports 993/143/465/587, e.g. '10.1.0.0/16 127.0.0.1:1993 "
        "[fd00::]/8:*' (space or comma separated; no port: the usual ones; * any).",
    ),
    (
        "send-allow-domains",
        "",
        "Recipient domains mail may be sent to (comma/space separated; example.com exactly, "
        ".example.com its subdomains); a send to any other recipient is refused. Empty: no "
        "restriction.",
    ),
    (
        "trusted-authserv-id",
        None,
        "authserv-id of your own mail server's Authentication-Results header (e.g. "
        "mx.example.com); only the topmost such header is believed. Unset: SPF/DKIM/DMARC "
        "are reported unknown.",
    ),
    (
        "audit-log",
        None,
        "Append one JSON line per login, token issue, refresh, revocation and tool call to "
        "this file (reopened on SIGHUP), or - for the main log; off when not given.",
    ),
    # Provider sign-in (XOAUTH2) for the default mail profile: mailmcp._provider_options.
    *PROVIDER_PARAMETERS,
]

FLAGS: list[tuple[str, str]] = [
    (
        "trust-forwarded",
        "Treat the direct peer as a trusted proxy whatever its address (e.g. a UNIX "
        "socket); prefer --trusted-proxies.",
    ),
    (
        "allow-insecure-base-url",
        "Accept an http:// --base-url on a host that is not loopback (only behind a "
        "proxy that adds TLS; MCP clients require https).",
    ),
    (
        "allow-user-servers",
        "Let users name their IMAP/SMTP servers on the login page (prefilled from the email "
        "domain's RFC 6186 SRV records) when their client brings none; only public addresses "
        "on the usual ports unless --user-servers-allow says otherwise.",
    ),
    (
        "imap-connect-per-call",
        "Do not pool IMAP connections: connect, log in and log out on every "
        "call (a benchmark baseline, slow).",
    ),
]

_NUMERIC = {
    "pool-size": int,
    "pool-wait-timeout": float,
    "pool-idle-timeout": float,
    "imap-timeout": float,
    "smtp-timeout": float,
    "access-token-lifetime": int,
    "refresh-token-lifetime": int,
    "code-lifetime": int,
    "attachment-link-lifetime": int,
    "max-request-body": int,
    "max-requests-per-account": int,
    "max-queued-requests": int,
    "login-concurrency": int,
    "login-attempts-per-address": int,
    "login-failures-per-user": int,
    "login-failures-per-address": int,
    "login-failures-global": int,
    "attachment-max-bytes": int,
    "attachments-max-message-bytes": int,
    "shutdown-timeout": float,
    "imap-connect-concurrency": int,
    "send-burst": int,
    "sends-per-hour": float,
    "registrations-per-address": int,
}

LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("text", "json")
#: An authserv-id as RFC 8601 writes it: one token (a host name, usually).
_AUTHSERV_ID = re.compile(r"[a-z0-9!#$%&'*+\-/=?^_`{|}~.]{1,253}")


def env_name(option: str) -> str:
    return "MAILMCP_" + option.upper().replace("-", "_")


class OneLineErrorOptions(usage.Options):
    """
    Options that, when parsed by twistd (as a subcommand, so with a parent),
    report a `usage.UsageError` as one line on stderr and exit 1.

    twistd itself would print the whole usage text and the error to
    *stdout*, where a service manager or a script looking at stderr never
    sees it.  Parsed directly (tests, other callers), the error propagates.
    """

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            command = self.parent.subCommand or "mailmcp"
            sys.stderr.write(f"{command}: error: {e} (see: twistd {command} --help)\n")
            sys.stderr.flush()
            raise SystemExit(1) from None


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
    pool_size: int = 4
    pool_wait_timeout: float = 15.0
    pool_idle_timeout: float = 300.0
    imap_timeout: float = 30.0
    smtp_timeout: float = 60.0
    access_token_lifetime: int = 28800
    refresh_token_lifetime: int = 2592000
    code_lifetime: int = 60
    attachment_link_lifetime: int = 3600
    max_request_body: int = 32 * 1024 * 1024
    max_requests_per_account: int = 16
    max_queued_requests: int = 2048
    login_concurrency: int = 32
    login_attempts_per_address: int = 20
    login_failures_per_user: int = 5
    login_failures_per_address: int = 30
    login_failures_global: int = 300
    trusted_proxies: tuple[IPNetwork, ...] = ()
    attachment_max_bytes: int = 25 * 1024 * 1024
    attachments_max_message_bytes: int = 35 * 1024 * 1024
    shutdown_timeout: float = 10.0
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "text"
    imap_connect_concurrency: int = 16
    metrics_listen: str | None = None
    send_burst: int = 20
    sends_per_hour: float = 120.0
    send_allow_domains: tuple[str, ...] = ()
    trusted_authserv_id: str | None = None
    audit_log: str | None = None
    trust_forwarded: bool = False
    #: ``--max-scope``: every grant is narrowed to this.
    max_scope: frozenset[str] = FULL
    allow_insecure_base_url: bool = False
    imap_connect_per_call: bool = False
    #: The default mail profile (both or neither): clients that bring no
    #: servers (CIMD, registered) log in to these.
    default_imap: MailServer | None = None
    default_smtp: MailServer | None = None
    client_metadata_dir: Path | None = None
    client_metadata_allow: tuple[str, ...] = ()
    registrations_per_address: int = 20
    allow_user_servers: bool = False
    user_servers_allow: tuple[AllowRule, ...] = ()
    #: ``--imap-auth xoauth2|oauthbearer``: the provider that signs users of
    #: the default mail profile in (`mailmcp._provider_options`).
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
    resolved: dict[str, object] = {}
    for name, default, _ in PARAMETERS:
        value = values.get(name)
        if value is None:
            value = environ.get(env_name(name), default)
        resolved[name] = value
    for name, _ in FLAGS:
        flag = bool(values.get(name))
        if not flag:
            flag = environ.get(env_name(name), "").lower() in ("1", "true", "yes", "on")
        resolved[name] = flag

    if not listen:
        env_listen = environ.get(env_name("listen"), "").split()
        listen = env_listen or [DEFAULT_LISTEN]
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
    raw_allow = resolved["client-metadata-allow"] or ""
    allow: tuple[str, ...] = tuple(
        raw_allow.split() if isinstance(raw_allow, str) else [str(p) for p in raw_allow]  # type: ignore[attr-defined]
    )
    for prefix in allow:
        parts = urlsplit(prefix)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.path:
            raise usage.UsageError(
                f"--client-metadata-allow needs an http(s) URL prefix with a path, not {prefix!r}"
            )

    numbers: dict[str, float | int] = {}
    for name, kind in _NUMERIC.items():
        raw = resolved[name]
        try:
            number = kind(str(raw))
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number, not {raw!r}") from None
        if number <= 0:
            raise usage.UsageError(f"--{name} must be greater than zero")
        numbers[name.replace("-", "_")] = number

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
