"""
Processes the benchmark starts: the mailmcp daemon (real ``twistd``), the
peer (mcp-email-server in its own virtualenv), and /proc readings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PEER_VERSION = "1.13.3"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (peak) in bytes from /proc/<pid>/status."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of a process (from /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _env_with_root() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def wait_http(url: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited after C{timeout} seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Daemon:
    """``twistd -n mailmcp`` on a loopback port."""

    def __init__(self, workdir: Path, port: int, state_dir: Path, ca_file: Path,
                 extra: Sequence[str] = (), name: str = "mailmcp") -> None:
        from tests.harness import free_port

        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        # GET /metrics is served only on its own listener (--metrics-listen).
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        self.log_path = workdir / f"{name}-{port}.log"
        args = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", str(self.log_path),
            "mailmcp",
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "--state-dir", str(state_dir),
            "--mail-ca-file", str(ca_file),
            "--metrics-listen", f"tcp:{self.metrics_port}:interface=127.0.0.1",
            *extra,
        ]
        self.args = args
        self.output = open(workdir / f"{name}-{port}.out", "wb")
        self.process = subprocess.Popen(args, cwd=str(workdir), env=_env_with_root(),
                                        stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT)
        try:
            wait_http(self.base_url + "/health", 60, self.process)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"mailmcp did not start: {self.tail()}") from None

    @property
    def pid(self) -> int:
        return self.process.pid

    def metrics(self, since: float | None = None, samples: bool = False) -> dict:
        url = self.metrics_url + "/metrics?format=json"
        if samples:
            url += "&samples=1"
        if since is not None:
            url += f"&since={since}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def tail(self, n: int = 3000) -> str:
        text = ""
        for path in (self.log_path, Path(self.output.name)):
            try:
                text += path.read_text(errors="replace")[-n:]
            except OSError:
                pass
        return text

    def stop(self) -> None:
        stop_process(self.process, 20)
        self.output.close()


def generate_client(workdir: Path, state_dir: Path, imaps_port: int, smtps_port: int) -> dict:
    command = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "mailmcp-generate", "--json", "--state-dir", str(state_dir),
        "--imap-host", "localhost", "--imap-port", str(imaps_port), "--imap-security", "tls",
        "--smtp-host", "localhost", "--smtp-port", str(smtps_port), "--smtp-security", "tls",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=_env_with_root(), timeout=60,
                            cwd=str(workdir))
    if result.returncode != 0:
        raise RuntimeError(f"mailmcp-generate failed: {result.stderr.strip()[-500:]}")
    document: dict = json.loads(result.stdout)
    return document


def peer_venv_dir() -> Path:
    base = Path(os.environ.get("MAILMCP_BENCH_CACHE") or Path.home() / ".cache" / "mailmcp-bench")
    return base / f"peer-venv-{PEER_VERSION}"


def ensure_peer(timeout: float = 300) -> Path:
    """
    The peer's executable, installing ``mcp-email-server==1.13.3`` into its
    own virtualenv under the cache directory on first use (it pins
    ``mcp<2``, which cannot live beside mailmcp's ``mcp`` 2.x).
    """
    venv = peer_venv_dir()
    exe = venv / "bin" / "mcp-email-server"
    if exe.exists():
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, capture_output=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"mcp-email-server=={PEER_VERSION}"],
                       timeout=timeout, capture_output=True, text=True)
    if r.returncode != 0 or not exe.exists():
        raise RuntimeError(f"pip install mcp-email-server=={PEER_VERSION} failed: {r.stderr.strip()[-400:]}")
    return exe


class Peer:
    """mcp-email-server in streamable-http mode, configured from the environment for one account."""

    def __init__(self, exe: Path, workdir: Path, port: int, email: str, password: str,
                 imaps_port: int, smtps_port: int, ca_file: Path) -> None:
        home = workdir / "peer-home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update({
            "HOME": str(home),
            "MCP_EMAIL_SERVER_CONFIG_PATH": str(home / "config.toml"),
            "MCP_EMAIL_SERVER_ACCOUNT_NAME": "local",
            "MCP_EMAIL_SERVER_EMAIL_ADDRESS": email,
            "MCP_EMAIL_SERVER_PASSWORD": password,
            "MCP_EMAIL_SERVER_IMAP_HOST": "localhost",
            "MCP_EMAIL_SERVER_IMAP_PORT": str(imaps_port),
            "MCP_EMAIL_SERVER_IMAP_SSL": "true",
            "MCP_EMAIL_SERVER_IMAP_VERIFY_SSL": "true",
            "MCP_EMAIL_SERVER_SMTP_HOST": "localhost",
            "MCP_EMAIL_SERVER_SMTP_PORT": str(smtps_port),
            "MCP_EMAIL_SERVER_SMTP_SSL": "true",
            "MCP_EMAIL_SERVER_SMTP_VERIFY_SSL": "true",
            "MCP_EMAIL_SERVER_ALLOWED_RECIPIENTS": email,
            "SSL_CERT_FILE": str(ca_file),
        })
        self.base_url = f"http://127.0.0.1:{port}"
        self.output = open(workdir / "peer.log", "wb")
        self.process = subprocess.Popen(
            [str(exe), "streamable-http", "--host", "127.0.0.1", "--port", str(port)],
            cwd=str(workdir), env=env, stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT,
        )
        try:
            wait_http(self.base_url + "/mcp", 60, self.process)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}: {self.tail()}") from None

    def tail(self, n: int = 1500) -> str:
        try:
            return Path(self.output.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.process, 15)
        self.output.close()
