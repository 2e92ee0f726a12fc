"""
The registry of MCP tools, in the order ``tools/list`` shows them.

Each module below owns a family of tools and exports them as ``TOOLS``.
"""

from __future__ import annotations

from .._toolkit import Tool
from . import _attachments, _reading, _writing


def all_tools() -> list[Tool]:  # type: ignore[type-arg]
    tools: list[Tool] = []  # type: ignore[type-arg]
    tools.extend(_reading.TOOLS)
    tools.extend(_writing.TOOLS)
    tools.extend(_attachments.TOOLS)
    return tools
