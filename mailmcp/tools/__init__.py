"""
The registry of MCP tools, in the order ``tools/list`` shows them.

Each module below owns a family of tools and exports them as ``TOOLS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from .._toolkit import Tool
from . import _attachments, _changes, _conversation, _folders, _reading, _threads, _writing

AnyTool = Tool[Any, Any]


def all_tools() -> list[AnyTool]:
    families = (
        _reading.TOOLS,
        _threads.TOOLS,
        _changes.TOOLS,
        _writing.TOOLS,
        _conversation.TOOLS,
        _folders.TOOLS,
        _attachments.TOOLS,
    )
    return [tool for family in families for tool in cast(Sequence[AnyTool], family)]
