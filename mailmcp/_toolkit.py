"""
Tools as small declarative units.

A `Tool` is a name, a title, a description, a pydantic input model (its JSON
schema is the tool's ``inputSchema``), an output model (``outputSchema``),
honest annotations, and one ``async`` handler taking a `ToolContext` and the
validated input.  A handler reports a failure the user can act on by raising
`ToolError`; the MCP layer turns it into an ``isError`` result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import attrs
from pydantic import BaseModel

from ._account import MailAccount

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class ToolError(Exception):
    """
    A tool failed in a way the caller can understand and act on.  The message
    is shown to the model verbatim, so it must never contain secrets.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen
class ToolContext:
    """Everything a tool handler gets besides its input."""

    account: MailAccount
    services: Any  # provides IToolServices


@attrs.frozen
class Tool(Generic[In, Out]):
    name: str
    title: str
    description: str
    input_model: type[In]
    output_model: type[Out]
    handler: Callable[[ToolContext, In], Awaitable[Out]]
    read_only: bool
    destructive: bool
    idempotent: bool
    open_world: bool = False

    def annotations(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "readOnlyHint": self.read_only,
            "destructiveHint": self.destructive,
            "idempotentHint": self.idempotent,
            "openWorldHint": self.open_world,
        }


@attrs.define
class ToolServices:
    """
    The shared, long-lived parts tool handlers use, built once by
    ``mailmcp._service``: the reactor (clock), the daemon's config, the IMAP
    pool (`mailmcp._mailbox_api.IMAPPoolAPI`), the SMTP sender, the
    per-account send budget (`mailmcp.interfaces.ISendBudget`, in
    `mailmcp._sendrate`; None: no limit) and the attachment store.  Tests
    build one with their own parts.
    """

    reactor: Any
    config: Any
    imap: Any = None
    smtp: Any = None
    attachments: Any = None
    attachment_index: Any = None
    send_limiter: Any = None
    #: `mailmcp._sendintent.SendIntents` (SM-13): the store-backed claim of
    #: a keyed send; None: the SMTP sender's in-process claim.
    send_intents: Any = None
