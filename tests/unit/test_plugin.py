"""
The twistd dropin: both tap names are discoverable, the dropin stays a pure
declaration (importing it imports none of mailmcp), the repository layout
cannot shadow Twisted, and twistd reports option errors as one stderr line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.application.service import IService, IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions

from mailmcp import generate_tap, tap

ROOT = Path(__file__).resolve().parents[2]


def _makers() -> dict[str, IServiceMaker]:
    return {maker.tapname: maker for maker in getPlugins(IServiceMaker)}


def test_both_tapnames_are_discovered() -> None:
    """getPlugins(IServiceMaker) finds ``mailmcp`` and ``mailmcp-generate``."""
    makers = _makers()
    assert "mailmcp" in makers
    assert "mailmcp-generate" in makers


def test_makers_point_at_the_tap_modules() -> None:
    """The lazy ServiceMakers resolve to the Options/makeService of our tap modules."""
    makers = _makers()
    assert makers["mailmcp"].options is tap.Options
    assert makers["mailmcp"].makeService is tap.makeService
    assert makers["mailmcp-generate"].options is generate_tap.Options
    assert makers["mailmcp-generate"].makeService is generate_tap.makeService


def test_dropin_imports_nothing_of_mailmcp() -> None:
    """
    twistd imports every dropin on every run, so ours must only declare:
    importing it in a fresh interpreter loads no ``mailmcp`` module.
    """
    code = (
        "import sys, importlib.util\n"
        "spec = importlib.util.spec_from_file_location('d', 'twisted/plugins/mailmcp_dropin.py')\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mailmcp'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_init_files_under_twisted() -> None:
    """
    No ``__init__.py`` in ``twisted/`` or ``twisted/plugins/``: one would
    shadow the installed Twisted package.
    """
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()


def test_dropin_cache_is_ignored() -> None:
    """The generated dropin.cache is never committed (it goes stale)."""
    assert "twisted/plugins/dropin.cache" in (ROOT / ".gitignore").read_text().splitlines()


def test_twistd_help_lists_both_plugins() -> None:
    """``twistd --help`` of this environment lists both commands (editable install check)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILMCP_")}
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 0, result.stderr
    commands = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ")}
    assert {"mailmcp", "mailmcp-generate"} <= commands


def test_make_service_builds_without_listening(tmp_path: Path) -> None:
    """
    makeService wires the tree (a drain service and one listener per
    --listen) and opens no socket before startService.
    """
    options = tap.Options(environ={})
    options.parseOptions(
        [
            "--state-dir", str(tmp_path / "s"),
            "--listen", "tcp:0",
            "--listen", "unix:" + str(tmp_path / "sock"),
        ]
    )
    reactor = MemoryReactorClock()
    service = tap.makeService(options, reactor=reactor)
    assert IService.providedBy(service)
    names = {child.name for child in service}
    assert {"drain", "listen-0", "listen-1"} <= names
    assert reactor.tcpServers == []
    assert reactor.unixServers == []


def test_twistd_reports_bad_option_as_one_stderr_line(capsys: pytest.CaptureFixture[str]) -> None:
    """
    Under twistd (a parent ServerOptions), an unknown option is one line on
    stderr naming the command, and exit status 1, not a usage dump on stdout.
    """
    with pytest.raises(SystemExit) as exited:
        ServerOptions().parseOptions(["mailmcp", "--no-such-option"])
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("mailmcp: error: ")
    assert "--no-such-option" in lines[0]


def test_generate_reports_bad_option_as_one_stderr_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``twistd mailmcp-generate`` with a missing required option: one stderr line, exit 1."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        ServerOptions().parseOptions(["mailmcp-generate", "--imap-host", "imap.example.com"])
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "mailmcp-generate: error: --smtp-host is required (see: twistd mailmcp-generate --help)"
    ]


def test_options_parsed_directly_raise_usage_error() -> None:
    """Without a twistd parent the UsageError propagates, so callers and tests can catch it."""
    with pytest.raises(usage.UsageError):
        tap.Options(environ={}).parseOptions(["--no-such-option"])
