"""
Attacks on the grant store, the tokens and the state files, against a real
``twistd mailmcp`` with the real Dovecot and Redis:

- ST-01 a stolen refresh token replayed after its successor was used (or
  after the grace) revokes the whole family; the legitimate race (five
  refreshes of one token at once, a lost response) keeps the user logged in
  with one successor, on SQLite and on Redis.
- ST-02 state files readable by others: an existing state directory or
  ``keys.json`` with group/other access is made private with a warning; the
  SQLite database and its ``-wal``/``-shm`` files are 0600 from the start.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mailmcp.oauth._keyring import KeyRing, new_master_key, write_keyring
from tests.harness import ROOT, TWISTD, Daemon, Services, free_port, generate_client
from tests.hostile import mcp_http
from tests.hostile.daemon_clients import error_lines

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def refresh(base: str, client: dict[str, Any], refresh_token: str) -> httpx2.Response:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": client["client_id"], "client_secret": client["client_secret"]}
    return httpx2.post(base + "/oauth/token", data=form, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_st_01_concurrent_refreshes_share_one_successor_and_stale_replay_revokes(
    services: Services, daemon_factory: Any, tmp_path: Path, store: str
) -> None:
    """
    Five refreshes of one refresh token at once (Claude's known race) all get
    200 and the same successor; the access tokens all work.  After the
    successor itself rotates, the original token (a stolen copy) is refused
    and every token of the family dies.
    """
    extra = ["--store", services.redis_url] if store == "redis" else []
    daemon = daemon_factory(services, *extra)
    base = daemon.base_url
    client = generate_client(daemon.state_dir, services)
    tokens = mcp_http.login(base, client, "alice@example.test", "alicepw")
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: refresh(base, client, tokens["refresh_token"]), range(5)))
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    successors = {a.json()["refresh_token"] for a in answers}
    assert len(successors) == 1
    for answer in answers:
        status, body = mcp_http.rpc(base, answer.json()["access_token"], "tools/list")
        assert status == 200 and body is not None and "result" in body, body
    (successor,) = successors
    newer = refresh(base, client, successor)
    assert newer.status_code == 200, newer.text
    stale = refresh(base, client, tokens["refresh_token"])
    assert (stale.status_code, stale.json()["error"]) == (400, "invalid_grant")
    status, _ = mcp_http.rpc(base, newer.json()["access_token"], "tools/list")
    assert status == 401
    assert refresh(base, client, newer.json()["refresh_token"]).status_code == 400
    assert error_lines(daemon) == []


def test_st_02_state_files_are_private(services: Services, tmp_path: Path) -> None:
    """
    A state directory (0755), keys.json (0644) and an old SQLite file (0644)
    left open to others: twistd starts, warns once per fixed path on stderr
    (no traceback), and after a real login wrote a grant the directory is
    0700 and keys.json, the database and its -wal and -shm files are 0600.
    """
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    write_keyring(state / "keys.json", KeyRing([new_master_key()]))
    (state / "keys.json").chmod(0o644)
    database = state / "mailmcp.sqlite3"
    database.touch()
    database.chmod(0o644)
    daemon = Daemon.start(state, services)
    try:
        client = generate_client(state, services)
        tokens = mcp_http.login(daemon.base_url, client, "alice@example.test", "alicepw")
        assert refresh(daemon.base_url, client, tokens["refresh_token"]).status_code == 200
        files = [database, state / "mailmcp.sqlite3-wal", state / "mailmcp.sqlite3-shm"]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(state) == 0o700 and mode(state / "keys.json") == 0o600
        daemon.process.terminate()
        assert daemon.process.wait(20) == 0
        assert daemon.process.stderr is not None
        err = daemon.process.stderr.read().decode()
    finally:
        daemon.stop()
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("mailmcp: warning: state directory ") and "(mode 0755)" in lines[0]
    assert "changed to 0700" in lines[0]
    assert lines[1].startswith("mailmcp: warning: key ring ") and "(mode 0644)" in lines[1]
    assert "Traceback" not in err
    assert mode(database) == 0o600


def test_st_02_new_state_files_are_private_whatever_the_umask(services: Services, tmp_path: Path) -> None:
    """With a permissive umask (000) the files the daemon creates are still 0700/0600."""
    state = tmp_path / "fresh"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [*TWISTD, "-n", "--pidfile=", "--logfile", str(tmp_path / "twistd.log"), "mailmcp",
               "--listen", f"tcp:{port}:interface=127.0.0.1", "--state-dir", str(state),
               "--mail-ca-file", str(services.ca_file)]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(0))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            try:
                if httpx2.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.1)
        client = generate_client(state, services)
        mcp_http.login(base, client, "alice@example.test", "alicepw")
        database = state / "mailmcp.sqlite3"
        files = [database, state / "mailmcp.sqlite3-wal", state / "mailmcp.sqlite3-shm",
                 state / "keys.json"]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(state) == 0o700
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert b"Traceback" not in err and b"warning" not in err, err


# -- ST-03: a rediss:// store that is not who it claims to be -----------------------------------


def redis_cli(services: Services, port: int, *command: str) -> str:
    result = subprocess.run(["redis-cli", "--tls", "--cacert", str(services.ca_file),
                             "--sni", "other.example.test", "-h", "127.0.0.1", "-p", str(port), *command],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def commands_processed(services: Services, port: int) -> int:
    for line in redis_cli(services, port, "info", "stats").splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":")[1])
    raise AssertionError("no total_commands_processed")


def test_st_03_rediss_with_store_ca_file_works(services: Services, daemon_factory: Any) -> None:
    """rediss:// with --store-ca-file: the handshake verifies (logged), logins and refreshes work, grants land in Redis."""
    daemon = daemon_factory(services, "--store", services.rediss_url(db=3),
                            "--store-ca-file", str(services.ca_file))
    client = generate_client(daemon.state_dir, services)
    tokens = mcp_http.login(daemon.base_url, client, "alice@example.test", "alicepw")
    assert refresh(daemon.base_url, client, tokens["refresh_token"]).status_code == 200
    status, _ = mcp_http.rpc(daemon.base_url, tokens["access_token"], "tools/list")
    assert status == 200
    grants = redis_cli(services, services.redis_tls_port, "-n", "3", "--scan", "--pattern", "mailmcp:grant:*")
    assert len(grants.split()) == 1
    assert "TLS certificate verified" in daemon.log_text()


@pytest.mark.parametrize("case", ["system-trust", "other-ca", "other-name"])
def test_st_03_rediss_unverified_server_refused(services: Services, daemon_factory: Any, case: str) -> None:
    """
    A rediss:// server whose certificate does not verify -- the test CA is
    not in the system store, --store-ca-file names another CA, or the
    certificate (from the right CA) names another host -- gets no command at
    all: the login answers 503, the log says why in one line, and the server
    processed nothing and stored nothing.
    """
    if case == "other-name":
        port, url, extra = (services.redis_tls_other_port, services.rediss_other_name_url(db=4),
                            ["--store-ca-file", str(services.ca_file)])
        why = "the certificate does not name this host"
    else:
        port, url = services.redis_tls_port, services.rediss_url(db=4)
        extra = [] if case == "system-trust" else ["--store-ca-file", str(services.other_ca_file)]
        why = "the certificate is not signed by a trusted CA"
    before = commands_processed(services, port)
    daemon = daemon_factory(services, "--store", url, *extra)
    client = generate_client(daemon.state_dir, services)
    with pytest.raises(Exception, match="POST /oauth/authorize: 503"):
        mcp_http.login(daemon.base_url, client, "alice@example.test", "alicepw")
    assert daemon.stop() == 0
    lines = [line for line in daemon.log_text().splitlines() if "TLS refused" in line]
    assert len(lines) == 1 and why in lines[0] and "nothing sent" in lines[0], lines
    assert "alicepw" not in daemon.log_text()
    assert commands_processed(services, port) - before == 1  # the INFO that asked
    assert redis_cli(services, port, "-n", "4", "dbsize").strip() == "0"
