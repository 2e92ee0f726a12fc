"""
Packaging: a wheel built from this tree, installed with all its
dependencies into a fresh virtualenv (no editable install, no PYTHONPATH,
run from outside the checkout), gives a working ``twistd`` with both
plugins, ships the templates, and does not shadow Twisted's own package
files.  Editable installs hide exactly these mistakes (django/daphne#506).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.harness import ROOT, free_port

_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "test-artifacts", "mailmcp-state",
    "__pycache__", ".services", "dropin.cache", ".mypy_cache", ".ruff_cache", ".tox",
)


@attrs.frozen
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    workdir: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def env(self) -> dict[str, str]:
        """No PYTHONPATH and no MAILMCP_*: only what the wheel installed counts."""
        return {k: v for k, v in os.environ.items()
                if k != "PYTHONPATH" and not k.startswith("MAILMCP_")}

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=str(self.workdir), env=self.env(),
                              capture_output=True, text=True, timeout=timeout)


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Build the wheel from a copy of the tree, install it into a new venv (once per module)."""
    base = tmp_path_factory.mktemp("packaging")
    source = base / "src"
    shutil.copytree(ROOT, source, ignore=_IGNORE)
    dist = base / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist)], source, 600)
    wheels = list(dist.glob("mailmcp-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], base, 120)
    began = time.monotonic()
    _run([str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])], base, 600)
    print(f"full install of the wheel took {time.monotonic() - began:.1f}s")
    site = _run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                base, 60).stdout.strip()
    workdir = base / "run"
    workdir.mkdir()
    yield Installed(wheel=wheels[0], venv=venv, site_packages=Path(site), workdir=workdir)


def test_wheel_contents(installed: Installed) -> None:
    """
    The wheel holds the package, its subpackages, the templates, py.typed
    and the dropin, but no ``twisted/__init__.py`` or
    ``twisted/plugins/__init__.py`` (those belong to Twisted) and no tests.
    """
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for required in ("mailmcp/__init__.py", "mailmcp/tap.py", "mailmcp/generate_tap.py",
                     "mailmcp/py.typed", "mailmcp/templates/__init__.py",
                     "twisted/plugins/mailmcp_dropin.py"):
        assert required in names, required
    for package in {n.rsplit("/", 1)[0] for n in names if n.startswith("mailmcp/") and n.endswith(".py")}:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the wheel"
    assert any(n.startswith("mailmcp/templates/") and n.endswith((".xhtml", ".html")) for n in names)
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(n.startswith("tests/") for n in names)
    assert not any(n.endswith("dropin.cache") for n in names)


def test_every_source_module_is_packaged(installed: Installed) -> None:
    """Each module of the checkout's mailmcp package is in the wheel (no forgotten subpackage)."""
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for path in (ROOT / "mailmcp").rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        if "__pycache__" not in relative:
            assert relative in names, f"{relative} is not in the wheel"
    for path in (ROOT / "templates").iterdir():
        if path.is_file() and path.suffix in (".xhtml", ".html", ".css", ".txt", ".py"):
            assert f"mailmcp/templates/{path.name}" in names, f"templates/{path.name} is not shipped"


def test_installed_files(installed: Installed) -> None:
    """In site-packages: the dropin next to Twisted's plugins, the templates, nothing of ours in twisted/."""
    site = installed.site_packages
    assert (site / "twisted" / "plugins" / "mailmcp_dropin.py").is_file()
    templates = site / "mailmcp" / "templates"
    assert templates.is_dir()
    assert any(p.suffix in (".xhtml", ".html") for p in templates.iterdir())
    record = next(site.glob("mailmcp-*.dist-info")) / "RECORD"
    ours = {line.split(",")[0] for line in record.read_text().splitlines()}
    assert "twisted/__init__.py" not in ours
    assert "twisted/plugins/__init__.py" not in ours
    foreign = {
        p for p in ours
        if p.startswith("twisted/")
        and p != "twisted/plugins/mailmcp_dropin.py"
        and not p.startswith("twisted/plugins/__pycache__/mailmcp_dropin.")
    }
    assert not foreign, f"the wheel installs files into Twisted's package: {foreign}"
    # Twisted itself is intact (its own __init__ is still Twisted's).
    assert "__version__" in (site / "twisted" / "__init__.py").read_text()


def test_twistd_lists_both_plugins(installed: Installed) -> None:
    """The installed twistd's --help lists mailmcp and mailmcp-generate."""
    result = installed.run(installed.bin("twistd"), "--help")
    assert result.returncode == 0, result.stderr
    commands = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ")}
    assert "mailmcp" in commands
    assert "mailmcp-generate" in commands


def test_plugin_options_load(installed: Installed) -> None:
    """The lazy plugins resolve: ``twistd mailmcp --help`` imports the installed package."""
    result = installed.run(installed.bin("twistd"), "mailmcp", "--help")
    assert result.returncode == 0, result.stderr
    assert "--listen" in result.stdout and "--state-dir" in result.stdout
    result = installed.run(installed.bin("twistd"), "mailmcp-generate", "--help")
    assert result.returncode == 0, result.stderr
    assert "--imap-host" in result.stdout


def test_installed_daemon_serves_health_and_login_page(installed: Installed) -> None:
    """
    The installed daemon starts from a bare directory, answers /health, and
    renders the login page from the installed templates for a client
    provisioned by the installed mailmcp-generate; SIGTERM exits 0.
    """
    workdir = installed.workdir / "daemon"
    workdir.mkdir()
    generated = subprocess.run(
        [installed.bin("twistd"), "mailmcp-generate", "--json",
         "--imap-host", "imap.example.com", "--smtp-host", "smtp.example.com"],
        cwd=str(workdir), env=installed.env(), capture_output=True, text=True, timeout=120,
    )
    assert generated.returncode == 0, generated.stderr
    client_id = json.loads(generated.stdout)["client_id"]
    port = free_port()
    with open(workdir / "out.txt", "wb") as out, open(workdir / "err.txt", "wb") as err:
        process = subprocess.Popen(
            [installed.bin("twistd"), "-n", "--pidfile=", "mailmcp",
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=str(workdir), env=installed.env(), stdout=out, stderr=err,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, (workdir / "out.txt").read_text()
                try:
                    with urllib.request.urlopen(base + "/health", timeout=2) as r:
                        assert json.loads(r.read())["status"] == "ok"
                        break
                except OSError:
                    assert time.monotonic() < deadline, "no /health answer"
                    time.sleep(0.2)
            query = urllib.parse.urlencode({
                "response_type": "code", "client_id": client_id,
                "redirect_uri": "http://127.0.0.1:45678/cb",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256", "state": "s",
            })
            with urllib.request.urlopen(f"{base}/oauth/authorize?{query}", timeout=10) as r:
                assert r.status == 200
                page = r.read().decode("utf-8")
            assert "<form" in page
            assert 'name="imap_password"' in page
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(30)
    assert code == 0, (workdir / "out.txt").read_text() + (workdir / "err.txt").read_text()
    assert "Traceback" not in (workdir / "out.txt").read_text() + (workdir / "err.txt").read_text()


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_dockerfile_runtime_stage() -> None:
    """
    The image (docker cannot run here, so its recipe is checked): a
    python:3.11-slim runtime stage that installs the built wheel, regenerates
    the dropin cache as root before switching to an unprivileged user, keeps
    state in the /data volume, has a /health HEALTHCHECK and runs twistd in
    the foreground without a pid file.
    """
    steps = _instructions((ROOT / "Dockerfile").read_text())
    froms = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    runtime = steps[froms[-1]:]
    assert runtime[0][1] == "python:3.11-slim"
    words = [word for word, _ in runtime]
    runs = [args for word, args in runtime if word == "RUN"]
    install = next(i for i, (w, a) in enumerate(runtime) if w == "RUN" and "pip install" in a)
    assert ".whl" in runtime[install][1]
    assert "getPlugins(IPlugin)" in runtime[install][1]
    user = words.index("USER")
    assert user > install, "the dropin cache must be written while still root"
    assert runtime[user][1] not in ("root", "0")
    assert any("useradd" in r and runtime[user][1] in r for r in runs)
    assert ("VOLUME", '["/data"]') in runtime
    assert ("EXPOSE", "8080") in runtime
    env = " ".join(a for w, a in runtime if w == "ENV")
    assert "MAILMCP_STATE_DIR=/data" in env and "MAILMCP_BASE_URL=" in env
    healthcheck = next(a for w, a in runtime if w == "HEALTHCHECK")
    assert "urllib.request" in healthcheck and "http://127.0.0.1:8080/health" in healthcheck
    cmd = json.loads(next(a for w, a in runtime if w == "CMD"))
    assert cmd == ["twistd", "--nodaemon", "--pidfile=", "mailmcp", "--listen", "tcp:8080"]


def test_dockerignore_keeps_the_context_small() -> None:
    """The virtualenv, git data and local state never go into the build context."""
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for entry in (".venv", ".git", "mailmcp-state", "twisted/plugins/dropin.cache"):
        assert entry in ignored


def _unit(path: Path) -> dict[str, list[str]]:
    """``Key=value`` settings of a systemd unit file (values of repeated keys in order)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_units() -> None:
    """
    The plain service runs twistd in the foreground on the embedded defaults;
    the socket unit activates mailmcp-socket.service, which listens on the
    inherited socket (the endpoint exercised in test_daemon).
    """
    units = ROOT / "contrib" / "systemd"
    plain = _unit(units / "mailmcp.service")
    assert plain["ExecStart"][0].split()[1:] == ["--nodaemon", "--pidfile=", "mailmcp"]
    assert plain["User"] == ["mailmcp"]
    assert plain["KillSignal"] == ["SIGTERM"]
    assert "MAILMCP_STATE_DIR=/var/lib/mailmcp" in plain["Environment"]
    socket_unit = _unit(units / "mailmcp.socket")
    assert socket_unit["Service"] == ["mailmcp-socket.service"]
    assert len(socket_unit["ListenStream"]) == 1
    activated = _unit(units / "mailmcp-socket.service")
    assert activated["ExecStart"][0].split()[1:] == [
        "--nodaemon", "--pidfile=", "mailmcp", "--listen", "systemd:domain=INET:index=0"]
    assert activated["Requires"] == ["mailmcp.socket"]
