"""
The values the three rooms of ``/mcp`` hand each other instead of raising:
what a tool call produced (`ToolText`, an ``isError`` result, or an
`InsufficientScope` refusal) and what the JSON-RPC layer answers (`Reply`,
`Accepted`).  Plain data: nothing here knows Twisted or the HTTP request.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import orjson
from pydantic import ValidationError

from ._jsonrpc import RequestId

#: The message of a tool failure that is a bug, not the user's problem.
INTERNAL_TOOL_FAILURE = (
    "The tool failed because of an internal error in the mail server connector. "
    "The failure was logged; trying again later may help."
)


@attrs.frozen
class InsufficientScope:
    """A call needs scopes its token lacks: answered 403 (MCP step-up), before the tool runs."""

    tool: str
    needed: frozenset[str]


@attrs.frozen
class Reply:
    """A complete JSON-RPC response: its HTTP status and its encoded body."""

    status: int
    body: bytes


@attrs.frozen
class Accepted:
    """A notification, acknowledged with ``202`` and no body."""


#: What the dispatcher answers: a response, an acknowledgement, or a scope refusal
#: the transport turns into its challenge.
Outcome = Reply | Accepted | InsufficientScope


class ToolOutcome:
    """What the audit trail learns of one tool call: ok, error or unknown, and the output."""

    __slots__ = ("outcome", "output")

    def __init__(self) -> None:
        self.outcome = "error"
        self.output: Any = None


class ToolText:
    """
    A successful ``tools/call`` result, kept as the JSON text of the tool's
    structured output: that text is the text content and, verbatim, the
    ``structuredContent`` (JSON does not mind the spaces), so a listing is
    encoded once instead of three times (docs/architecture.rst, Targets: the warm path is CPU).

    Given orjson's bytes (`plain_json_bytes`) the text is never decoded:
    orjson writes no raw control character, so escaping it as a JSON string
    only needs its backslashes and quotes escaped.
    """

    __slots__ = ("_text", "_body", "keys", "meta")

    def __init__(self, text: str | bytes) -> None:
        self._text = text if isinstance(text, str) else None
        self._body = text if isinstance(text, bytes) else None
        self.keys: frozenset[str] = frozenset()
        self.meta: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        """The JSON text of the structured output."""
        if self._text is None:
            assert self._body is not None
            self._text = self._body.decode("utf-8")
        return self._text

    def message(self, request_id: RequestId) -> bytes:
        """The whole JSON-RPC response, as `mailmcp.mcp._jsonrpc.encode` would write it."""
        try:
            if self._body is not None:
                body = self._body
                escaped = b'"' + body.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            else:
                body = self.text.encode("utf-8")
                escaped = orjson.dumps(self.text)
            ident = orjson.dumps(request_id)
            meta = orjson.dumps(self.meta) if self.meta is not None else None
        except (UnicodeEncodeError, TypeError):
            # A lone surrogate from a broken header (or what else orjson
            # refuses): escape, as `encode` does.
            text = json.dumps(json.loads(self.text), ensure_ascii=True)
            return self._assemble(request_id, text).encode("ascii")
        parts = [
            b'{"jsonrpc":"2.0","id":',
            ident,
            b',"result":{"content":[{"type":"text","text":',
            escaped,
            b"}]",
        ]
        if "structuredContent" in self.keys:
            parts += [b',"structuredContent":', body]
        if "isError" in self.keys:
            parts.append(b',"isError":false')
        if "resultType" in self.keys:
            parts.append(b',"resultType":"complete"')
        if meta is not None:
            parts += [b',"_meta":', meta]
        parts.append(b"}}")
        return b"".join(parts)

    def _assemble(self, request_id: RequestId, text: str) -> str:
        """The response as ASCII-only text (everything else \\u-escaped)."""
        parts = [
            '{"jsonrpc":"2.0","id":',
            json.dumps(request_id),
            ',"result":{"content":[{"type":"text","text":',
            json.dumps(text),
            "}]",
        ]
        if "structuredContent" in self.keys:
            parts += [',"structuredContent":', text]
        if "isError" in self.keys:
            parts.append(',"isError":false')
        if "resultType" in self.keys:
            parts.append(',"resultType":"complete"')
        if self.meta is not None:
            parts += [',"_meta":', json.dumps(self.meta, separators=(",", ":"))]
        parts.append("}}")
        return "".join(parts)


#: What running a tool gives: its output as text, an ``isError`` result, or a refusal.
ToolResult = ToolText | dict[str, Any] | InsufficientScope


def plain_json_bytes(data: dict[str, Any]) -> bytes | str:
    """
    `plain_json`, left as orjson's UTF-8 bytes when orjson takes the data
    (what `ToolText` writes without decoding), else the standard library's text.
    """
    try:
        return orjson.dumps(data)
    except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
        return json.dumps(data, ensure_ascii=False)


def plain_json(data: dict[str, Any]) -> str:
    """
    The JSON text of a tool's plain output, encoded once by orjson: compact,
    non-ASCII kept as UTF-8 (as ``ensure_ascii=False``).  What orjson
    refuses (a lone surrogate from a broken header, an integer past 64
    bits) goes through the standard library, and `ToolText` escapes it.
    """
    try:
        text: str = orjson.dumps(data).decode("utf-8")
        return text
    except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
        return json.dumps(data, ensure_ascii=False)


def error_result(message: str) -> dict[str, Any]:
    """An ``isError`` tool result the model reads: the message, nothing else."""
    return {"content": [{"type": "text", "text": message}], "isError": True}


def describe_validation_error(tool_name: str, error: ValidationError) -> str:
    """
    A readable one-line account of why arguments were refused, naming the
    fields but never echoing their values.
    """
    problems = []
    for item in error.errors(include_url=False, include_input=False, include_context=False)[:10]:
        location = ".".join(str(part) for part in item["loc"]) or "arguments"
        problems.append(f"{location}: {item['msg']}")
    more = error.error_count() - len(problems)
    if more > 0:
        problems.append(f"and {more} more")
    return f"Invalid arguments for tool {tool_name!r}: " + "; ".join(problems)


def params_message(method: str, error: ValidationError) -> str:
    """Why a request's ``params`` were refused, by field, without their values."""
    problems = []
    for item in error.errors(include_url=False, include_input=False, include_context=False)[:5]:
        location = ".".join(str(part) for part in item["loc"] if part not in ("jsonrpc", "id"))
        problems.append(f"{location or 'params'}: {item['msg']}")
    return f"Invalid params for {method[:64]}: " + "; ".join(problems)
