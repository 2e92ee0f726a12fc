"""
The static checks of tox's ``mypy`` and ``lint`` environments, run by the
suite too, so that CI (which runs the README's test command) keeps them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_mypy_is_clean() -> None:
    """mypy (strict settings from pyproject.toml, mypy-zope plugin) reports no error in mailmcp/."""
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_lint_and_format_are_clean() -> None:
    """ruff finds nothing in the code and tests, and mailmcp/ is formatted."""
    lint = run("ruff", "check", "mailmcp", "twisted", "tests", "benchmarks")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = run("ruff", "format", "--check", "mailmcp", "twisted")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
