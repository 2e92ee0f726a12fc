"""
Where the page templates are: installed as the package ``mailmcp.templates``
(from the top-level ``templates/`` folder), or the checkout's ``templates/``.
"""

from __future__ import annotations

from pathlib import Path


def templates_dir() -> Path:
    try:
        import mailmcp.templates as installed  # type: ignore[import-not-found,unused-ignore]

        return Path(installed.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parent.parent / "templates"


def template_path(name: str) -> Path:
    return templates_dir() / name
