"""
``twistd mailmcp-generate`` as a real process: human and ``--json`` output;
the client_id is a sealed token that opens with the daemon's key ring (the
same state dir) and records hosts, ports, security modes, redirect URIs and
the secret's hash, never the secret; ``plain`` is refused for non-loopback
hosts; ``--add-key`` rotation keeps existing client_ids valid, down to a
real daemon accepting them at /oauth/authorize.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from mailmcp.oauth._clients import DEFAULT_REDIRECT_URIS, Client, open_client
from mailmcp.oauth._keyring import KeyRing, load_or_create_keyring, read_keyring_file
from mailmcp.oauth._tokens import InvalidToken, TokenCodec
from tests.harness import Daemon
from tests.integration.generate_cli import generate, generate_json, sealed_kid

SERVERS = ["--imap-host", "imap.example.com", "--smtp-host", "smtp.example.com"]


def open_with_state(state_dir: Path, client_id: str) -> Client:
    """Open a client id with the key ring the daemon would load from C{state_dir}."""
    ring = load_or_create_keyring(state_dir, None, {})
    sealed = None
    if client_id.startswith("mc_"):
        # Filed in the store: read it where the daemon would.
        with sqlite3.connect(state_dir / "mailmcp.sqlite3") as db:
            sealed = db.execute("SELECT sealed FROM clients WHERE client_id = ?", (client_id,)).fetchone()[0]
    return open_client(TokenCodec(ring, Clock()), client_id, sealed)


def test_json_output(tmp_path: Path) -> None:
    """
    --json prints one object with client_id and client_secret; the id opens
    with the state dir's key ring and records servers, modes and redirect URIs.
    """
    document = generate_json(tmp_path, *SERVERS)
    assert set(document) >= {"client_id", "client_secret", "imap", "smtp", "redirect_uris"}
    assert document["token_endpoint_auth_method"] == "client_secret_post"
    assert document["imap"] == {"host": "imap.example.com", "port": 993, "security": "tls"}
    assert document["smtp"] == {"host": "smtp.example.com", "port": 465, "security": "tls"}
    assert document["redirect_uris"] == list(DEFAULT_REDIRECT_URIS)
    keys = tmp_path / "mailmcp-state" / "keys.json"
    assert keys.stat().st_mode & 0o777 == 0o600

    client = open_with_state(tmp_path / "mailmcp-state", document["client_id"])
    assert (client.imap.host, client.imap.port, client.imap.security) == ("imap.example.com", 993, "tls")
    assert (client.smtp.host, client.smtp.port, client.smtp.security) == ("smtp.example.com", 465, "tls")
    assert client.redirect_uris == DEFAULT_REDIRECT_URIS
    assert len(document["client_id"]) < 200
    assert len(client.secret_hash) == 32
    assert hashlib.sha256(document["client_secret"].encode()).hexdigest().startswith(client.secret_hash)
    assert client.check_secret(document["client_secret"])


def test_client_id_holds_no_secret(tmp_path: Path) -> None:
    """The client id is compact and sealed (mc1. + AES-GCM); neither the secret nor the host names are readable in it."""
    document = generate_json(tmp_path, *SERVERS)
    client_id, secret = document["client_id"], document["client_secret"]
    parts = client_id.split(".")
    assert parts[0] == "mc1" and len(parts) == 2 and len(client_id) < 200
    assert secret not in client_id
    decoded = b"".join(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in parts[1:])
    assert secret.encode() not in decoded
    assert b"imap.example.com" not in decoded


def test_human_output(tmp_path: Path) -> None:
    """
    The default output names the servers and says where to paste the id and
    secret in Claude; both open with the daemon's key ring.
    """
    result = generate(tmp_path, *SERVERS, "--imap-security", "starttls", "--smtp-security", "starttls")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "IMAP:   imap.example.com:143 (starttls)" in text
    assert "SMTP:   smtp.example.com:587 (starttls)" in text
    assert "Add custom connector" in text
    assert "Advanced settings" in text
    client_id = re.search(r"OAuth Client ID:\s+(\S+)", text)
    secret = re.search(r"OAuth Client Secret:\s+(\S+)", text)
    assert client_id and secret
    client = open_with_state(tmp_path / "mailmcp-state", client_id.group(1))
    assert client.imap.port == 143 and client.imap.security == "starttls"
    assert client.smtp.port == 587 and client.smtp.security == "starttls"
    assert client.check_secret(secret.group(1))


def test_explicit_ports_and_redirects(tmp_path: Path) -> None:
    """Explicit ports and repeated --redirect-uri replace the defaults."""
    document = generate_json(
        tmp_path, *SERVERS, "--imap-port", "1993", "--smtp-port", "2465",
        "--redirect-uri", "https://app.example/cb", "--redirect-uri", "http://localhost/cb",
    )
    client = open_with_state(tmp_path / "mailmcp-state", document["client_id"])
    assert client.imap.port == 1993 and client.smtp.port == 2465
    assert client.redirect_uris == ("https://app.example/cb", "http://localhost/cb")
    assert client.allows_redirect("http://localhost:5555/cb")
    assert not client.allows_redirect("https://claude.ai/api/mcp/auth_callback")


def test_public_client(tmp_path: Path) -> None:
    """--public: no secret, auth method none, and the id records no secret hash."""
    document = generate_json(tmp_path, *SERVERS, "--public")
    assert document["client_secret"] is None
    assert document["token_endpoint_auth_method"] == "none"
    assert open_with_state(tmp_path / "mailmcp-state", document["client_id"]).is_public


def test_state_dir_option_and_environment(tmp_path: Path) -> None:
    """--state-dir and MAILMCP_STATE_DIR select the key ring, like the daemon's."""
    by_option = generate_json(tmp_path, *SERVERS, "--state-dir", "custom")
    open_with_state(tmp_path / "custom", by_option["client_id"])
    by_env = generate_json(tmp_path, *SERVERS, env={"MAILMCP_STATE_DIR": str(tmp_path / "fromenv")})
    open_with_state(tmp_path / "fromenv", by_env["client_id"])
    with pytest.raises(InvalidToken):
        open_with_state(tmp_path / "custom", by_env["client_id"])


def test_key_file(tmp_path: Path) -> None:
    """--key-file seals with that ring; the state dir gets no keys.json."""
    key_file = tmp_path / "k.json"
    generate_json(tmp_path, "--add-key", "--key-file", str(key_file))
    document = generate_json(tmp_path, *SERVERS, "--key-file", str(key_file))
    ring = read_keyring_file(key_file)
    open_client(TokenCodec(ring, Clock()), document["client_id"])
    assert not (tmp_path / "mailmcp-state" / "keys.json").exists()


@pytest.mark.parametrize("kind", ["imap", "smtp"])
def test_plain_refused_for_remote_hosts(tmp_path: Path, kind: str) -> None:
    """--{imap,smtp}-security plain for a non-loopback host: one stderr line, exit 1, nothing printed."""
    result = generate(tmp_path, *SERVERS, f"--{kind}-security", "plain")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"--{kind}-security plain" in lines[0]
    assert "loopback" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
def test_plain_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    """plain is accepted for loopback hosts (test servers, a local relay)."""
    document = generate_json(tmp_path, "--imap-host", host, "--imap-security", "plain",
                             "--smtp-host", host, "--smtp-security", "plain")
    assert document["imap"] == {"host": host, "port": 143, "security": "plain"}
    assert document["smtp"] == {"host": host, "port": 25, "security": "plain"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--smtp-host", "s.example"], "--imap-host is required"),
        (["--imap-host", "i.example"], "--smtp-host is required"),
        ([*SERVERS, "--imap-security", "ssl"], "--imap-security must be tls, starttls or plain"),
        ([*SERVERS, "--imap-port", "imaps"], "--imap-port must be a number"),
        ([*SERVERS, "--smtp-port", "70000"], "--smtp-port must be between 1 and 65535"),
        ([*SERVERS, "--redirect-uri", "http://evil.example/cb"], "must use https"),
        ([*SERVERS, "--no-such-option"], "--no-such-option"),
        ([*SERVERS, "--state-dir", "a-file/sub"], "cannot create state directory"),
    ],
)
def test_bad_input(tmp_path: Path, args: list[str], expected: str) -> None:
    """Each bad input: one line on stderr, exit 1, nothing on stdout, no traceback."""
    (tmp_path / "a-file").write_text("")
    result = generate(tmp_path, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert lines[0].startswith("mailmcp-generate: ")


def test_corrupt_key_ring(tmp_path: Path) -> None:
    """A corrupt keys.json: one stderr line naming it, exit 1, the file untouched."""
    state = tmp_path / "mailmcp-state"
    state.mkdir(mode=0o700)
    (state / "keys.json").write_text("{broken")
    (state / "keys.json").chmod(0o600)
    result = generate(tmp_path, *SERVERS)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert "corrupt key ring" in result.stderr and "keys.json" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert (state / "keys.json").read_text() == "{broken"


def test_add_key_rotation_keeps_client_ids(tmp_path: Path) -> None:
    """
    --add-key appends a new current key; a client_id issued before still
    opens, one issued after is sealed under the new key.
    """
    before = generate_json(tmp_path, *SERVERS)
    first_kids = read_keyring_file(tmp_path / "mailmcp-state" / "keys.json").kids
    rotated = generate_json(tmp_path, "--add-key")
    assert rotated["kids"][:-1] == first_kids
    assert rotated["current_kid"] == rotated["kids"][-1] != first_kids[-1]
    keys = tmp_path / "mailmcp-state" / "keys.json"
    assert keys.stat().st_mode & 0o777 == 0o600
    after = generate_json(tmp_path, *SERVERS)
    assert open_with_state(tmp_path / "mailmcp-state", before["client_id"]).check_secret(before["client_secret"])
    assert open_with_state(tmp_path / "mailmcp-state", after["client_id"]).check_secret(after["client_secret"])
    assert sealed_kid(after["client_id"], rotated["kids"]) == rotated["current_kid"]


def test_add_key_human_output(tmp_path: Path) -> None:
    """Without --json, --add-key says what it did and that processes must be restarted."""
    result = generate(tmp_path, "--add-key")
    assert result.returncode == 0, result.stderr
    assert "Added key" in result.stdout
    assert "Restart" in result.stdout
    assert isinstance(read_keyring_file(tmp_path / "mailmcp-state" / "keys.json"), KeyRing)


def authorize_status(daemon: Daemon, client_id: str) -> int:
    """The status of GET /oauth/authorize for C{client_id} with a valid PKCE request."""
    query = urllib.parse.urlencode({
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": "http://127.0.0.1:34567/callback",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        "state": "xyz",
    })
    try:
        with urllib.request.urlopen(f"{daemon.base_url}/oauth/authorize?{query}", timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_daemon_accepts_client_ids_across_rotation(tmp_path: Path, daemon_factory: Any) -> None:
    """
    A real daemon on the same state dir shows its login page for client ids
    issued before and after a key rotation, and refuses one from another
    key ring.
    """
    state = tmp_path / "state"
    before = generate_json(tmp_path, *SERVERS, "--state-dir", str(state))
    generate_json(tmp_path, "--add-key", "--state-dir", str(state))
    after = generate_json(tmp_path, *SERVERS, "--state-dir", str(state))
    foreign = generate_json(tmp_path, *SERVERS, "--state-dir", str(tmp_path / "other"))
    daemon = daemon_factory(None, state_dir=state)
    assert authorize_status(daemon, before["client_id"]) == 200
    assert authorize_status(daemon, after["client_id"]) == 200
    assert authorize_status(daemon, foreign["client_id"]) == 400


def test_staged_rotation_add_inactive_then_activate(tmp_path: Path) -> None:
    """
    --add-key --inactive adds a key that does not seal (new client ids keep
    the old kid); --activate-key KID makes it the sealing key.  Both say what
    to do next.
    """
    first = generate_json(tmp_path, *SERVERS)
    old_kid = sealed_kid(first["client_id"], read_keyring_file(tmp_path / "mailmcp-state" / "keys.json").kids)
    human = generate(tmp_path, "--add-key", "--inactive")
    assert human.returncode == 0 and human.stderr == "", human.stderr
    ring = read_keyring_file(tmp_path / "mailmcp-state" / "keys.json")
    new_kid = ring.inactive_kids[0]
    assert ring.current_kid == old_kid and f"--activate-key {new_kid}" in human.stdout
    during = generate_json(tmp_path, *SERVERS)
    assert sealed_kid(during["client_id"], [old_kid, new_kid]) == old_kid
    activated = generate_json(tmp_path, "--activate-key", new_kid)
    assert activated == {"current_kid": new_kid, "kids": [old_kid, new_kid], "inactive_kids": []}
    after = generate_json(tmp_path, *SERVERS)
    assert sealed_kid(after["client_id"], [old_kid, new_kid]) == new_kid
    for client in (first, during, after):
        assert open_with_state(tmp_path / "mailmcp-state", client["client_id"]).check_secret(client["client_secret"])


@pytest.mark.parametrize(("args", "expected"), [
    (["--inactive"], "--inactive only goes with --add-key"),
    (["--add-key", "--activate-key", "x"], "--add-key and --activate-key are separate steps"),
    (["--activate-key", "no-such-kid"], "no key 'no-such-kid'"),
])
def test_rotation_usage_errors(tmp_path: Path, args: list[str], expected: str) -> None:
    """Rotation misuse: one stderr line, exit 1, the key ring untouched."""
    generate_json(tmp_path, *SERVERS)
    keys = tmp_path / "mailmcp-state" / "keys.json"
    before = keys.read_text()
    result = generate(tmp_path, *args)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert keys.read_text() == before


def test_scope_caps_the_client(tmp_path: Path) -> None:
    """SC-05: --scope seals the cap in the client id (commas or spaces, ``mail`` = all five); the text output names it."""
    document = generate_json(tmp_path, *SERVERS, "--scope", "mail.read, mail.draft")
    assert document["scope"] == "mail.read mail.draft"
    client = open_with_state(tmp_path / "mailmcp-state", document["client_id"])
    assert client.scopes == {"mail.read", "mail.draft"}
    everything = generate_json(tmp_path, *SERVERS)
    assert everything["scope"] == "mail.read mail.organize mail.draft mail.send mail.delete"
    human = generate(tmp_path, *SERVERS, "--scope", "mail.read")
    assert "Scopes: mail.read\n" in human.stdout


@pytest.mark.parametrize("value", ["mail.everything", " , "])
def test_unknown_scope_is_one_usage_line(tmp_path: Path, value: str) -> None:
    """An unknown or empty --scope is refused in one stderr line naming the known scopes; nothing is printed."""
    result = generate(tmp_path, *SERVERS, "--scope", value)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "--scope:" in result.stderr and "mail.read" in result.stderr
    assert "Traceback" not in result.stderr
