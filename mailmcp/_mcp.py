"""
The ``/mcp`` endpoint's former single module: its names, now in
`mailmcp.mcp`, kept importable here.
"""

from __future__ import annotations

from ._cors import origin_of
from .mcp._app import MCPApp
from .mcp._dispatch import (
    ALL_VERSIONS,
    ASSUMED_LEGACY_VERSION,
    DEFAULT_INSTRUCTIONS,
    HANDSHAKE_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    MODERN_VERSIONS,
)
from .mcp._gate import DECODE_ON_REACTOR_MAX, SERVER_BUSY, account_key
from .mcp._results import InsufficientScope, ToolOutcome, describe_validation_error
from .mcp._results import ToolText as _ToolText

__all__ = [
    "ALL_VERSIONS",
    "ASSUMED_LEGACY_VERSION",
    "DECODE_ON_REACTOR_MAX",
    "DEFAULT_INSTRUCTIONS",
    "HANDSHAKE_VERSIONS",
    "LATEST_HANDSHAKE_VERSION",
    "MODERN_VERSIONS",
    "SERVER_BUSY",
    "InsufficientScope",
    "MCPApp",
    "ToolOutcome",
    "_ToolText",
    "account_key",
    "describe_validation_error",
    "origin_of",
]
