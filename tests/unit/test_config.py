"""
``twistd mailmcp`` options: parsed values compared as whole Config values
(so a changed default shows up), MAILMCP_* environment fallbacks, the
command line winning over the environment, and every bad value refused as a
`usage.UsageError` before any service starts.
"""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import attrs
import pytest
from twisted.python import usage

from mailmcp._config import (
    Config,
    base_url_from_listen,
    normalise_base_url,
    prepare_state_dir,
)
from mailmcp._options import DAEMON, DEFAULT_LISTEN, options_of, options_table_rst, readme_table
from mailmcp.oauth._clients import MailServer
from mailmcp.oauth._keyring import KeyRing, new_master_key, write_keyring
from mailmcp.oauth._user_servers import USUAL_PORTS, AllowRule
from mailmcp.provider._client import ProviderProfile
from mailmcp.tap import Options


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Options:
    options = Options(environ={} if environ is None else environ)
    options.parseOptions(argv)
    return options


def without_keyring(config: Config) -> Config:
    """Config compares by value; the key ring (random) is compared separately."""
    return attrs.evolve(config, keyring=None)  # type: ignore[arg-type]


def write_pem_ca(path: Path) -> None:
    """A throw-away self-signed CA certificate in PEM (--store-ca-file checks for one)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "store test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def defaults(state_dir: Path) -> Config:
    """The embedded defaults, written out literally so a change is noticed."""
    return Config(
        listen=("tcp:8080:interface=127.0.0.1",),
        base_url="http://127.0.0.1:8080",
        state_dir=state_dir,
        store=f"sqlite:{state_dir / 'mailmcp.sqlite3'}",
        attachments="local",
        mail_ca_file=None,
        keyring=None,  # type: ignore[arg-type]
        pool_size=4,
        pool_wait_timeout=15.0,
        pool_idle_timeout=300.0,
        imap_timeout=30.0,
        smtp_timeout=60.0,
        access_token_lifetime=28800,
        refresh_token_lifetime=2592000,
        code_lifetime=60,
        attachment_link_lifetime=3600,
        max_request_body=33554432,
        login_concurrency=32,
        shutdown_timeout=10.0,
        allowed_origins=(),
        trust_forwarded=False,
    )


def test_no_options_no_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    With nothing given, the config is the embedded defaults: loopback port
    8080, ./mailmcp-state (created 0700), SQLite inside it, local attachments.
    """
    monkeypatch.chdir(tmp_path)
    options = parse([])
    state = tmp_path / "mailmcp-state"
    assert without_keyring(options.config) == defaults(state)
    assert state.is_dir()
    assert state.stat().st_mode & 0o777 == 0o700
    assert isinstance(options.config.keyring, KeyRing)
    assert (state / "keys.json").stat().st_mode & 0o777 == 0o600


def test_raw_options_dict(tmp_path: Path) -> None:
    """The Options mapping itself: every parameter present, None where not given."""
    options = parse(["--state-dir", str(tmp_path), "--pool-size", "9", "--trust-forwarded"])
    expected: dict[str, object] = {o.name: 0 if o.flag else None for o in options_of(DAEMON)}
    expected.update({"state-dir": str(tmp_path), "pool-size": "9", "trust-forwarded": 1})
    assert dict(options) == expected


def test_every_option_on_the_command_line(tmp_path: Path) -> None:
    """Every option given on the command line ends up in the Config."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here\n")
    state = tmp_path / "state"
    options = parse([
        "--listen", "tcp:9000:interface=127.0.0.1",
        "--listen", "unix:/tmp/x.sock",
        "--base-url", "HTTPS://Mail.Example.COM/prefix/",
        "--state-dir", str(state),
        "--store", "redis://127.0.0.1:6379/2",
        "--attachments", "s3://bucket/some/prefix",
        "--mail-ca-file", str(ca),
        "--pool-size", "2",
        "--pool-wait-timeout", "1.5",
        "--pool-idle-timeout", "60",
        "--imap-timeout", "5",
        "--smtp-timeout", "6",
        "--access-token-lifetime", "100",
        "--refresh-token-lifetime", "200",
        "--code-lifetime", "30",
        "--attachment-link-lifetime", "40",
        "--max-request-body", "1000",
        "--login-concurrency", "3",
        "--shutdown-timeout", "2.5",
        "--allowed-origins", "https://a.example https://b.example",
        "--trust-forwarded",
        "--trusted-proxies", "127.0.0.1/32 ::1,10.1.2.3/8",
        "--metrics-listen", "tcp:9101:interface=127.0.0.1",
    ])
    assert without_keyring(options.config) == Config(
        listen=("tcp:9000:interface=127.0.0.1", "unix:/tmp/x.sock"),
        base_url="https://mail.example.com/prefix",
        state_dir=state.resolve(),
        store="redis://127.0.0.1:6379/2",
        attachments="s3://bucket/some/prefix",
        mail_ca_file=ca,
        keyring=None,  # type: ignore[arg-type]
        pool_size=2,
        pool_wait_timeout=1.5,
        pool_idle_timeout=60.0,
        imap_timeout=5.0,
        smtp_timeout=6.0,
        access_token_lifetime=100,
        refresh_token_lifetime=200,
        code_lifetime=30,
        attachment_link_lifetime=40,
        max_request_body=1000,
        login_concurrency=3,
        shutdown_timeout=2.5,
        allowed_origins=("https://a.example", "https://b.example"),
        trust_forwarded=True,
        trusted_proxies=(ip_network("127.0.0.1/32"), ip_network("::1/128"), ip_network("10.0.0.0/8")),
        metrics_listen="tcp:9101:interface=127.0.0.1",
    )


def test_every_option_from_the_environment(tmp_path: Path) -> None:
    """Each MAILMCP_<NAME> variable stands in for its option."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x\n")
    state = tmp_path / "envstate"
    store_ca = tmp_path / "store-ca.pem"
    write_pem_ca(store_ca)
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("env-secret\n")
    secret_file.chmod(0o600)
    environ = {
        "MAILMCP_LISTEN": "tcp:9001:interface=127.0.0.1 unix:/tmp/y.sock",
        "MAILMCP_BASE_URL": "https://env.example",
        "MAILMCP_STATE_DIR": str(state),
        "MAILMCP_STORE": "sqlite:/tmp/other.sqlite3",
        "MAILMCP_ATTACHMENTS": "s3://b/p",
        "MAILMCP_MAIL_CA_FILE": str(ca),
        "MAILMCP_STORE_CA_FILE": str(store_ca),
        "MAILMCP_POOL_SIZE": "7",
        "MAILMCP_POOL_WAIT_TIMEOUT": "8",
        "MAILMCP_POOL_IDLE_TIMEOUT": "9",
        "MAILMCP_IMAP_TIMEOUT": "10",
        "MAILMCP_SMTP_TIMEOUT": "11",
        "MAILMCP_ACCESS_TOKEN_LIFETIME": "12",
        "MAILMCP_REFRESH_TOKEN_LIFETIME": "13",
        "MAILMCP_CODE_LIFETIME": "14",
        "MAILMCP_ATTACHMENT_LINK_LIFETIME": "15",
        "MAILMCP_MAX_REQUEST_BODY": "16",
        "MAILMCP_LOGIN_CONCURRENCY": "17",
        "MAILMCP_SHUTDOWN_TIMEOUT": "18",
        "MAILMCP_ALLOWED_ORIGINS": "https://c.example",
        "MAILMCP_LOG_LEVEL": "Debug",
        "MAILMCP_LOG_FORMAT": "JSON",
        "MAILMCP_TRUST_FORWARDED": "true",
        "MAILMCP_TRUSTED_PROXIES": "192.0.2.0/24, 2001:db8::/32",
        "MAILMCP_IMAP_CONNECT_PER_CALL": "yes",
        "MAILMCP_METRICS_LISTEN": "tcp:9102:interface=127.0.0.1",
        "MAILMCP_IMAP_HOST": "IMAP.example",
        "MAILMCP_IMAP_PORT": "1993",
        "MAILMCP_IMAP_SECURITY": "tls",
        "MAILMCP_SMTP_HOST": "smtp.example",
        "MAILMCP_SMTP_PORT": "",
        "MAILMCP_SMTP_SECURITY": "starttls",
        "MAILMCP_CLIENT_METADATA_DIR": str(tmp_path),
        "MAILMCP_CLIENT_METADATA_ALLOW": "http://127.0.0.1:9/docs/ https://intra.example/c/",
        "MAILMCP_USER_SERVERS_ALLOW": "127.0.0.0/8:* 10.1.0.0/16, [fd00::]/8:1993",
        "MAILMCP_SEND_ALLOW_DOMAINS": "Example.COM, .bücher.example",
        "MAILMCP_TRUSTED_AUTHSERV_ID": "MX.Example.com",
        "MAILMCP_AUDIT_LOG": str(tmp_path / "audit.jsonl"),
        "MAILMCP_MAX_SCOPE": "mail.read, mail.draft",
        "MAILMCP_IMAP_AUTH": "OAuthBearer",
        "MAILMCP_OAUTH_PROVIDER": "custom",
        "MAILMCP_OAUTH_CLIENT_ID": "env-client",
        "MAILMCP_OAUTH_CLIENT_SECRET_FILE": str(secret_file),
        "MAILMCP_OAUTH_AUTHORIZE_URL": "https://id.example/authorize",
        "MAILMCP_OAUTH_TOKEN_URL": "https://id.example/token",
        "MAILMCP_OAUTH_SCOPE": "openid  email mail",
        "MAILMCP_OAUTH_USERINFO_URL": "https://id.example/userinfo",
    }
    # Every option of the contract has its variable in this test: numeric
    # options added later get a value here; anything else must be added above.
    extra: dict[str, float | int | bool] = {}
    for option in options_of(DAEMON):
        if option.parse is not None and option.env not in environ:
            environ[option.env] = "7"
            extra[option.attribute] = option.parse(option.name, "7")  # type: ignore[assignment]
        if option.flag and option.env not in environ:
            environ[option.env] = "yes"
            extra[option.attribute] = True
    names = {option.env for option in options_of(DAEMON)}
    assert names - {"MAILMCP_KEY_FILE"} <= set(environ), "give the new option a value in this test"
    config = parse([], environ).config
    assert without_keyring(config) == attrs.evolve(Config(
        listen=("tcp:9001:interface=127.0.0.1", "unix:/tmp/y.sock"),
        base_url="https://env.example",
        state_dir=state.resolve(),
        store="sqlite:/tmp/other.sqlite3",
        attachments="s3://b/p",
        mail_ca_file=ca,
        store_ca_file=store_ca,
        keyring=None,  # type: ignore[arg-type]
        pool_size=7,
        pool_wait_timeout=8.0,
        pool_idle_timeout=9.0,
        imap_timeout=10.0,
        smtp_timeout=11.0,
        access_token_lifetime=12,
        refresh_token_lifetime=13,
        code_lifetime=14,
        attachment_link_lifetime=15,
        max_request_body=16,
        login_concurrency=17,
        shutdown_timeout=18.0,
        allowed_origins=("https://c.example",),
        log_level="debug",
        log_format="json",
        trust_forwarded=True,
        trusted_proxies=(ip_network("192.0.2.0/24"), ip_network("2001:db8::/32")),
        imap_connect_per_call=True,
        metrics_listen="tcp:9102:interface=127.0.0.1",
        default_imap=MailServer("imap.example", 1993, "tls"),
        default_smtp=MailServer("smtp.example", 587, "starttls"),
        client_metadata_dir=tmp_path,
        client_metadata_allow=("http://127.0.0.1:9/docs/", "https://intra.example/c/"),
        user_servers_allow=(
            AllowRule(ip_network("127.0.0.0/8"), None),
            AllowRule(ip_network("10.1.0.0/16"), USUAL_PORTS),
            AllowRule(ip_network("fd00::/8"), frozenset({1993})),
        ),
        send_allow_domains=("example.com", ".xn--bcher-kva.example"),
        trusted_authserv_id="mx.example.com",
        audit_log=str(tmp_path / "audit.jsonl"),
        max_scope=frozenset({"mail.read", "mail.draft"}),
        provider=ProviderProfile.custom(
            label="id.example", authorize_url="https://id.example/authorize",
            token_url="https://id.example/token", scope="openid email mail",
            userinfo_url="https://id.example/userinfo", client_id="env-client",
            client_secret="env-secret", imap_auth="oauthbearer"),
    ), **extra)


@pytest.mark.parametrize("value", ["10.0.0.0/33", "10.0.0.1:0", "10.0.0.1:http", "mail.example.com",
                                   "[fd00::/8:1"])
def test_user_servers_allow_refuses_bad_entries(tmp_path: Path, value: str) -> None:
    """A bad --user-servers-allow entry is one clear usage error naming it."""
    with pytest.raises(usage.UsageError, match="--user-servers-allow"):
        parse(["--state-dir", str(tmp_path / "s"), "--user-servers-allow", value])


def test_log_level_refuses_unknown_levels(tmp_path: Path) -> None:
    """An unknown --log-level is one clear usage error naming the choices."""
    with pytest.raises(usage.UsageError, match="debug, info, warn, error"):
        parse(["--log-level", "chatty"], {"MAILMCP_STATE_DIR": str(tmp_path)})


def test_log_format_refuses_unknown_formats(tmp_path: Path) -> None:
    """An unknown --log-format is one clear usage error naming the choices."""
    with pytest.raises(usage.UsageError, match="text, json"):
        parse(["--log-format", "xml"], {"MAILMCP_STATE_DIR": str(tmp_path)})


def test_key_file_from_environment(tmp_path: Path) -> None:
    """MAILMCP_KEY_FILE names the key ring file; nothing is created in the state dir."""
    ring = KeyRing([new_master_key()])
    key_file = tmp_path / "secret-keys.json"
    write_keyring(key_file, ring)
    state = tmp_path / "state"
    config = parse([], {"MAILMCP_KEY_FILE": str(key_file), "MAILMCP_STATE_DIR": str(state)}).config
    assert config.keyring.kids == ring.kids
    assert not (state / "keys.json").exists()


def test_command_line_wins_over_environment(tmp_path: Path) -> None:
    """An option given on the command line beats its environment variable."""
    environ = {
        "MAILMCP_STATE_DIR": str(tmp_path / "env"),
        "MAILMCP_POOL_SIZE": "7",
        "MAILMCP_LISTEN": "tcp:1:interface=127.0.0.1",
        "MAILMCP_BASE_URL": "https://env.example",
    }
    config = parse(
        ["--state-dir", str(tmp_path / "cli"), "--pool-size", "3", "--listen", "tcp:2",
         "--base-url", "https://cli.example"],
        environ,
    ).config
    assert config.state_dir == (tmp_path / "cli").resolve()
    assert config.pool_size == 3
    assert config.listen == ("tcp:2",)
    assert config.base_url == "https://cli.example"
    assert not (tmp_path / "env").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("", False), ("no", False)],
)
def test_flag_from_environment(tmp_path: Path, value: str, expected: bool) -> None:
    """Boolean variables accept 1/true/yes/on (any case); anything else is off."""
    config = parse(["--state-dir", str(tmp_path)], {"MAILMCP_TRUST_FORWARDED": value}).config
    assert config.trust_forwarded is expected


@pytest.mark.parametrize(
    ("listen", "base_url"),
    [
        (["tcp:9999"], "http://127.0.0.1:9999"),
        (["tcp:9999:interface=0.0.0.0"], "http://127.0.0.1:9999"),
        (["tcp:9999:interface=192.0.2.7"], "http://192.0.2.7:9999"),
        ([r"tcp6:9999:interface=\:\:1"], "http://[::1]:9999"),
        (["unix:/tmp/s", "tcp:7000"], "http://127.0.0.1:7000"),
        (["unix:/tmp/s"], "http://127.0.0.1:8080"),
        ([DEFAULT_LISTEN], "http://127.0.0.1:8080"),
    ],
)
def test_base_url_derived_from_listen(listen: list[str], base_url: str) -> None:
    """Without --base-url, the first tcp endpoint gives a local http base URL."""
    assert base_url_from_listen(listen) == base_url


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("https://Example.COM/", "https://example.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://example.com/mail/", "https://example.com/mail"),
        ("HTTPS://[::1]:8443", "https://[::1]:8443"),
    ],
)
def test_base_url_normalised(raw: str, canonical: str) -> None:
    """The base URL (the OAuth issuer) is canonical: lower-case, no trailing slash."""
    assert normalise_base_url(raw) == canonical


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        ([], {}),
        (["--base-url", "http://localhost:8080"], {}),
        (["--base-url", "http://app.localhost"], {}),
        (["--base-url", "http://127.0.0.2:9000/mcp-prefix"], {}),
        (["--base-url", "http://[::1]:8080"], {}),
        (["--listen", r"tcp6:9999:interface=\:\:1"], {}),
        (["--base-url", "https://mail.example.com"], {}),
        (["--base-url", "http://mail.example.com", "--allow-insecure-base-url"], {}),
        (["--base-url", "http://mail.example.com"], {"MAILMCP_ALLOW_INSECURE_BASE_URL": "yes"}),
    ],
)
def test_base_url_transport_allowed(tmp_path: Path, argv: list[str], environ: dict[str, str]) -> None:
    """
    Plain http is fine on loopback (the default) and https anywhere; an
    http URL for other hosts needs --allow-insecure-base-url (a TLS proxy
    in front), by option or environment.
    """
    config = parse(["--state-dir", str(tmp_path), *argv], environ).config
    assert config.allow_insecure_base_url is ("--allow-insecure-base-url" in argv or bool(environ))


BAD_VALUES: list[tuple[list[str], dict[str, str], str]] = [
    (["--pool-size", "many"], {}, "--pool-size must be a number"),
    (["--trusted-proxies", "10.0.0.0/8 proxy.example"], {},
     "--trusted-proxies: 'proxy.example' is not an IP address or CIDR network"),
    ([], {"MAILMCP_TRUSTED_PROXIES": "10.0.0.0/33"}, "--trusted-proxies: '10.0.0.0/33'"),
    (["--login-failures-global", "0"], {}, "--login-failures-global must be greater than zero"),
    (["--pool-size", "0"], {}, "--pool-size must be greater than zero"),
    (["--pool-size", "1.5"], {}, "--pool-size must be a number"),
    (["--imap-timeout", "-1"], {}, "--imap-timeout must be greater than zero"),
    (["--smtp-timeout", "x"], {}, "--smtp-timeout must be a number"),
    (["--pool-wait-timeout", "0"], {}, "--pool-wait-timeout"),
    (["--pool-idle-timeout", "nope"], {}, "--pool-idle-timeout"),
    (["--access-token-lifetime", "8h"], {}, "--access-token-lifetime"),
    (["--refresh-token-lifetime", "0"], {}, "--refresh-token-lifetime"),
    (["--code-lifetime", ""], {}, "--code-lifetime"),
    (["--attachment-link-lifetime", "-5"], {}, "--attachment-link-lifetime"),
    (["--max-request-body", "1e9"], {}, "--max-request-body"),
    (["--login-concurrency", "0"], {}, "--login-concurrency"),
    (["--shutdown-timeout", "soon"], {}, "--shutdown-timeout"),
    ([], {"MAILMCP_POOL_SIZE": "lots"}, "--pool-size must be a number"),
    (["--base-url", "ftp://example.com"], {}, "--base-url must be an http(s) URL"),
    (["--base-url", "example.com"], {}, "--base-url must be an http(s) URL"),
    (["--base-url", "https://example.com/?x=1"], {}, "--base-url must not carry"),
    (["--base-url", "https://example.com/#frag"], {}, "--base-url must not carry"),
    (["--base-url", "https://user:pw@example.com"], {}, "--base-url must not carry"),
    ([], {"MAILMCP_BASE_URL": "nonsense"}, "--base-url must be an http(s) URL"),
    (["--base-url", "http://mail.example.com"], {}, "is plain http on a host that is not loopback"),
    ([], {"MAILMCP_BASE_URL": "http://192.0.2.7:8080"}, "--allow-insecure-base-url"),
    (["--listen", "tcp:9999:interface=192.0.2.7"], {}, "http://192.0.2.7:9999 is plain http"),
    (["--base-url", "http://127.0.0.1.example.com"], {}, "use an https:// --base-url"),
    (["--store", "mysql://db"], {}, "--store must be sqlite:PATH or redis://"),
    (["--store", "sqlite:"], {}, "--store must be"),
    (["--attachments", "ftp://bucket"], {}, "--attachments must be local or s3://"),
    (["--attachments", "s3://"], {}, "--attachments must be"),
    (["--attachments", "s3://bucket/p?x=1"], {}, "--attachments must be"),
    (["--listen", "8080"], {}, "--listen needs an endpoint string"),
    (["--listen", ""], {}, "--listen needs an endpoint string"),
    ([], {"MAILMCP_LISTEN": "nocolon"}, "--listen needs an endpoint string"),
    (["--metrics-listen", "9100"], {}, "--metrics-listen needs an endpoint string"),
    ([], {"MAILMCP_METRICS_LISTEN": "nocolon"}, "--metrics-listen needs an endpoint string"),
    (["--max-scope", "mail.read,mail.everything"], {}, "--max-scope: unknown scope 'mail.everything'"),
    ([], {"MAILMCP_MAX_SCOPE": " , "}, "--max-scope: name at least one scope"),
    (["--mail-ca-file", "/nonexistent/ca.pem"], {}, "--mail-ca-file /nonexistent/ca.pem is not a readable file"),
    (["--store-ca-file", "/nonexistent/ca.pem"], {}, "--store-ca-file /nonexistent/ca.pem is not a readable file"),
    ([], {"MAILMCP_STORE_CA_FILE": "/dev/null"}, "--store-ca-file /dev/null holds no PEM certificate"),
    (["--key-file", "/nonexistent/keys.json"], {}, "cannot read key ring /nonexistent/keys.json"),
    ([], {"MAILMCP_KEYS": "{not json"}, "corrupt key ring in MAILMCP_KEYS"),
    (["--unknown-option"], {}, "option --unknown-option not recognized"),
    (["--trust-forwarded=yes"], {}, "trust-forwarded"),
    (["positional"], {}, "Wrong number of arguments"),
]


@pytest.mark.parametrize(("argv", "environ", "message"), BAD_VALUES)
def test_bad_values_are_usage_errors(
    tmp_path: Path, argv: list[str], environ: dict[str, str], message: str
) -> None:
    """Every bad value is a UsageError whose single line says what is wrong."""
    with pytest.raises(usage.UsageError) as raised:
        parse(["--state-dir", str(tmp_path / "state"), *argv], environ)
    text = str(raised.value)
    assert message in text
    assert "\n" not in text


def test_state_dir_under_a_file(tmp_path: Path) -> None:
    """A state dir that cannot be created (a regular file is in the way) is refused."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(usage.UsageError, match="cannot create state directory .*file/sub"):
        parse(["--state-dir", str(blocker / "sub")])


def test_state_dir_is_a_file(tmp_path: Path) -> None:
    """A state dir path naming an existing regular file is refused."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(usage.UsageError, match="state directory"):
        parse(["--state-dir", str(blocker)])


def test_corrupt_key_file_in_state_dir(tmp_path: Path) -> None:
    """A corrupt keys.json is refused, naming the file and never its content."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "keys.json").write_text('{"version": 1, "keys": [{"kid": "k", "secret": "c2VjcmV0", "created": 1}]}')
    with pytest.raises(usage.UsageError) as raised:
        parse(["--state-dir", str(state)])
    assert "corrupt key ring in" in str(raised.value)
    assert "keys.json" in str(raised.value)
    assert "c2VjcmV0" not in str(raised.value)


def test_existing_key_ring_is_kept(tmp_path: Path) -> None:
    """A second start reads the key ring the first one created; it never regenerates it."""
    first = parse(["--state-dir", str(tmp_path)]).config.keyring
    second = parse(["--state-dir", str(tmp_path)]).config.keyring
    assert first.kids == second.kids
    assert first.subkey(first.current_kid, "x") == second.subkey(second.current_kid, "x")


def test_mcp_url() -> None:
    """The MCP endpoint is <base>/mcp."""
    config = attrs.evolve(defaults(Path("/x")), base_url="https://m.example/p")
    assert config.mcp_url == "https://m.example/p/mcp"


def test_readme_configuration_table_is_generated() -> None:
    """
    README.rst's configuration table is exactly the one generated from the
    option table (mailmcp._options), so every option and MAILMCP_* variable
    is documented with its current default.  To refresh it:
    ``.venv/bin/python -m mailmcp._options --update-readme``.
    """
    readme = (Path(__file__).resolve().parents[2] / "README.rst").read_text(encoding="utf-8")
    assert readme_table(readme) == options_table_rst(), (
        "README.rst's configuration table is out of date: run "
        "'.venv/bin/python -m mailmcp._options --update-readme'"
    )


def test_state_dir_open_to_others_is_made_private_with_a_warning(tmp_path: Path) -> None:
    """An existing state dir (0755) and keys.json (0644) are tightened to 0700/0600, one warning each."""
    state = tmp_path / "open"
    state.mkdir()
    state.chmod(0o755)
    parse(["--state-dir", str(state)])
    (state / "keys.json").chmod(0o644)
    state.chmod(0o750)
    warnings: list[str] = []
    prepare_state_dir(state, warnings.append)
    assert (state.stat().st_mode & 0o777, (state / "keys.json").stat().st_mode & 0o777) == (0o700, 0o600)
    assert len(warnings) == 2
    assert "state directory" in warnings[0] and "(mode 0750); changed to 0700" in warnings[0]
    assert "key ring" in warnings[1] and "(mode 0644); changed to 0600" in warnings[1]
    assert "rotate" in warnings[1]
    warnings.clear()
    prepare_state_dir(state, warnings.append)
    assert warnings == []


def test_state_dir_that_cannot_be_made_private_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When chmod fails (another user's directory), startup stops with one line saying what to do."""
    state = tmp_path / "theirs"
    state.mkdir()
    state.chmod(0o755)

    def refuse(path: object, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("mailmcp._config.os.chmod", refuse)
    with pytest.raises(usage.UsageError) as raised:
        prepare_state_dir(state)
    text = str(raised.value)
    assert "\n" not in text
    assert "state directory" in text and "mode 0755" in text and f"chmod 700 {state}" in text


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--send-allow-domains", "example.com, bad_domain!", "not a valid domain"),
        ("--send-allow-domains", "exa mple..com", "not a valid domain"),
        ("--trusted-authserv-id", "mx.example.com; spf=pass", "one token"),
        ("--audit-log", "/nonexistent-dir/audit.jsonl", "cannot be written"),
    ],
)
def test_policy_options_refuse_bad_values(tmp_path: Path, option: str, value: str, message: str) -> None:
    """A bad allow-list entry, authserv-id or audit path is one usage error, before anything starts."""
    with pytest.raises(usage.UsageError, match=message):
        parse([option, value], {"MAILMCP_STATE_DIR": str(tmp_path)})


def test_audit_log_file_is_created_private(tmp_path: Path) -> None:
    """--audit-log creates its file 0600: it names accounts and clients."""
    path = tmp_path / "audit.jsonl"
    parse(["--audit-log", str(path)], {"MAILMCP_STATE_DIR": str(tmp_path / "s")})
    assert path.exists() and path.stat().st_mode & 0o777 == 0o600
