"""
Every option of ``twistd mailmcp`` and ``twistd mailmcp-generate``, declared once.

Each `Option` in `OPTIONS` says its name, its ``MAILMCP_<NAME>`` variable, its
default, how its value is parsed, its help and which commands have it.  From
this one table come each command's `usage.Options` parameters, flags and
repeatable ``opt_*`` handlers (`TableOptions`), the environment fallback
(`resolve`), the defaults of the daemon's ``Config`` (`default_of`) and the
option table in README.rst (``python -m mailmcp._options --update-readme``;
``--rst`` prints it).

Adding an option
----------------
Add one entry to `OPTIONS`, e.g. for both commands::

    Option(
        "oauth-client-id",
        "The client id mailmcp has at the provider.",
        commands=BOTH,
    ),

That is the whole declaration: both commands then accept
``--oauth-client-id``, read ``MAILMCP_OAUTH_CLIENT_ID`` when it is not given,
show it in ``--help``; `resolve` hands its value (a str, its default, or None)
to ``build_config`` and to ``mailmcp-generate``'s ``postOptions``.  Then use
the value there (the daemon: a ``Config`` field, whose default is
``default_of(name)``), and run ``python -m mailmcp._options --update-readme``
(tests/unit/test_config.py fails until README.rst matches the table).

Optional fields: ``default`` (a str, as the variable would give it);
``parse=positive(int)`` (or ``float``) for a number that must be greater than
zero, parsed into ``Config``'s field of the same name by ``build_config``;
``flag=True`` for a switch (the variable takes 1/true/yes/on);
``repeatable=True`` for an option given several times (space separated in the
variable); ``env_in`` to read the variable in fewer commands than have the
option; ``help_for`` for a command's own wording of the help.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
from twisted.python import usage

from ._scopes import ALL_SCOPES

DAEMON = "mailmcp"
GENERATE = "mailmcp-generate"
DAEMON_ONLY = frozenset({DAEMON})
GENERATE_ONLY = frozenset({GENERATE})
BOTH = frozenset({DAEMON, GENERATE})
NOWHERE: frozenset[str] = frozenset()

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_STATE_DIR = "mailmcp-state"

_TRUE = ("1", "true", "yes", "on")


def env_name(option: str) -> str:
    """The environment variable of C{option}: MAILMCP_ and its name in upper case, _ for -."""
    return "MAILMCP_" + option.upper().replace("-", "_")


def positive(kind: type[int] | type[float]) -> Callable[[str, str], int | float]:
    """
    A parser for a number of type C{kind} greater than zero, failing with the
    one line the daemon has always given.
    """

    def parse(name: str, raw: str) -> int | float:
        try:
            number = kind(raw)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number, not {raw!r}") from None
        if number <= 0:
            raise usage.UsageError(f"--{name} must be greater than zero")
        return number

    return parse


@attrs.frozen
class Option:
    """One option of one or both commands; see the module docstring."""

    name: str
    help: str
    default: str | None = None
    #: ``(name, raw) -> value``, raising `usage.UsageError` with one line.
    parse: Callable[[str, str], object] | None = attrs.field(default=None, eq=False)
    flag: bool = False
    repeatable: bool = False
    commands: frozenset[str] = DAEMON_ONLY
    #: The commands that read ``MAILMCP_<NAME>``; None: all of C{commands}.
    env_in: frozenset[str] | None = None
    #: A command's own wording of the help, if the shared one does not fit.
    help_for: Mapping[str, str] = attrs.field(factory=dict, eq=False)

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def attribute(self) -> str:
        """The name of its field in ``Config``."""
        return self.name.replace("-", "_")

    def reads_env(self, command: str) -> bool:
        return command in (self.commands if self.env_in is None else self.env_in)

    def usage_help(self, command: str) -> str:
        """The line ``twistd <command> --help`` shows."""
        text = self.help_for.get(command, self.help).replace("``", "")
        if not self.reads_env(command):
            return text
        if self.flag:
            return f"{text} [env {self.env}]"
        return f"{text} [env {self.env}; default {self.default or 'none'}]"

    def value_from(self, given: object, environ: Mapping[str, str], command: str) -> object:
        """
        The option's raw value in C{command}: C{given} on the command line,
        else its variable, else its default.
        """
        env = environ.get(self.env) if self.reads_env(command) else None
        if self.flag:
            return bool(given) or (env or "").lower() in _TRUE
        if self.repeatable:
            if isinstance(given, str):
                given = given.split()
            if given:
                return list(given)  # type: ignore[call-overload]
            if env is not None and env.split():
                return env.split()
            return self.default.split() if self.default else []
        if given is not None:
            return given
        return self.default if env is None else env


#: Every option, in the order of ``--help`` and README.rst (the daemon's
#: parameters, then its flags, then mailmcp-generate's own).
OPTIONS: tuple[Option, ...] = (
    Option(
        "listen",
        "Endpoint to listen on; repeat the option (or separate endpoints with spaces in the "
        "variable) to listen on several: ``tcp:PORT:interface=ADDR``, "
        "``ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem``, ``unix:PATH``, "
        "``systemd:domain=INET:index=N``.",
        default=DEFAULT_LISTEN,
        repeatable=True,
    ),
    Option(
        "base-url",
        "Public base URL, e.g. https://mail-mcp.example.com (default: derived from the first tcp "
        "--listen).",
    ),
    Option(
        "state-dir",
        "Directory for the key ring, SQLite store and local attachments.",
        default=DEFAULT_STATE_DIR,
        commands=BOTH,
        help_for={GENERATE: "State directory of the daemon."},
    ),
    Option(
        "store",
        "Grant store: sqlite:PATH (default <state-dir>/mailmcp.sqlite3) or redis://host:port/db.",
        commands=BOTH,
        help_for={
            GENERATE: "The daemon's grant store, sqlite:PATH (default <state-dir>/mailmcp.sqlite3) "
            "or redis://host:port/db: --revoke-* work there, and a client too big for a "
            "compact id is filed there."
        },
    ),
    Option(
        "attachments",
        "Attachment store: local (files under the state dir) or s3://bucket/prefix.",
        default="local",
    ),
    Option(
        "mail-ca-file",
        "Extra PEM CA bundle trusted for IMAP/SMTP servers with a private CA.",
    ),
    Option(
        "store-ca-file",
        "PEM CA bundle that a rediss:// --store server's certificate must chain to (default: the "
        "system trust store).",
        commands=BOTH,
        help_for={GENERATE: "With a rediss:// --store: the PEM CAs its certificate must chain to."},
    ),
    Option(
        "key-file",
        "Read the key ring from this file instead of <state-dir>/keys.json.",
        commands=BOTH,
        help_for={GENERATE: "Key ring file, if not <state-dir>/keys.json."},
    ),
    Option(
        "pool-size",
        "Logged-in IMAP connections kept per account.",
        default="4",
        parse=positive(int),
    ),
    Option(
        "pool-wait-timeout",
        "Seconds a call waits for a free pooled IMAP connection.",
        default="15",
        parse=positive(float),
    ),
    Option(
        "pool-idle-timeout",
        "Seconds an idle pooled IMAP connection is kept.",
        default="300",
        parse=positive(float),
    ),
    Option(
        "imap-timeout",
        "Seconds one IMAP command (or connect/login) may take.",
        default="30",
        parse=positive(float),
    ),
    Option(
        "smtp-timeout",
        "Seconds one SMTP send may take.",
        default="60",
        parse=positive(float),
    ),
    Option(
        "access-token-lifetime",
        "Access token lifetime in seconds.",
        default="28800",
        parse=positive(int),
    ),
    Option(
        "refresh-token-lifetime",
        "Absolute refresh token lifetime from login, in seconds.",
        default="2592000",
        parse=positive(int),
    ),
    Option(
        "code-lifetime",
        "Authorization code lifetime in seconds.",
        default="60",
        parse=positive(int),
    ),
    Option(
        "attachment-link-lifetime",
        "Lifetime of attachment download links in seconds.",
        default="3600",
        parse=positive(int),
    ),
    Option(
        "max-request-body",
        "Largest accepted /mcp request body in bytes, once its access token is verified (before "
        "that, and on every other path, 64 KiB).",
        default="33554432",
        parse=positive(int),
    ),
    Option(
        "max-requests-per-account",
        "Most /mcp requests one mailbox may have in progress or waiting at once; more are "
        "answered 503 with Retry-After.",
        default="16",
        parse=positive(int),
    ),
    Option(
        "max-queued-requests",
        "Most /mcp requests waiting for their turn, all accounts together; more are answered 503 "
        "with Retry-After.",
        default="2048",
        parse=positive(int),
    ),
    Option(
        "login-concurrency",
        "Most live IMAP/SMTP login checks in flight at once.",
        default="32",
        parse=positive(int),
    ),
    Option(
        "login-attempts-per-address",
        "Login attempts allowed per client address per minute.",
        default="20",
        parse=positive(int),
    ),
    Option(
        "login-failures-per-user",
        "Failed logins allowed per username (IMAP and SMTP, normalised) per 5 minutes.",
        default="5",
        parse=positive(int),
    ),
    Option(
        "login-failures-per-address",
        "Failed logins allowed per client address per hour.",
        default="30",
        parse=positive(int),
    ),
    Option(
        "login-failures-global",
        "Failed logins allowed across all users and addresses per 5 minutes.",
        default="300",
        parse=positive(int),
    ),
    Option(
        "trusted-proxies",
        "Reverse proxies (comma/space separated addresses or CIDR networks) whose X-Forwarded-For "
        "hops are believed.",
        default="",
    ),
    Option(
        "attachment-max-bytes",
        "Largest single attachment linked, stored or sent, in bytes.",
        default="26214400",
        parse=positive(int),
    ),
    Option(
        "attachments-max-message-bytes",
        "Most attachment bytes linked or sent per message.",
        default="36700160",
        parse=positive(int),
    ),
    Option(
        "shutdown-timeout",
        "Seconds in-flight requests may take to finish on SIGTERM.",
        default="10",
        parse=positive(float),
    ),
    Option(
        "allowed-origins",
        "Extra browser Origins (space separated) allowed to call /mcp, and answered with CORS "
        "there and on the metadata, token, revocation and registration endpoints (browser clients "
        "such as the MCP Inspector's direct mode).",
        default="",
    ),
    Option(
        "max-scope",
        "The most any grant may allow: scopes separated by commas (mail.read, mail.organize, "
        "mail.draft, mail.send, mail.delete; default: all).",
        default="",
    ),
    Option(
        "log-level",
        "Lowest level of log events written: debug, info, warn or error.",
        default="info",
    ),
    Option(
        "log-format",
        "Log line format: text (twistd's lines) or json (one JSON object per line).",
        default="text",
    ),
    Option(
        "imap-connect-concurrency",
        "Most new IMAP connections (connect, TLS, LOGIN) in progress at once; further calls wait "
        "their turn (bounds reactor lag in a login burst).",
        default="16",
        parse=positive(int),
    ),
    Option(
        "metrics-listen",
        "Endpoint serving GET /metrics (Prometheus; ?format=json for the benchmarks), like "
        "--listen, e.g. tcp:9100:interface=127.0.0.1; off when not given. Keep it private: it is "
        "not on the public listener.",
    ),
    Option(
        "send-burst",
        "Recipients one account may send to at once before --sends-per-hour applies (each message "
        "costs its to+cc+bcc count; one with more is refused).",
        default="20",
        parse=positive(int),
    ),
    Option(
        "sends-per-hour",
        "Recipients one account may send to per hour after its burst; shared by all daemons on "
        "one Redis --store, per process with SQLite.",
        default="120",
        parse=positive(float),
    ),
    Option(
        "imap-host",
        "Default mail profile: the IMAP server of clients that bring none (Claude, the MCP "
        "Inspector: Client ID Metadata Documents and /oauth/register are on only with a default "
        "profile).",
        commands=BOTH,
        env_in=DAEMON_ONLY,
        help_for={GENERATE: "IMAP server host name."},
    ),
    Option(
        "imap-port",
        "Default profile's IMAP port (default 993 for tls, 143 for starttls).",
        commands=BOTH,
        env_in=DAEMON_ONLY,
        help_for={GENERATE: "IMAP port (default 993 for tls, 143 for starttls)."},
    ),
    Option(
        "imap-security",
        "Default profile's IMAP tls, starttls or plain (plain only on loopback).",
        default="tls",
        commands=BOTH,
        env_in=DAEMON_ONLY,
        help_for={GENERATE: "tls, starttls or plain (plain only on loopback)."},
    ),
    Option(
        "smtp-host",
        "Default profile's SMTP submission server (required with --imap-host).",
        commands=BOTH,
        env_in=DAEMON_ONLY,
        help_for={GENERATE: "SMTP submission server host name."},
    ),
    Option(
        "smtp-port",
        "Default profile's SMTP port (default 465 for tls, 587 for starttls).",
        commands=BOTH,
        env_in=DAEMON_ONLY,
        help_for={GENERATE: "SMTP port (default 465 for tls, 587 for starttls)."},
    ),
    Option(
        "smtp-security",
        "Default profile's SMTP tls, starttls or plain (plain only on loopback).",
        default="tls",
        commands=BOTH,
        env_in=DAEMON_ONLY,
        help_for={GENERATE: "tls, starttls or plain (plain only on loopback)."},
    ),
    # Provider sign-in (XOAUTH2, issue 18) of the default profile, or of a
    # provisioned client: checked by mailmcp.provider._options.parse_provider.
    Option(
        "imap-auth",
        "How users sign in to the mail servers: password (the login page asks for it), or "
        "xoauth2 / oauthbearer (the login page offers 'Continue with <provider>' and IMAP and "
        "SMTP get the provider's access token); needs --oauth-provider.",
        default="password",
        commands=BOTH,
        env_in=DAEMON_ONLY,
    ),
    Option(
        "oauth-provider",
        "With --imap-auth xoauth2/oauthbearer: microsoft (Entra ID: Microsoft 365, "
        "Outlook.com), google (Gmail) or custom (then --oauth-authorize-url, --oauth-token-url "
        "and --oauth-scope).",
        commands=BOTH,
        env_in=DAEMON_ONLY,
    ),
    Option(
        "oauth-client-id",
        "The client (application) id mailmcp is registered under at the provider.",
        commands=BOTH,
        env_in=DAEMON_ONLY,
    ),
    Option(
        "oauth-client-secret-file",
        "File holding the OAuth client secret (read at start; keep it mode 0600). The secret "
        "itself is never taken on the command line.",
        commands=BOTH,
        env_in=DAEMON_ONLY,
    ),
    Option(
        "oauth-authorize-url",
        "--oauth-provider custom: the provider's authorization endpoint (https).",
        commands=BOTH,
        env_in=DAEMON_ONLY,
    ),
    Option(
        "oauth-token-url",
        "--oauth-provider custom: the provider's token endpoint (https).",
        commands=BOTH,
        env_in=DAEMON_ONLY,
    ),
    Option(
        "oauth-scope",
        "--oauth-provider custom: the scopes to ask for (space separated: IMAP and SMTP access, "
        "offline access for refresh tokens, and openid email for the address).",
        commands=BOTH,
        env_in=DAEMON_ONLY,
    ),
    Option(
        "oauth-userinfo-url",
        "--oauth-provider custom: the userinfo endpoint (https) that names the mailbox address; "
        "without it the ID token's email claim does.",
        commands=BOTH,
        env_in=DAEMON_ONLY,
    ),
    Option(
        "client-metadata-dir",
        "Directory of Client ID Metadata Documents (*.json) used instead of fetching their URLs; "
        "they replace the pinned copies of Claude's documents with the same client_id.",
    ),
    Option(
        "client-metadata-allow",
        "URL prefix of Client ID Metadata Documents fetched although the address rules would "
        "refuse them (private addresses, plain http: in-house clients); repeatable, space "
        "separated in the variable.",
        default="",
        repeatable=True,
    ),
    Option(
        "registrations-per-address",
        "Dynamic client registrations (/oauth/register) allowed per client address per hour.",
        default="20",
        parse=positive(int),
    ),
    Option(
        "user-servers-allow",
        "With --allow-user-servers: networks (and ports) user-named mail servers may be in "
        "besides public addresses on ports 993/143/465/587, e.g. '10.1.0.0/16 127.0.0.1:1993 "
        "[fd00::]/8:*' (space or comma separated; no port: the usual ones; * any).",
        default="",
    ),
    Option(
        "send-allow-domains",
        "Recipient domains mail may be sent to (comma/space separated; example.com exactly, "
        ".example.com its subdomains); a send to any other recipient is refused. Empty: no "
        "restriction.",
        default="",
    ),
    Option(
        "trusted-authserv-id",
        "authserv-id of your own mail server's Authentication-Results header (e.g. "
        "mx.example.com); only the topmost such header is believed. Unset: SPF/DKIM/DMARC are "
        "reported unknown.",
    ),
    Option(
        "audit-log",
        "Append one JSON line per login, token issue, refresh, revocation and tool call to this "
        "file (reopened on SIGHUP), or - for the main log; off when not given.",
    ),
    Option(
        "trust-forwarded",
        "Treat the direct peer as a trusted proxy whatever its address (e.g. a UNIX socket); "
        "prefer --trusted-proxies.",
        flag=True,
    ),
    Option(
        "allow-insecure-base-url",
        "Accept an http:// --base-url on a host that is not loopback (only behind a proxy that "
        "adds TLS; MCP clients require https).",
        flag=True,
    ),
    Option(
        "allow-user-servers",
        "Let users name their IMAP/SMTP servers on the login page (prefilled from the email "
        "domain's RFC 6186 SRV records) when their client brings none; only public addresses on "
        "the usual ports unless --user-servers-allow says otherwise.",
        flag=True,
    ),
    Option(
        "imap-connect-per-call",
        "Do not pool IMAP connections: connect, log in and log out on every call (a benchmark "
        "baseline, slow).",
        flag=True,
    ),
    # mailmcp-generate only: what to provision, or which one-shot step to run.
    Option(
        "name",
        "A label for this client, shown on the login page.",
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
    Option(
        "scope",
        "The most this client may be granted, e.g. mail.read for a read-only connector: scopes "
        "separated by commas (default: all of " + ", ".join(ALL_SCOPES) + ").",
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
    Option(
        "redirect-uri",
        "Allowed redirect URI, repeatable (default: Claude's callbacks and http://127.0.0.1/*, "
        "http://localhost/* on any port).",
        repeatable=True,
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
    Option(
        "revoke-account",
        "End every grant of the mailbox whose IMAP username is EMAIL, on the server named by "
        "--imap-host/--imap-port, and exit.",
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
    Option(
        "revoke-client",
        "Make CLIENT_ID unusable for good (a deny-list in the store), end its grants and exit.",
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
    Option(
        "activate-key",
        "Make key KID (added with --add-key --inactive) the encrypting key and exit.",
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
    Option(
        "json",
        "Print one JSON object instead of human-readable text.",
        flag=True,
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
    Option(
        "public",
        "A public client: no secret, PKCE only (e.g. Claude Code).",
        flag=True,
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
    Option(
        "add-key",
        "Add a new current key to the key ring (rotation) and exit.",
        flag=True,
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
    Option(
        "inactive",
        "With --add-key: the new key only decrypts until --activate-key (staged rotation across "
        "several processes).",
        flag=True,
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
    Option(
        "smtp-files-sent",
        "The SMTP server files sent mail in Sent itself (Gmail, Office 365): send_mail_message "
        "then adds no copy of its own.",
        flag=True,
        commands=GENERATE_ONLY,
        env_in=NOWHERE,
    ),
)


def options_of(command: str) -> list[Option]:
    """C{command}'s options, in table order."""
    return [option for option in OPTIONS if command in option.commands]


_BY_NAME = {option.name: option for option in OPTIONS}


def option(name: str) -> Option:
    return _BY_NAME[name]


def default_of(name: str) -> Any:
    """
    The daemon's default value of option C{name}, parsed as a given value
    would be: the default of its ``Config`` field.
    """
    entry = _BY_NAME[name]
    if entry.flag:
        return False
    assert entry.default is not None, name
    return entry.default if entry.parse is None else entry.parse(name, entry.default)


def resolve(
    given: Mapping[str, object], command: str, environ: Mapping[str, str]
) -> dict[str, object]:
    """
    Every option of C{command} with its raw value: as C{given} (parsed
    options, None or absent where not given), else from its variable, else
    its default (None if it has none).
    """
    return {o.name: o.value_from(given.get(o.name), environ, command) for o in options_of(command)}


def parse_numbers(resolved: Mapping[str, object], command: str) -> dict[str, object]:
    """
    The parsed value of every option of C{command} that has a parser, by
    ``Config`` attribute name.

    :raises usage.UsageError: for the first bad one, in table order.
    """
    return {
        o.attribute: o.parse(o.name, str(resolved[o.name]))
        for o in options_of(command)
        if o.parse is not None
    }


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
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            if self.parent is None:
                raise
            command = self.parent.subCommand or "mailmcp"
            sys.stderr.write(f"{command}: error: {e} (see: twistd {command} --help)\n")
            sys.stderr.flush()
            raise SystemExit(1) from None


def _appender(name: str, doc: str) -> Callable[[usage.Options, str], None]:
    def opt(self: usage.Options, value: str) -> None:
        self[name] = [*(self[name] or []), value]

    opt.__doc__ = doc
    return opt


class TableOptions(OneLineErrorOptions):
    """
    `usage.Options` of one command, built from `OPTIONS`: a subclass sets
    C{command} and gets that command's parameters, flags and repeatable
    ``opt_*`` handlers.  Values not given are None (0 for flags) until
    `resolved` adds the environment and the defaults.
    """

    command: ClassVar[str]
    optParameters: ClassVar[list[list[Any]]] = []
    optFlags: ClassVar[list[list[Any]]] = []

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mine = options_of(cls.command)
        cls.optParameters = [
            [
                o.name,
                None,
                None if o.reads_env(cls.command) else o.default,
                o.usage_help(cls.command),
            ]
            for o in mine
            if not o.flag and not o.repeatable
        ]
        cls.optFlags = [[o.name, None, o.usage_help(cls.command)] for o in mine if o.flag]
        for o in mine:
            if o.repeatable:
                method = "opt_" + o.name.replace("-", "_")
                setattr(cls, method, _appender(o.name, o.usage_help(cls.command)))

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._environ = os.environ if environ is None else environ
        for o in options_of(self.command):
            if o.repeatable:
                self[o.name] = None

    def resolved(self) -> dict[str, object]:
        """Every option's value, with the environment and the defaults filled in."""
        return resolve(self, self.command, self._environ)


def _rst_rows(command: str) -> Iterable[tuple[str, str, str | None, str]]:
    for o in options_of(command):
        if o.flag:
            yield f"--{o.name}", o.env, "off", o.help + " The variable takes 1/true/yes/on."
        else:
            yield f"--{o.name}", o.env, o.default or None, o.help


def options_table_rst(command: str = DAEMON) -> str:
    """README.rst's option table of C{command} (between the CONFIG TABLE markers)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 20 28 17 35",
        "",
        "   * - Option",
        "     - Environment variable",
        "     - Default",
        "     - Meaning",
    ]
    for name, variable, default, text in _rst_rows(command):
        lines += [
            f"   * - ``{name}``",
            f"     - ``{variable}``",
            f"     - ``{default}``" if default else "     - (none)",
            f"     - {text}",
        ]
    return "\n".join(lines) + "\n"


README_BEGIN = ".. BEGIN CONFIG TABLE (generated)\n\n"
README_END = "\n.. END CONFIG TABLE\n"


def readme_table(readme: str) -> str:
    """The generated section of C{readme}'s text."""
    if README_BEGIN not in readme or README_END not in readme:
        raise ValueError("README.rst has no CONFIG TABLE markers")
    return readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0]


def update_readme(path: Path) -> bool:
    """Rewrite the table between the markers in C{path}; True if it changed."""
    readme = path.read_text(encoding="utf-8")
    old = readme_table(readme)
    new = options_table_rst()
    if old == new:
        return False
    head, rest = readme.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    path.write_text(head + README_BEGIN + new + README_END + tail, encoding="utf-8")
    return True


def main(argv: list[str]) -> int:
    """``python -m mailmcp._options --rst | --update-readme [README.rst]``."""
    if argv[:1] == ["--rst"] and len(argv) == 1:
        sys.stdout.write(options_table_rst())
        return 0
    if argv[:1] == ["--update-readme"] and len(argv) <= 2:
        path = Path(argv[1] if len(argv) == 2 else "README.rst")
        changed = update_readme(path)
        print(f"{path}: {'updated' if changed else 'already up to date'}")
        return 0
    print("usage: python -m mailmcp._options --rst | --update-readme [README.rst]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
