"""
The daemon as operators run it: real ``twistd -n mailmcp`` processes.

- With no options and no MAILMCP_* environment it listens on
  127.0.0.1:8080, creates ./mailmcp-state with a 0600 key ring and answers
  ``GET /health``.
- Every option of the contract is accepted on the command line and as its
  MAILMCP_* variable; ``--listen`` repeats (tcp and unix at once).
- SIGTERM stops accepting, lets an in-flight request (its body still
  arriving) finish, and exits 0; a request that never finishes holds the
  exit only for --shutdown-timeout.
- Bad input (unknown option, unusable state dir, corrupt key ring, port in
  use, bad endpoint, bad number) gives one line on stderr, a non-zero exit
  and never a traceback.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailmcp._options import DAEMON, env_name, options_of
from mailmcp.oauth._keyring import KeyRing, new_master_key, read_keyring_file, write_keyring
from tests.harness import TWISTD, free_port
from tests.integration.daemon_proc import Proc, assert_one_line_error, clean_env

DEFAULT_PORT = 8080
LOCK_PATH = Path("/tmp/mailmcp-tests-port-8080.lock")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts is killed and its files closed afterwards."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.close()


def start(procs: list[Proc], args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> Proc:
    proc = Proc(args, cwd, clean_env() if env is None else env)
    procs.append(proc)
    return proc


def port_is_free(port: int) -> bool:
    with closing(socket.socket()) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextmanager
def default_port_lock(timeout: float = 300.0) -> Iterator[None]:
    """
    Serialise the tests that need the fixed default port 8080 across
    concurrent test runs on this machine, then make sure it is free: a busy
    port is a clear failure, not a skip.
    """
    with open(LOCK_PATH, "a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            for _ in range(50):  # a previous daemon may still be closing its socket
                if port_is_free(DEFAULT_PORT):
                    break
                time.sleep(0.2)
            else:
                pytest.fail(
                    f"port {DEFAULT_PORT} on 127.0.0.1 is taken by another program; the "
                    "embedded-defaults test needs it (stop that program and rerun)"
                )
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _self_signed(common_name: str, *extensions: x509.ExtensionType) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh P-256 key and a 30-day self-signed CA certificate for it with C{extensions} (non-critical)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return key, builder.sign(key, hashes.SHA256())


def write_ca(path: Path) -> None:
    """A throw-away self-signed CA certificate in PEM, as --mail-ca-file expects."""
    _, cert = _self_signed("mailmcp test CA")
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def unix_get(path: Path, target: str = "/health") -> bytes:
    """GET over a unix socket, HTTP/1.0 so the server closes when done."""
    with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(f"GET {target} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def read_response(sock: socket.socket) -> bytes:
    """Read until the server closes or a complete Content-Length/chunked body is in."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            if b"transfer-encoding: chunked" in head.lower() and body.endswith(b"0\r\n\r\n"):
                break
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:") and len(body) >= int(line.split(b":")[1]):
                    return data
    return data


# -- embedded defaults ---------------------------------------------------------


def test_no_options_no_environment(tmp_path: Path, procs: list[Proc]) -> None:
    """
    ``twistd -n mailmcp`` alone: 127.0.0.1:8080, ./mailmcp-state (0700) with a
    0600 key ring, /health 200 JSON; SIGTERM exits 0 without a traceback.
    """
    with default_port_lock():
        proc = start(procs, ["-n", "mailmcp"], tmp_path)
        health = proc.wait_for_health(f"http://127.0.0.1:{DEFAULT_PORT}")
        assert health["status"] == "ok"
        assert health["base_url"] == "http://127.0.0.1:8080"
        state = tmp_path / "mailmcp-state"
        assert state.is_dir()
        assert state.stat().st_mode & 0o777 == 0o700
        keys = state / "keys.json"
        assert keys.stat().st_mode & 0o777 == 0o600
        assert len(read_keyring_file(keys).kids) == 1
        # The embedded stores: SQLite grants and local attachment files.
        assert (state / "mailmcp.sqlite3").is_file()
        assert (state / "attachments").is_dir()
        # Loopback only: the listening socket is bound to 127.0.0.1, not 0.0.0.0.
        listening = subprocess.run(["ss", "-Hltn", f"sport = :{DEFAULT_PORT}"],
                                   capture_output=True, text=True).stdout
        assert "127.0.0.1:8080" in listening
        assert "0.0.0.0:8080" not in listening and "*:8080" not in listening
        proc.terminate()
        proc.assert_clean_exit()
    assert not (tmp_path / "twistd.pid").exists()


def test_second_start_keeps_the_key_ring(tmp_path: Path, procs: list[Proc]) -> None:
    """Restarting on the same state dir reuses its key ring (issued tokens stay valid)."""
    port = free_port()
    args = ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{port}:interface=127.0.0.1"]
    first = start(procs, args, tmp_path)
    first.wait_for_health(f"http://127.0.0.1:{port}")
    first.terminate()
    first.assert_clean_exit()
    kids = read_keyring_file(tmp_path / "mailmcp-state" / "keys.json").kids
    second = start(procs, args, tmp_path)
    second.wait_for_health(f"http://127.0.0.1:{port}")
    second.terminate()
    second.assert_clean_exit()
    assert read_keyring_file(tmp_path / "mailmcp-state" / "keys.json").kids == kids


# -- every option, on the command line and from the environment ---------------


IN_HOUSE = "https://intra.example/clients/agent.json"


def write_metadata_dir(tmp_path: Path) -> Path:
    """A --client-metadata-dir holding one in-house client's document."""
    directory = tmp_path / "client-metadata"
    directory.mkdir(exist_ok=True)
    (directory / "agent.json").write_text(json.dumps({
        "client_id": IN_HOUSE, "client_name": "In-house agent",
        "redirect_uris": ["https://intra.example/cb"], "token_endpoint_auth_method": "none"}))
    return directory


def option_values(tmp_path: Path, port: int) -> dict[str, str]:
    """A valid value for every single-valued option of the daemon."""
    ca = tmp_path / "ca.pem"
    write_ca(ca)
    key_file = tmp_path / "mounted-keys.json"
    write_keyring(key_file, KeyRing([new_master_key()]))
    secret = tmp_path / "oauth-client-secret"
    secret.write_text("daemon-test-secret\n")
    secret.chmod(0o600)
    values = {
        "base-url": "https://mail-mcp.example.com",
        "state-dir": str(tmp_path / "custom-state"),
        "store": f"sqlite:{tmp_path / 'custom-store.sqlite3'}",
        "attachments": "local",
        "mail-ca-file": str(ca),
        "store-ca-file": str(ca),
        "key-file": str(key_file),
        "max-request-body": "2000",
        "allowed-origins": "https://a.example https://b.example",
        "log-level": "debug",
        "log-format": "json",
        "max-scope": "mail.read, mail.draft",
        "trusted-proxies": "127.0.0.1/32, 10.0.0.0/8",
        "metrics-listen": f"tcp:{free_port()}:interface=127.0.0.1",
        "imap-host": "imap.example.com",
        "imap-port": "1993",
        "imap-security": "tls",
        "smtp-host": "smtp.example.com",
        "smtp-port": "2465",
        "smtp-security": "tls",
        "client-metadata-dir": str(write_metadata_dir(tmp_path)),
        "client-metadata-allow": "https://intra.example/clients/",
        "user-servers-allow": "10.1.0.0/16 127.0.0.1:1993",
        "send-allow-domains": "example.com .example.com",
        "trusted-authserv-id": "mx.example.com",
        "audit-log": str(tmp_path / "audit.jsonl"),
        # Provider sign-in for the default profile (issue 18).
        "imap-auth": "xoauth2",
        "oauth-provider": "custom",
        "oauth-client-id": "mailmcp-app",
        "oauth-client-secret-file": str(secret),
        "oauth-authorize-url": "https://id.example/authorize",
        "oauth-token-url": "https://id.example/token",
        "oauth-scope": "openid email offline_access mail",
        "oauth-userinfo-url": "https://id.example/userinfo",
    }
    for option in options_of(DAEMON):
        if option.parse is not None:
            values.setdefault(option.name, "7")
    unknown = {o.name for o in options_of(DAEMON) if not o.flag} - {"listen"} - set(values)
    assert not unknown, f"give the new option(s) {unknown} a value in this test"
    return values


def check_configured(proc: Proc, port: int, tmp_path: Path, values: dict[str, str]) -> None:
    """
    What can be seen from outside: base URL, key file used, state dir, body
    cap, /metrics on the metrics listener only.
    """
    health = proc.wait_for_health(f"http://127.0.0.1:{port}")
    assert health["base_url"] == "https://mail-mcp.example.com"
    metrics_port = values["metrics-listen"].split(":")[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        assert b"mailmcp_reactor_lag_seconds_bucket" in response.read()
    with pytest.raises(urllib.error.HTTPError) as hidden:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert hidden.value.code == 404
    assert (tmp_path / "custom-state").is_dir()
    assert not (tmp_path / "custom-state" / "keys.json").exists()  # --key-file was used
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o777 == 0o600  # --audit-log opened
    request = urllib.request.Request(f"http://127.0.0.1:{port}/health", data=b"x" * 3000)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 413
    # The default mail profile turns CIMD and registration on; the pinned
    # document from --client-metadata-dir opens the login page on the profile.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server",
                                timeout=10) as response:
        metadata = json.loads(response.read())
    assert metadata["client_id_metadata_document_supported"] is True
    assert metadata["registration_endpoint"] == "https://mail-mcp.example.com/oauth/register"
    query = urllib.parse.urlencode({
        "client_id": IN_HOUSE, "redirect_uri": "https://intra.example/cb", "response_type": "code",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256"})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/oauth/authorize?{query}", timeout=10) as response:
        page = response.read().decode()
    # The default profile signs in at its provider (--imap-auth xoauth2):
    # "Continue with ...", and neither password nor server fields (which
    # --allow-user-servers would otherwise ask for).
    assert "In-house agent" in page and "Continue with id.example" in page
    assert 'type="password"' not in page and 'name="imap_host"' not in page
    assert "daemon-test-secret" not in page
    # --allowed-origins: a browser client there gets its CORS preflight answered.
    preflight = urllib.request.Request(f"http://127.0.0.1:{port}/mcp", method="OPTIONS", headers={
        "origin": "https://b.example", "access-control-request-method": "POST"})
    with urllib.request.urlopen(preflight, timeout=10) as response:
        assert response.status == 204
        assert response.headers["access-control-allow-origin"] == "https://b.example"
    proc.terminate()
    proc.assert_clean_exit()
    # --log-format json: twistd's stdout log is one JSON object per line.
    lines = proc.stdout.splitlines()
    assert lines and all(json.loads(line)["level"] for line in lines), proc.stdout[-2000:]


def test_every_option_on_the_command_line(tmp_path: Path, procs: list[Proc]) -> None:
    """All options of the contract are accepted on the command line and take effect."""
    port = free_port()
    argv = ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{port}:interface=127.0.0.1"]
    values = option_values(tmp_path, port)
    for name, value in values.items():
        argv += [f"--{name}", value]
    argv += [f"--{o.name}" for o in options_of(DAEMON) if o.flag]
    check_configured(start(procs, argv, tmp_path), port, tmp_path, values)


def test_every_option_from_the_environment(tmp_path: Path, procs: list[Proc]) -> None:
    """Each option's MAILMCP_* variable is honoured when the option is not given."""
    port = free_port()
    env = clean_env(MAILMCP_LISTEN=f"tcp:{port}:interface=127.0.0.1")
    values = option_values(tmp_path, port)
    for name, value in values.items():
        env[env_name(name)] = value
    for option in options_of(DAEMON):
        if option.flag:
            env[option.env] = "1"
    check_configured(start(procs, ["-n", "--pidfile=", "mailmcp"], tmp_path, env), port, tmp_path,
                     values)


def test_keys_from_environment(tmp_path: Path, procs: list[Proc]) -> None:
    """MAILMCP_KEYS (the key ring JSON) is used and nothing is written to the state dir."""
    port = free_port()
    env = clean_env(MAILMCP_KEYS=KeyRing([new_master_key()]).to_json())
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{port}:interface=127.0.0.1"],
                 tmp_path, env)
    proc.wait_for_health(f"http://127.0.0.1:{port}")
    assert not (tmp_path / "mailmcp-state" / "keys.json").exists()
    proc.terminate()
    proc.assert_clean_exit()


def test_command_line_beats_environment(tmp_path: Path, procs: list[Proc]) -> None:
    """--base-url on the command line wins over MAILMCP_BASE_URL."""
    port = free_port()
    env = clean_env(MAILMCP_BASE_URL="https://env.example")
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{port}:interface=127.0.0.1",
                         "--base-url", "https://cli.example"], tmp_path, env)
    assert proc.wait_for_health(f"http://127.0.0.1:{port}")["base_url"] == "https://cli.example"
    proc.terminate()
    proc.assert_clean_exit()


def test_listen_tcp_and_unix_together(tmp_path: Path, procs: list[Proc]) -> None:
    """Repeated --listen serves the same site on a tcp port and a unix socket."""
    port = free_port()
    sock = tmp_path / "mailmcp.sock"
    proc = start(procs, ["-n", "--pidfile=", "mailmcp",
                         "--listen", f"tcp:{port}:interface=127.0.0.1",
                         "--listen", f"unix:{sock}"], tmp_path)
    proc.wait_for_health(f"http://127.0.0.1:{port}")
    response = unix_get(sock)
    assert response.startswith(b"HTTP/1.0 200") or response.startswith(b"HTTP/1.1 200")
    assert b'"status":"ok"' in response
    proc.terminate()
    proc.assert_clean_exit()


def write_self_signed(cert_path: Path, key_path: Path) -> None:
    """A self-signed server certificate for 127.0.0.1 and its key, in PEM."""
    key, cert = _self_signed(
        "127.0.0.1", x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def test_listen_ssl(tmp_path: Path, procs: list[Proc]) -> None:
    """An ssl: endpoint serves /health over verified TLS with the given certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key)
    port = free_port()
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--base-url", f"https://127.0.0.1:{port}",
                         "--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"],
                 tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 30
    while True:
        assert proc.popen.poll() is None, proc.stdout + proc.stderr
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=2,
                                        context=context) as response:
                assert json.loads(response.read())["base_url"] == f"https://127.0.0.1:{port}"
                break
        except OSError:
            assert time.monotonic() < deadline, "no answer over TLS"
            time.sleep(0.1)
    proc.terminate()
    proc.assert_clean_exit()


def test_systemd_socket_activation(tmp_path: Path, procs: list[Proc]) -> None:
    """
    ``--listen systemd:domain=INET:index=0`` (contrib/systemd/mailmcp-socket.service)
    serves on a listening socket passed in as fd 3 with LISTEN_FDS/LISTEN_PID,
    the way systemd does it.
    """
    with closing(socket.socket()) as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        # Put the socket at fd 3 and set LISTEN_PID to the pid that twistd
        # will have (exec keeps it), as systemd does.
        wrapper = (
            "import os, sys\n"
            "fd = int(os.environ.pop('TEST_LISTEN_FD'))\n"
            "os.dup2(fd, 3)\n"
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1',\n"
            "                  LISTEN_FDNAMES='mailmcp.socket')\n"
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
        )
        env = clean_env(TEST_LISTEN_FD=str(listening.fileno()))
        proc = Proc(
            ["-n", "--pidfile=", "mailmcp", "--listen", "systemd:domain=INET:index=0",
             "--base-url", f"http://127.0.0.1:{port}"],
            tmp_path, env, prefix=[sys.executable, "-c", wrapper, *TWISTD[1:]],
            pass_fds=[listening.fileno()],
        )
        procs.append(proc)
    # Our copy is closed; only the daemon holds the listening socket now.
    assert proc.wait_for_health(f"http://127.0.0.1:{port}")["base_url"] == f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.assert_clean_exit()


# -- graceful shutdown ---------------------------------------------------------


def test_sigterm_lets_a_slow_request_finish(tmp_path: Path, procs: list[Proc]) -> None:
    """
    SIGTERM while a request's body is still arriving: new connections are
    refused at once, the request completes with its response, and the
    process exits 0.
    """
    port = free_port()
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{port}:interface=127.0.0.1",
                         "--shutdown-timeout", "20"], tmp_path)
    proc.wait_for_health(f"http://127.0.0.1:{port}")
    with closing(socket.create_connection(("127.0.0.1", port), timeout=10)) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        time.sleep(0.5)  # the headers are in: the request is in flight
        proc.terminate()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the listener closes first...
            with closing(socket.socket()) as probe:
                if probe.connect_ex(("127.0.0.1", port)) != 0:
                    break
            time.sleep(0.1)
        else:
            raise AssertionError("still accepting connections after SIGTERM")
        time.sleep(1.0)
        assert proc.popen.poll() is None, "exited before the in-flight request finished"
        slow.sendall(b"defghij")  # ...while the in-flight request goes on
        response = read_response(slow)
    assert response.startswith(b"HTTP/1.1 200 "), response
    assert b'"status":"ok"' in response
    proc.assert_clean_exit()


def test_sigterm_wait_is_bounded(tmp_path: Path, procs: list[Proc]) -> None:
    """A request that never completes holds the exit only for --shutdown-timeout, then exit 0."""
    port = free_port()
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{port}:interface=127.0.0.1",
                         "--shutdown-timeout", "1.5"], tmp_path)
    proc.wait_for_health(f"http://127.0.0.1:{port}")
    with closing(socket.create_connection(("127.0.0.1", port), timeout=10)) as stuck:
        stuck.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        time.sleep(0.5)
        began = time.monotonic()
        proc.terminate()
        proc.assert_clean_exit()
        took = time.monotonic() - began
    assert 1.0 <= took < 10, took
    assert "did not finish in time" in proc.stdout


def test_sigterm_when_idle_is_quick(tmp_path: Path, procs: list[Proc]) -> None:
    """With nothing in flight, SIGTERM exits 0 promptly."""
    port = free_port()
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{port}:interface=127.0.0.1",
                         "--shutdown-timeout", "30"], tmp_path)
    proc.wait_for_health(f"http://127.0.0.1:{port}")
    began = time.monotonic()
    proc.terminate()
    proc.assert_clean_exit()
    assert time.monotonic() - began < 5


# -- bad input -----------------------------------------------------------------


def test_unknown_option(tmp_path: Path, procs: list[Proc]) -> None:
    """An unknown option: one stderr line naming it, exit 1, no usage dump."""
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--no-such-option"], tmp_path)
    line = assert_one_line_error(proc, "--no-such-option", "not recognized")
    assert line.startswith("mailmcp: ")
    assert proc.wait() == 1
    assert proc.stdout == ""


def test_state_dir_under_a_regular_file(tmp_path: Path, procs: list[Proc]) -> None:
    """
    An unusable state dir (a regular file in its path: permissions do not
    stop root, this does) is one clear line.
    """
    (tmp_path / "a-file").write_text("")
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--state-dir", "a-file/state"], tmp_path)
    assert_one_line_error(proc, "cannot create state directory", "a-file/state")


def test_state_dir_from_env_under_a_regular_file(tmp_path: Path, procs: list[Proc]) -> None:
    """The same through MAILMCP_STATE_DIR."""
    (tmp_path / "a-file").write_text("")
    env = clean_env(MAILMCP_STATE_DIR=str(tmp_path / "a-file" / "state"))
    proc = start(procs, ["-n", "--pidfile=", "mailmcp"], tmp_path, env)
    assert_one_line_error(proc, "cannot create state directory")


def test_corrupt_key_file(tmp_path: Path, procs: list[Proc]) -> None:
    """A corrupt --key-file names the file and not its content."""
    bad = tmp_path / "bad-keys.json"
    bad.write_text('{"version": 1, "keys": [{"kid": "x", "secret": "TOPSECRETVALUE", "created": 1}]}')
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--key-file", str(bad)], tmp_path)
    line = assert_one_line_error(proc, "corrupt key ring", "bad-keys.json")
    assert "TOPSECRETVALUE" not in proc.stdout + proc.stderr
    assert line


def test_corrupt_keys_json_in_state_dir(tmp_path: Path, procs: list[Proc]) -> None:
    """A truncated keys.json in the state dir is refused, never silently replaced."""
    state = tmp_path / "mailmcp-state"
    state.mkdir(mode=0o700)
    (state / "keys.json").write_text('{"version": 1, "keys": [')
    (state / "keys.json").chmod(0o600)
    proc = start(procs, ["-n", "--pidfile=", "mailmcp"], tmp_path)
    assert_one_line_error(proc, "corrupt key ring", "keys.json")
    assert (state / "keys.json").read_text() == '{"version": 1, "keys": ['


def test_missing_key_file(tmp_path: Path, procs: list[Proc]) -> None:
    """A --key-file that does not exist is an error (it is never generated)."""
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--key-file", "absent.json"], tmp_path)
    assert_one_line_error(proc, "cannot read key ring", "absent.json")


def test_port_in_use(tmp_path: Path, procs: list[Proc]) -> None:
    """A port already taken: one line on stderr saying so, exit 1."""
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{port}:interface=127.0.0.1"],
                     tmp_path)
        assert_one_line_error(proc, "cannot listen on", str(port), "in use")
        assert proc.wait() == 1


def test_second_listen_in_use(tmp_path: Path, procs: list[Proc]) -> None:
    """If any of several --listen endpoints fails, the daemon does not run half-listening."""
    good = free_port()
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(procs, ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{good}:interface=127.0.0.1",
                             "--listen", f"tcp:{port}:interface=127.0.0.1"], tmp_path)
        assert_one_line_error(proc, "cannot listen on", str(port))


def test_daemonized_port_in_use(tmp_path: Path, procs: list[Proc]) -> None:
    """
    Daemonized (no -n), a port in use still ends with exit 1 and the reason
    on stderr (through twistd's status pipe), not a parent waiting forever,
    and leaves no pid file.
    """
    with closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(procs, ["--pidfile", "mailmcp.pid", "--logfile", "mailmcp.log", "mailmcp",
                             "--listen", f"tcp:{port}:interface=127.0.0.1"], tmp_path)
        assert proc.wait(30) == 1
    assert "cannot listen on" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "mailmcp.pid").exists()


def test_daemonized_start_and_stop(tmp_path: Path, procs: list[Proc]) -> None:
    """``twistd mailmcp`` (daemonizing) returns 0 once serving; SIGTERM to its pid stops it."""
    port = free_port()
    proc = start(procs, ["--pidfile", "mailmcp.pid", "--logfile", "mailmcp.log", "mailmcp",
                         "--listen", f"tcp:{port}:interface=127.0.0.1"], tmp_path)
    assert proc.wait(30) == 0, proc.stderr
    pid = int((tmp_path / "mailmcp.pid").read_text())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            assert r.status == 200
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while (tmp_path / "mailmcp.pid").exists():
        assert time.monotonic() < deadline, "the daemon did not stop"
        time.sleep(0.1)
    assert "Server Shut Down" in (tmp_path / "mailmcp.log").read_text()


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--listen", "nonsense:1"], {}, "--listen"),
        (["--metrics-listen", "nonsense:1"], {}, "bad --metrics-listen endpoint"),
        (["--listen", "systemd:domain=INET:index=0"], {}, "no such socket was passed in by systemd"),
        (["--listen", "8080"], {}, "--listen needs an endpoint string"),
        (["--pool-size", "many"], {}, "--pool-size must be a number"),
        ([], {"MAILMCP_IMAP_TIMEOUT": "soon"}, "--imap-timeout must be a number"),
        (["--base-url", "ftp://x"], {}, "--base-url"),
        (["--base-url", "http://mail.example.com"], {}, "plain http on a host that is not loopback"),
        ([], {"MAILMCP_BASE_URL": "http://192.0.2.7"}, "or pass --allow-insecure-base-url"),
        (["--listen", "tcp:8080:interface=192.0.2.7"], {}, "http://192.0.2.7:8080 is plain http"),
        (["--store", "mysql://db"], {}, "--store"),
        (["--attachments", "ftp://bucket"], {}, "--attachments"),
        (["--mail-ca-file", "/nonexistent.pem"], {}, "--mail-ca-file"),
        ([], {"MAILMCP_STORE_CA_FILE": "/nonexistent.pem"}, "--store-ca-file /nonexistent.pem"),
        ([], {"MAILMCP_KEYS": "not json"}, "corrupt key ring in MAILMCP_KEYS"),
    ],
)
def test_bad_values(tmp_path: Path, procs: list[Proc], args: list[str], env: dict[str, str],
                    expected: str) -> None:
    """Each bad value, by option or environment: one stderr line, non-zero exit, no traceback."""
    proc = start(procs, ["-n", "--pidfile=", "mailmcp", *args], tmp_path, clean_env(**env))
    assert_one_line_error(proc, expected)


@pytest.mark.parametrize("how", ["option", "environment"])
def test_insecure_base_url_only_when_allowed(tmp_path: Path, procs: list[Proc], how: str) -> None:
    """
    An http:// base URL on a public host starts only with
    --allow-insecure-base-url (or MAILMCP_ALLOW_INSECURE_BASE_URL), for a
    TLS-terminating proxy in front; the daemon then advertises it as given.
    """
    port = free_port()
    args = ["-n", "--pidfile=", "mailmcp", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--base-url", "http://mail.example.com"]
    env = clean_env()
    if how == "option":
        args.append("--allow-insecure-base-url")
    else:
        env["MAILMCP_ALLOW_INSECURE_BASE_URL"] = "1"
    proc = start(procs, args, tmp_path, env)
    assert proc.wait_for_health(f"http://127.0.0.1:{port}")["base_url"] == "http://mail.example.com"
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server", timeout=10
    ) as response:
        assert json.load(response)["issuer"] == "http://mail.example.com"
    proc.terminate()
    proc.assert_clean_exit()
