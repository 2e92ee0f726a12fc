"""
The provider sign-in options of ``twistd mailmcp`` (issue 18): ``--imap-auth``
and ``--oauth-*`` become one `ProviderProfile` of the default mail profile;
incomplete or contradictory combinations are one-line errors; the client
secret comes from a file, never from the command line, and is never shown.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from mailmcp.generate_tap import Options as GenerateOptions
from mailmcp.generate_tap import generate
from mailmcp.oauth._clients import open_client, provision_short_client
from mailmcp.oauth._keyring import load_or_create_keyring
from mailmcp.oauth._tokens import TokenCodec
from mailmcp.provider._options import parse_provider, profile_claims, read_client_secret
from mailmcp.tap import Options

SERVERS = ["--imap-host", "imap.example", "--smtp-host", "smtp.example"]
SECRET = "SECRET-CANARY-4e1d"


def secret_file(tmp_path: Path, mode: int = 0o600, text: str = SECRET + "\n") -> Path:
    path = tmp_path / "client-secret"
    path.write_text(text)
    path.chmod(mode)
    return path


def parse(tmp_path: Path, argv: list[str], environ: dict[str, str] | None = None) -> Options:
    options = Options(environ={} if environ is None else environ)
    options.parseOptions(["--state-dir", str(tmp_path / "state"), *argv])
    return options


def test_password_is_the_default(tmp_path: Path) -> None:
    """Without --imap-auth the default profile signs in with passwords: no provider."""
    assert parse(tmp_path, SERVERS).config.provider is None


def test_microsoft_builtin_profile(tmp_path: Path) -> None:
    """--oauth-provider microsoft carries Entra's endpoints and IMAP/SMTP/offline scopes."""
    argv = [
        *SERVERS,
        "--imap-auth",
        "xoauth2",
        "--oauth-provider",
        "microsoft",
        "--oauth-client-id",
        "app-1",
        "--oauth-client-secret-file",
        str(secret_file(tmp_path)),
    ]
    profile = parse(tmp_path, argv).config.provider
    assert profile is not None
    assert (profile.name, profile.label, profile.imap_auth) == ("microsoft", "Microsoft", "xoauth2")
    assert profile.authorize_url == "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
    assert profile.token_url == "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    assert "https://outlook.office.com/IMAP.AccessAsUser.All" in profile.scope.split()
    assert "https://outlook.office.com/SMTP.Send" in profile.scope.split()
    assert "offline_access" in profile.scope.split()
    assert profile.client_id == "app-1" and profile.client_secret == SECRET
    assert SECRET not in repr(profile) and SECRET not in repr(parse(tmp_path, argv).config)


def test_google_builtin_profile(tmp_path: Path) -> None:
    """--oauth-provider google asks for https://mail.google.com/ and offline access."""
    argv = [
        *SERVERS,
        "--imap-auth",
        "oauthbearer",
        "--oauth-provider",
        "google",
        "--oauth-client-id",
        "g-1",
        "--oauth-client-secret-file",
        str(secret_file(tmp_path)),
    ]
    profile = parse(tmp_path, argv).config.provider
    assert profile is not None
    assert (profile.name, profile.label, profile.imap_auth) == ("google", "Google", "oauthbearer")
    assert "https://mail.google.com/" in profile.scope.split()
    assert profile.extra_authorize_params.get("access_type") == "offline"


def test_custom_profile_on_loopback(tmp_path: Path) -> None:
    """A custom provider takes its URLs (http allowed on loopback only, for tests) and scope."""
    argv = [
        *SERVERS,
        "--imap-auth",
        "xoauth2",
        "--oauth-provider",
        "custom",
        "--oauth-client-id",
        "c",
        "--oauth-client-secret-file",
        str(secret_file(tmp_path)),
        "--oauth-authorize-url",
        "http://127.0.0.1:9/authorize",
        "--oauth-token-url",
        "http://127.0.0.1:9/token",
        "--oauth-scope",
        "openid email mail",
    ]
    profile = parse(tmp_path, argv).config.provider
    assert profile is not None
    assert (profile.name, profile.label) == ("custom", "127.0.0.1")
    assert profile.userinfo_url is None and profile.scope == "openid email mail"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--imap-auth", "kerberos"], "--imap-auth must be one of password, xoauth2, oauthbearer"),
        (["--imap-auth", "xoauth2"], "--imap-auth xoauth2 needs --oauth-provider"),
        (
            ["--oauth-provider", "google"],
            "--oauth-provider needs --imap-auth xoauth2 or oauthbearer",
        ),
        (
            ["--imap-auth", "xoauth2", "--oauth-provider", "yahoo"],
            "--oauth-provider must be one of",
        ),
        (["--imap-auth", "xoauth2", "--oauth-provider", "google"], "needs --oauth-client-id"),
        (
            ["--imap-auth", "xoauth2", "--oauth-provider", "google", "--oauth-client-id", "x"],
            "needs --oauth-client-secret-file",
        ),
        (
            [
                "--imap-auth",
                "xoauth2",
                "--oauth-provider",
                "google",
                "--oauth-client-id",
                "x",
                "--oauth-client-secret-file",
                "SECRET",
                "--oauth-token-url",
                "https://t.example/",
            ],
            "--oauth-token-url only goes with --oauth-provider custom",
        ),
        (
            [
                "--imap-auth",
                "xoauth2",
                "--oauth-provider",
                "custom",
                "--oauth-client-id",
                "x",
                "--oauth-client-secret-file",
                "SECRET",
            ],
            "--oauth-provider custom needs --oauth-authorize-url, --oauth-token-url, --oauth-scope",
        ),
        (
            [
                "--imap-auth",
                "xoauth2",
                "--oauth-provider",
                "custom",
                "--oauth-client-id",
                "x",
                "--oauth-client-secret-file",
                "SECRET",
                "--oauth-authorize-url",
                "http://id.example/a",
                "--oauth-token-url",
                "https://id.example/t",
                "--oauth-scope",
                "s",
            ],
            "--oauth-authorize-url must use https",
        ),
        (
            [
                "--imap-auth",
                "xoauth2",
                "--oauth-provider",
                "custom",
                "--oauth-client-id",
                "x",
                "--oauth-client-secret-file",
                "SECRET",
                "--oauth-authorize-url",
                "https://id.example/a",
                "--oauth-token-url",
                "https://id.example/t",
                "--oauth-scope",
                "s",
                "--oauth-userinfo-url",
                "ftp://id.example/u",
            ],
            "--oauth-userinfo-url must use https",
        ),
    ],
)
def test_incomplete_or_contradictory_combinations(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    """Each bad combination is a UsageError naming the option; the secret never appears in it."""
    path = str(secret_file(tmp_path))
    argv = [path if a == "SECRET" else a for a in argv]
    with pytest.raises(usage.UsageError) as info:
        parse(tmp_path, [*SERVERS, *argv])
    assert message in str(info.value)
    assert "\n" not in str(info.value) and SECRET not in str(info.value)


def test_provider_needs_the_default_mail_profile(tmp_path: Path) -> None:
    """Provider sign-in names the default profile's login method: without its servers, an error."""
    argv = [
        "--imap-auth",
        "xoauth2",
        "--oauth-provider",
        "google",
        "--oauth-client-id",
        "x",
        "--oauth-client-secret-file",
        str(secret_file(tmp_path)),
    ]
    with pytest.raises(usage.UsageError, match="needs --imap-host and --smtp-host"):
        parse(tmp_path, argv)


def test_options_from_the_environment(tmp_path: Path) -> None:
    """Every provider option has its MAILMCP_<NAME> variable."""
    environ = {
        "MAILMCP_IMAP_AUTH": "xoauth2",
        "MAILMCP_OAUTH_PROVIDER": "microsoft",
        "MAILMCP_OAUTH_CLIENT_ID": "env-app",
        "MAILMCP_OAUTH_CLIENT_SECRET_FILE": str(secret_file(tmp_path)),
    }
    profile = parse(tmp_path, SERVERS, environ).config.provider
    assert profile is not None and profile.client_id == "env-app" and profile.name == "microsoft"


def test_secret_file_open_to_others_warns_without_showing_it(tmp_path: Path) -> None:
    """A group/other-readable secret file is used, with one warning saying chmod 600."""
    warnings: list[str] = []
    path = secret_file(tmp_path, 0o644)
    assert read_client_secret(path, warnings.append) == SECRET
    assert len(warnings) == 1 and "mode 0644" in warnings[0] and "chmod 600" in warnings[0]
    assert SECRET not in warnings[0]
    warnings.clear()
    assert read_client_secret(secret_file(tmp_path, 0o600), warnings.append) == SECRET
    assert warnings == []


@pytest.mark.parametrize(
    ("text", "message"), [("", "on one line"), ("a\nb\n", "on one line"), ("x" * 5000, "too large")]
)
def test_bad_secret_files(tmp_path: Path, text: str, message: str) -> None:
    """Empty, multi-line or oversized secret files are refused, their content not shown."""
    with pytest.raises(usage.UsageError, match=message):
        read_client_secret(secret_file(tmp_path, text=text), lambda _: None)
    with pytest.raises(usage.UsageError, match="cannot be read"):
        read_client_secret(tmp_path / "missing", lambda _: None)


def test_password_with_no_provider_options_is_none() -> None:
    """The parser alone: password sign-in and nothing else gives no profile."""
    assert parse_provider({"imap-auth": "password"}, lambda _: None) is None


def test_startup_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    """``twistd mailmcp --imap-auth xoauth2`` without a provider: one stderr line, exit 1."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twisted",
            "mailmcp",
            "--state-dir",
            str(tmp_path / "s"),
            *SERVERS,
            "--imap-auth",
            "xoauth2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "--imap-auth xoauth2 needs --oauth-provider" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def generate_options(tmp_path: Path, *extra: str) -> GenerateOptions:
    options = GenerateOptions(environ={})
    options.parseOptions(["--state-dir", str(tmp_path / "gen"), *SERVERS, *extra])
    return options


def test_generate_provisions_a_client_with_its_own_provider(tmp_path: Path) -> None:
    """
    ``mailmcp-generate`` takes the same options; the client's description
    carries the profile sealed (stored form: it never fits a compact id) and
    the login page of that client offers its provider.
    """
    options = generate_options(
        tmp_path, "--imap-auth", "xoauth2", "--oauth-provider", "google",
        "--oauth-client-id", "gen-app", "--oauth-client-secret-file", str(secret_file(tmp_path)))
    out = io.StringIO()
    generate(options, out, environ={})
    document = json.loads(out.getvalue()) if out.getvalue().startswith("{") else None
    assert document is None and "Sign-in: Continue with Google (xoauth2)" in out.getvalue()
    assert SECRET not in out.getvalue()
    ring = load_or_create_keyring(options["state-dir"], None, {})
    codec = TokenCodec(ring, Clock())
    compact, sealed, _ = provision_short_client(
        codec, options["imap"], options["smtp"], options["redirect-uri"],
        provider=profile_claims(options["provider"]))
    assert compact is None
    client = open_client(codec, "mc_" + "A" * 22, sealed)
    assert client.provider == options["provider"] and client.provider.client_secret == SECRET
    assert SECRET not in repr(client) and SECRET not in sealed


def test_generate_json_names_the_provider(tmp_path: Path) -> None:
    """--json says imap_auth and oauth_provider; the client id is a stored (short) one."""
    options = generate_options(
        tmp_path, "--json", "--imap-auth", "oauthbearer", "--oauth-provider", "microsoft",
        "--oauth-client-id", "gen-app", "--oauth-client-secret-file", str(secret_file(tmp_path)))
    out = io.StringIO()
    generate(options, out, environ={})
    document = json.loads(out.getvalue())
    assert (document["imap_auth"], document["oauth_provider"]) == ("oauthbearer", "microsoft")
    assert document["client_id"].startswith("mc_") and SECRET not in out.getvalue()


def test_generate_refuses_contradictions_too(tmp_path: Path) -> None:
    """The same one-line errors as the daemon's."""
    with pytest.raises(usage.UsageError, match="--oauth-provider needs --imap-auth xoauth2"):
        generate_options(tmp_path, "--oauth-provider", "google")
    assert generate_options(tmp_path)["provider"] is None
