"""
The suite's layout: no module under ``tests/`` imports a test module.

Helpers that several test modules share live in helper modules named for
what they hold (``tests/integration/mail_live.py``, ``tests/unit/mcp_client.py``,
...) and shared fixtures in the nearest ``conftest.py``.  A test module that
imports another one runs that module's fixtures and module-level code where
nobody expects them, and ties the two together so that neither can be
changed alone.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _is_test_module(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1].startswith("test_")


def imports_of_test_modules(source: str) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of a ``test_*`` module in C{source}."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_test_module(alias.name):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            if node.module and _is_test_module(node.module):
                yield node.lineno, base
                continue
            for alias in node.names:
                if _is_test_module(alias.name):
                    yield node.lineno, f"{base}.{alias.name}" if node.module else base + alias.name


def offenders() -> list[str]:
    """Every ``file:line: module`` under ``tests/`` that imports a test module."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if ".venv" in path.parts:
            continue
        for line, module in imports_of_test_modules(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(TESTS.parent)}:{line}: {module}")
    return found


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from tests.integration.test_smtp_live import fresh_users\n", "tests.integration.test_smtp_live"),
        ("from tests.integration import test_login_browser\n", "tests.integration.test_login_browser"),
        ("import tests.unit.test_mcp as m\n", "tests.unit.test_mcp"),
        ("from .test_mcp import Client\n", ".test_mcp"),
        ("from . import test_mcp\n", ".test_mcp"),
        ("def f():\n    from tests.unit.test_mcp import call\n", "tests.unit.test_mcp"),
        ("from twisted.web.test.test_web import DummyChannel\n", "twisted.web.test.test_web"),
    ],
)
def test_scanner_finds_every_form(source: str, expected: str) -> None:
    """The scanner sees absolute, relative, module and function-local imports of a test module."""
    assert [module for _, module in imports_of_test_modules(source)] == [expected]


@pytest.mark.parametrize(
    "source",
    [
        "from tests.integration.mail_live import fresh_users\n",
        "from tests.unit import mcp_client\n",
        "import tests.harness\n",
        "from twisted.web.test.requesthelper import DummyChannel\n",
        "from testing import x\n",
    ],
)
def test_scanner_passes_helper_imports(source: str) -> None:
    """Imports of helper modules (whatever their package) are not flagged."""
    assert list(imports_of_test_modules(source)) == []


def test_no_module_under_tests_imports_a_test_module() -> None:
    """Test modules, helpers and conftests import helpers, never a ``test_*`` module."""
    assert offenders() == []
