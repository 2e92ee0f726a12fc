"""
The tool runner: one ``tools/call`` from validated JSON arguments to a
result.  It validates the input, checks the token's scopes, runs the
handler, shapes the outcome (`ToolText` on success, an ``isError`` result
the model can read on any failure) and writes the audit entry.  The one
place tool failures are mapped; only cancellation escapes.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from twisted.internet.defer import CancelledError, Deferred

from .._account import MailAccount
from .._logging import Logger
from .._toolkit import Tool, ToolContext, ToolError, ToolServices
from ._offload import Offload, on_reactor
from ._results import (
    INTERNAL_TOOL_FAILURE,
    InsufficientScope,
    ToolOutcome,
    ToolResult,
    ToolText,
    describe_validation_error,
    error_result,
    plain_json_bytes,
)

log = Logger()

#: MCP 2025-11-25 tool-name rule.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def index_tools(tools: Sequence[Tool[Any, Any]]) -> dict[str, Tool[Any, Any]]:
    """The tools by name, in order; a bad or repeated name fails at startup."""
    indexed: dict[str, Tool[Any, Any]] = {}
    for tool in tools:
        if not _TOOL_NAME.fullmatch(tool.name):
            raise ValueError(f"tool name {tool.name!r} is not 1-64 characters of [A-Za-z0-9_.-]")
        if tool.name in indexed:
            raise ValueError(f"two tools are named {tool.name!r}")
        indexed[tool.name] = tool
    return indexed


class ToolRunner:
    """
    Runs tools for accounts.

    :param services: handed to every handler as ``ToolContext.services``;
        its ``audit`` (if any) gets one entry per call.
    :param offload: where argument validation of a large request runs.
    """

    def __init__(self, services: ToolServices, offload: Offload = on_reactor) -> None:
        self._services = services
        self._offload = offload

    async def call(
        self,
        account: MailAccount,
        tool: Tool[Any, Any],
        arguments: Mapping[str, Any],
        large: bool = False,
    ) -> ToolResult:
        """
        Run one tool, and record it in the audit trail when there is one
        (LG-06): whatever the outcome, one entry per call.
        """
        audit = self._services.audit
        if audit is None:
            return await self._run(account, tool, arguments, large, ToolOutcome())
        outcome, seen = "unknown", ToolOutcome()
        try:
            result = await self._run(account, tool, arguments, large, seen)
            # A scope refusal (403) is an error: the tool never ran.
            outcome = "error" if isinstance(result, InsufficientScope) else seen.outcome
            return result
        finally:
            audit.tool_call(account, tool.name, arguments, seen.output, outcome)

    async def _run(
        self,
        account: MailAccount,
        tool: Tool[Any, Any],
        arguments: Mapping[str, Any],
        large: bool,
        seen: ToolOutcome,
    ) -> ToolResult:
        """
        Run one tool.  Whatever goes wrong inside becomes an ``isError``
        result the model can read; a missing scope is an `InsufficientScope`;
        only cancellation escapes.  C{seen} is told the outcome and the output.
        """
        scopes = account.scopes
        if account.ended:
            # The mail provider ended this grant (provider sign-in): say so
            # in the tool result; the next request gets the HTTP 401.
            return error_result(account.ended)
        if tool.scopes_for is None and not tool.visible_to(scopes):
            return InsufficientScope(tool.name, tool.declared_scopes)
        try:
            validated = await self._offload(
                large, lambda: tool.input_model.model_validate(arguments)
            )
        except ValidationError as e:
            if not tool.visible_to(scopes):
                return InsufficientScope(tool.name, tool.declared_scopes)
            return error_result(describe_validation_error(tool.name, e))
        needed = tool.needs(validated)
        if not needed <= scopes:
            # Reply and forward: whether it sends is known only now.
            return InsufficientScope(tool.name, needed)
        started = time.monotonic()
        try:
            awaitable = tool.handler(
                ToolContext(account=account, services=self._services), validated
            )
            if inspect.iscoroutine(awaitable):
                output = await Deferred.fromCoroutine(awaitable)
            else:
                output = await awaitable
            text = _output_text(tool, output)
            if text is None:
                log.error(
                    "tool {tool} for {owner} returned {kind}, not {model}",
                    tool=tool.name,
                    owner=account.owner,
                    kind=type(output).__name__,
                    model=tool.output_model.__name__,
                )
                return error_result(INTERNAL_TOOL_FAILURE)
            seen.output, seen.outcome = output, "ok"
        except ToolError as e:
            if e.message.startswith("Delivery status unknown"):
                seen.outcome = "unknown"
            log.info(
                "tool {tool} for {owner} failed: {message}",
                tool=tool.name,
                owner=account.owner,
                message=e.message,
            )
            return error_result(e.message)
        except (CancelledError, asyncio.CancelledError):
            log.info("tool {tool} for {owner} cancelled", tool=tool.name, owner=account.owner)
            raise
        except Exception:
            log.failure("tool {tool} for {owner} raised", tool=tool.name, owner=account.owner)
            return error_result(INTERNAL_TOOL_FAILURE)
        log.debug(
            "tool {tool} for {owner} took {elapsed:.4f}s",
            tool=tool.name,
            owner=account.owner,
            elapsed=time.monotonic() - started,
        )
        return ToolText(text)


def _output_text(tool: Tool[Any, Any], output: Any) -> bytes | str | None:
    """
    The JSON text of a handler's output, or None if it is neither plain
    data nor the tool's output model.  Plain JSON-ready data in the model's
    shape (a hot path) is serialised once and never validated here; tests
    check it against the tool's outputSchema.
    """
    if isinstance(output, dict):
        return plain_json_bytes(output)
    if isinstance(output, tool.output_model):
        return json.dumps(output.model_dump(mode="json", by_alias=True), ensure_ascii=False)
    return None
