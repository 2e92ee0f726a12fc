"""
JSON-RPC 2.0 framing for ``/mcp``: a strict JSON decoder, the envelope
checks, and error values that carry their own HTTP status.

The decoder is stricter than `json.loads` on purpose: the body comes from the
network, so ``NaN``, duplicate keys (two readers could disagree about which
one counts), lone surrogates (they blow up later when re-encoded as UTF-8)
and absurd nesting are refused here, as a parse error, before anything looks
at the message.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from collections.abc import Callable
from typing import Any

from mcp_types.jsonrpc import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
)

#: Deepest nesting of arrays and objects a body may have.
MAX_DEPTH = 64
#: Most objects, arrays, strings and numbers a body may hold.  A request
#: never needs more, and a body of tiny values costs far more than its size
#: suggests: a 4 MiB body of small objects took a second to decode, about
#: ten times its size in memory, and tens of milliseconds to free -- with the
#: interpreter lock held, whichever thread does it.
MAX_VALUES = 100_000
#: Longest string request id accepted (JSON-RPC sets no limit; we echo it back).
MAX_ID_LENGTH = 256
#: Longest method name accepted.
MAX_METHOD_LENGTH = 128

#: HTTP status for a JSON-RPC error code on the 2026-07-28 wire (and for the
#: transport-level failures of every era).  Unlisted codes go with 200.
ERROR_CODE_HTTP_STATUS: dict[int, int] = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    -32021: 400,  # MISSING_REQUIRED_CLIENT_CAPABILITY
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}

RequestId = int | str


class RPCError(Exception):
    """
    A JSON-RPC error to send back.

    :param status: the HTTP status to answer with; L{None} lets the caller
        decide by era (see `ERROR_CODE_HTTP_STATUS`).
    """

    def __init__(
        self, code: int, message: str, data: Any = None, *, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.status = status


def error_message(
    request_id: RequestId | None, code: int, message: str, data: Any = None
) -> dict[str, Any]:
    """A JSON-RPC error response object (``id`` is kept even when null)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def result_message(request_id: RequestId, result: dict[str, Any]) -> dict[str, Any]:
    """A JSON-RPC success response object."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def encode(message: Any) -> bytes:
    """
    Compact UTF-8 JSON.  Text that cannot be UTF-8 (a lone surrogate that
    came out of a broken mail header) is escaped instead of failing.
    """
    try:
        return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_tree(value: Any) -> None:
    """Depth and text checks over a decoded value, without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                raise RPCError(
                    PARSE_ERROR,
                    "Parse error: invalid text (lone surrogate in a string)",
                    status=400,
                )
        elif isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise RPCError(
                    PARSE_ERROR, f"Parse error: nested deeper than {MAX_DEPTH} levels", status=400
                )
            if isinstance(node, dict):
                for key, child in node.items():
                    if _has_surrogate(key):
                        raise RPCError(
                            PARSE_ERROR,
                            "Parse error: invalid text (lone surrogate in a key)",
                            status=400,
                        )
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in node)


_TOO_MANY = (
    f"Parse error: the body holds more than {MAX_VALUES} values (objects, arrays, strings "
    "and numbers); no request needs that many"
)


def _containers_and_strings(body: bytes) -> int:
    """
    An upper bound on the objects, arrays and strings in C{body}, counted
    over the bytes (at C speed, nothing built): every one starts with
    ``{``, ``[`` or an unescaped ``"``.  Brackets inside strings count too,
    which only makes the bound looser.
    """
    quotes = body.count(b'"') - body.count(b'\\"')
    return body.count(b"{") + body.count(b"[") + quotes // 2


def decode_body(body: bytes) -> Any:
    """
    Decode a request body as strict JSON.

    :raises RPCError: ``-32700`` (HTTP 400) for anything that is not one
        well-formed, UTF-8, reasonably nested JSON value.
    """
    hooks: dict[str, Any] = {}
    if len(body) > MAX_VALUES:
        # Only a body this long can hold too many values; count them before
        # building anything.
        if _containers_and_strings(body) > MAX_VALUES:
            raise RPCError(PARSE_ERROR, _TOO_MANY, status=400)
        numbers = itertools.count(1)

        def counted(kind: Callable[[str], Any]) -> Callable[[str], Any]:
            def parse(literal: str) -> Any:
                if next(numbers) > MAX_VALUES:
                    raise ValueError(f"more than {MAX_VALUES} numbers")
                return kind(literal)

            return parse

        hooks = {"parse_int": counted(int), "parse_float": counted(float)}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RPCError(PARSE_ERROR, "Parse error: the body is not UTF-8", status=400) from None
    try:
        value = json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates, **hooks
        )
    except RecursionError:
        raise RPCError(
            PARSE_ERROR, f"Parse error: nested deeper than {MAX_DEPTH} levels", status=400
        ) from None
    except ValueError as e:
        # Includes JSONDecodeError, over-long integer literals, our hooks.
        reason = str(e).split("\n", 1)[0][:200]
        raise RPCError(PARSE_ERROR, f"Parse error: {reason}", status=400) from None
    _check_tree(value)
    return value


def valid_id(value: Any) -> bool:
    """A request id we accept: an integer (not a bool) or a short string."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH


def check_envelope(message: Any) -> tuple[RequestId | None, str, dict[str, Any] | None]:
    """
    Check that a decoded body is exactly one JSON-RPC request or notification.

    :return: ``(id, method, params)``; ``id`` is L{None} for a notification.
    :raises RPCError: ``-32600`` (HTTP 400) for batches, responses and
        malformed envelopes.
    """
    if isinstance(message, list):
        raise RPCError(INVALID_REQUEST, "Invalid Request: batches are not supported", status=400)
    if not isinstance(message, dict):
        raise RPCError(
            INVALID_REQUEST, "Invalid Request: the body must be a JSON-RPC object", status=400
        )
    if message.get("jsonrpc") != "2.0":
        raise RPCError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', status=400)
    if "method" not in message:
        raise RPCError(
            INVALID_REQUEST,
            "Invalid Request: only requests and notifications are accepted",
            status=400,
        )
    method = message["method"]
    if not isinstance(method, str) or not method or len(method) > MAX_METHOD_LENGTH:
        raise RPCError(
            INVALID_REQUEST, 'Invalid Request: "method" must be a short string', status=400
        )
    params = message.get("params")
    if params is not None and not isinstance(params, dict):
        raise RPCError(INVALID_REQUEST, 'Invalid Request: "params" must be an object', status=400)
    if "id" not in message:
        return None, method, params
    request_id = message["id"]
    if not valid_id(request_id):
        raise RPCError(
            INVALID_REQUEST,
            f'Invalid Request: "id" must be an integer or a string of at most {MAX_ID_LENGTH} characters',
            status=400,
        )
    return request_id, method, params


_B64_SENTINEL = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")


def decode_header_value(value: str | None) -> str | None:
    """
    Decode an ``Mcp-Name``-style header value: verbatim, or the
    ``=?base64?...?=`` sentinel form.  A malformed sentinel gives L{None} so
    it never matches a body value by accident.
    """
    if value is None:
        return None
    match = _B64_SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
    except binascii.Error:
        return None
    if base64.b64encode(decoded).decode("ascii") != payload:
        return None
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        return None


__all__ = [
    "ERROR_CODE_HTTP_STATUS",
    "HEADER_MISMATCH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "RPCError",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "check_envelope",
    "decode_body",
    "decode_header_value",
    "encode",
    "error_message",
    "result_message",
]
