"""
In-memory stand-ins for mailmcp's replaceable parts, for tests of code that
uses them (and for anyone embedding mailmcp who wants to test their own
tools), as `twisted.internet.testing` is for Twisted.  Each fake implements
the same interface as the real part; contract suites in the test tree run
the same cases against the IMAP fake and Dovecot, and against the memory
grant store, SQLite and Redis:

  - `FakeIMAPServer`, `FakeIMAPPool`, `FakeIMAPSession`: an in-memory
    mailbox behind the IMAP session contract (`mailmcp.mail._mailbox_api`);
  - `MemoryGrantStore`: the grant, client and send-intent store;
  - `MemoryAttachmentStore`: the attachment store, with the local store's
    links, checks and errors;
  - `FakeLoginChecker`: an `ILoginChecker` over a dict of passwords;
  - `FakeTokenVerifier`: an `IAccessTokenVerifier` over a dict of tokens;
  - `tool_services`: a complete `ToolServices` for tool handlers, with
    fakes for every part a test does not give;
  - `make_account`, `make_config`, `echo_tool`: a plausible account, a
    valid configuration and a demo tool.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._account import MailAccount
from .._audit import Audit
from .._config import Config
from .._toolkit import MailSender, Tool, ToolContext, ToolError, ToolServices
from ..attachments._common import Limits
from ..attachments._helpers import StoredPartIndex
from ..interfaces import IAccessTokenVerifier, IAttachmentStore, ISendBudget
from ..mail._mailbox_api import IMAPPoolAPI
from ..mail._sendintent import SendIntents
from ..oauth._clients import MailServer
from ..oauth._keyring import KeyRing, new_master_key
from ..oauth._tokens import InvalidToken
from ._attachments import MemoryAttachmentStore
from ._grants import MemoryGrantStore
from ._imap import FakeIMAPPool, FakeIMAPServer, FakeIMAPSession, FakeMailbox, FakeMessage
from ._mailcheck import FakeLoginChecker


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


def make_config(**overrides: Any) -> Config:
    """
    A `Config` for tests of the parts that take one (`MCPApp`, the OAuth
    app, the attachment builder): loopback listener, a fixed HTTPS base URL,
    a state directory under the system's temporary directory (not created
    here), a fresh key ring; C{overrides} replace any field.
    """
    state_dir = Path(tempfile.gettempdir()) / "mailmcp-testing"
    values: dict[str, Any] = {
        "listen": ("tcp:0:interface=127.0.0.1",),
        "base_url": "https://mail.example.test",
        "state_dir": state_dir,
        "store": f"sqlite:{state_dir / 'grants.sqlite3'}",
        "attachments": "local",
        "mail_ca_file": None,
        "keyring": KeyRing([new_master_key()]),
    }
    values.update(overrides)
    return Config(**values)


def tool_services(
    *,
    reactor: IReactorTime | None = None,
    imap: IMAPPoolAPI | None = None,
    smtp: MailSender | None = None,
    attachments: IAttachmentStore | None = None,
    limits: Limits | None = None,
    attachment_index: StoredPartIndex | None = None,
    send_limiter: ISendBudget | None = None,
    send_intents: SendIntents | None = None,
    audit: Audit | None = None,
    send_allow_domains: tuple[str, ...] = (),
    trusted_authserv_id: str | None = None,
    cpu_pool: ThreadPool | None = None,
) -> ToolServices:
    """
    A complete `ToolServices` for tests: the parts given, and for the rest a
    `Clock`, an empty `FakeIMAPServer`, and no sender, store, budget,
    intents, audit or part index (as a daemon with those off).  The
    attachment caps are the store's when a store is given, else C{limits},
    else the defaults.
    """
    if limits is None:
        limits = attachments.limits if attachments is not None else Limits()
    return ToolServices(
        reactor=reactor if reactor is not None else Clock(),
        imap=imap if imap is not None else FakeIMAPPool(FakeIMAPServer()),
        smtp=smtp,
        attachments=attachments,
        limits=limits,
        attachment_index=attachment_index,
        send_limiter=send_limiter,
        send_intents=send_intents,
        audit=audit,
        send_allow_domains=send_allow_domains,
        trusted_authserv_id=trusted_authserv_id,
        cpu_pool=cpu_pool,
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
    "make_config",
    "tool_services",
    "make_account",
    "MemoryAttachmentStore",
    "MemoryGrantStore",
    "FakeLoginChecker",
]
