"""
The option table (mailmcp._options) is the one declaration of every option:
both commands' ``--help``, their environment fallbacks, ``Config``'s defaults
and README.rst's table all come from it, and an option added there once
reaches both commands.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from mailmcp import _options, generate_tap, tap
from mailmcp._config import Config
from mailmcp._options import (
    BOTH,
    DAEMON,
    GENERATE,
    Option,
    default_of,
    main,
    options_of,
    options_table_rst,
    readme_table,
    update_readme,
)


@pytest.mark.parametrize("command, options_class", [(DAEMON, tap.Options), (GENERATE, generate_tap.Options)])
def test_help_names_every_option_and_its_variable(command: str, options_class: type) -> None:
    """
    Each option of a command is in its --help, with its MAILMCP_* variable
    exactly when that command reads it.
    """
    text = " ".join(options_class(environ={}).getUsage(width=1000).split())
    for option in options_of(command):
        assert f"--{option.name}" in text
        assert (f"[env {option.env}" in text) == option.reads_env(command), option.name


def test_names_and_variables_are_unique() -> None:
    """No option is declared twice; each variable belongs to one option."""
    names = [option.name for option in _options.OPTIONS]
    assert len(names) == len(set(names))
    assert len({option.env for option in _options.OPTIONS}) == len(names)


def test_config_defaults_are_the_table_defaults(tmp_path: Path) -> None:
    """
    Every Config field that has a default is the default a daemon started
    with no options gets, so the table's default is the only one.
    """
    config = tap.Options(environ={})
    config.parseOptions(["--state-dir", str(tmp_path)])
    checked = 0
    for field in attrs.fields(Config):
        if field.default is attrs.NOTHING or field.name == "keyring":
            continue
        assert getattr(config.config, field.name) == field.default, field.name
        checked += 1
    assert checked >= 30
    assert default_of("pool-wait-timeout") == 15.0 and default_of("max-request-body") == 33554432


def test_generate_reads_only_its_variables(tmp_path: Path) -> None:
    """
    mailmcp-generate takes the daemon's state dir from MAILMCP_STATE_DIR but
    never its default mail profile (MAILMCP_IMAP_PORT is the daemon's).
    """
    options = generate_tap.Options(
        environ={"MAILMCP_STATE_DIR": str(tmp_path / "s"), "MAILMCP_IMAP_PORT": "1"}
    )
    options.parseOptions(["--imap-host", "imap.example.com", "--smtp-host", "smtp.example.com"])
    assert options["state-dir"] == (tmp_path / "s").resolve()
    assert options["imap"].port == 993


def test_one_entry_adds_an_option_to_both_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    One Option(..., commands=BOTH) is all it takes: both commands accept it,
    read its variable, show it in --help and README.rst's table lists it.
    """
    added = Option("example-client-id", "An example.", commands=BOTH)
    monkeypatch.setattr(_options, "OPTIONS", (*_options.OPTIONS, added))

    class Daemon(tap.Options):
        pass

    class Generate(generate_tap.Options):
        pass

    daemon = Daemon(environ={})
    daemon.parseOptions(["--state-dir", str(tmp_path), "--example-client-id", "from-argv"])
    assert daemon.resolved()["example-client-id"] == "from-argv"
    generate = Generate(environ={"MAILMCP_EXAMPLE_CLIENT_ID": "from-env"})
    generate.parseOptions(["--state-dir", str(tmp_path), "--add-key"])
    assert generate["example-client-id"] == "from-env"
    assert "MAILMCP_EXAMPLE_CLIENT_ID" in Generate(environ={}).getUsage()
    assert "``--example-client-id``" in options_table_rst()


def test_update_readme_rewrites_only_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    ``python -m mailmcp._options --update-readme PATH`` replaces a stale table
    between the markers and leaves the text around it alone.
    """
    readme = tmp_path / "README.rst"
    readme.write_text(
        "Intro\n\n.. BEGIN CONFIG TABLE (generated)\n\nstale\n\n.. END CONFIG TABLE\n\nOutro\n",
        encoding="utf-8",
    )
    assert main(["--update-readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert readme_table(text) == options_table_rst()
    assert text.startswith("Intro\n\n") and text.endswith("\nOutro\n")
    assert update_readme(readme) is False
    assert main(["--rst"]) == 0
    assert capsys.readouterr().out.endswith(options_table_rst())
    assert main(["--bogus"]) == 2
