"""
In-memory stand-ins for mailmcp's replaceable parts, for tests of code that
uses them (and for anyone embedding mailmcp who wants to test their own
tools).  Each fake implements the same interface as the real part.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from .._account import MailAccount
from .._clients import MailServer
from ._imap import FakeIMAPPool, FakeIMAPServer, FakeIMAPSession, FakeMailbox, FakeMessage
from ._grants import MemoryGrantStore
from ._mailcheck import FakeLoginChecker
from .._tokens import InvalidToken
from .._toolkit import Tool, ToolContext, ToolError
from ..interfaces import IAccessTokenVerifier


def make_account(
    owner: str = "grant-1",
    email: str = "alice@example.test",
    *,
    full_name: str = "Alice Example",
    imap_host: str = "127.0.0.1",
    imap_port: int = 993,
    smtp_host: str = "127.0.0.1",
    smtp_port: int = 465,
    username: str | None = None,
    password: str = "alicepw",  # noqa: S107 (a test account)
) -> MailAccount:
    """A `MailAccount` with plausible defaults, for tests."""
    user = username if username is not None else email
    return MailAccount(
        owner=owner,
        email=email,
        full_name=full_name,
        imap=MailServer(host=imap_host, port=imap_port, security="tls"),
        imap_username=user,
        imap_password=password,
        smtp=MailServer(host=smtp_host, port=smtp_port, security="tls"),
        smtp_username=user,
        smtp_password=password,
    )


@implementer(IAccessTokenVerifier)
class FakeTokenVerifier:
    """
    An `IAccessTokenVerifier` backed by a dict from token strings to
    accounts.  Unknown tokens fail with `InvalidToken`, like real ones.

    ``verified`` records every token asked about, so tests can check that a
    request was (or was not) authenticated.
    """

    def __init__(self, tokens: Mapping[str, MailAccount] | None = None) -> None:
        self.tokens: dict[str, MailAccount] = dict(tokens or {})
        self.verified: list[str] = []

    def add(self, token: str, account: MailAccount) -> None:
        self.tokens[token] = account

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)

    def verify(self, token: str) -> Deferred[MailAccount]:
        self.verified.append(token)
        account = self.tokens.get(token)
        if account is None:
            return fail(InvalidToken())
        return succeed(account)


class EchoInput(BaseModel):
    """Arguments of the demo ``echo`` tool."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The text to echo back.", max_length=10_000)
    times: int = Field(default=1, ge=1, le=10, description="How many times to repeat it.")


class EchoOutput(BaseModel):
    """Result of the demo ``echo`` tool: the text and whose token ran it."""

    text: str
    owner: str
    email: str


async def _echo(context: ToolContext, arguments: EchoInput) -> EchoOutput:
    if arguments.text == "fail":
        raise ToolError("You asked the echo tool to fail, so it did.")
    return EchoOutput(
        text=arguments.text * arguments.times,
        owner=context.account.owner,
        email=context.account.email,
    )


def echo_tool() -> Tool[EchoInput, EchoOutput]:
    """
    A demo tool that touches no mail server: it echoes its text (``"fail"``
    makes it raise `ToolError`) and says which account ran it.  For tests of
    the MCP transport and of authentication end to end.
    """
    return Tool(
        name="echo",
        title="Echo",
        description="Echo the given text back, repeated `times` times.",
        input_model=EchoInput,
        output_model=EchoOutput,
        handler=_echo,
        read_only=True,
        destructive=False,
        idempotent=True,
    )


__all__ = [
    "FakeIMAPPool",
    "FakeIMAPServer",
    "FakeIMAPSession",
    "FakeMailbox",
    "FakeMessage",
    "EchoInput",
    "EchoOutput",
    "FakeTokenVerifier",
    "echo_tool",
    "make_account",
    "MemoryGrantStore",
    "FakeLoginChecker",
]
