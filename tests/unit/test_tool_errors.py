"""
One translation of IMAP failures into tool errors (`mailmcp._toolkit.imap_tool_error`):
the reading, writing and attachment tools say the same thing for the same failure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.task import Clock

from mailmcp._toolkit import ToolContext, ToolError, imap_tool_error
from mailmcp.mail._mailbox_api import IMAPAuthError, IMAPError, IMAPNoSuchMailbox
from mailmcp.testing import make_account, tool_services
from mailmcp.tools._attachments import GET_MAIL_ATTACHMENT_LINK, AttachmentLinkInput
from mailmcp.tools._reading import GetMessageInput, get_mail_message
from mailmcp.tools._writing import DELETE_MAIL_MESSAGE, DeleteInput
from tests.helpers import run


class FailingPool:
    """An IMAP pool whose every operation fails with C{error}, as the real pool raises it."""

    def __init__(self, error: IMAPError) -> None:
        self.error = error

    async def run(self, account: Any, operation: Callable[..., Any], read_only: bool = True) -> Any:
        raise self.error


def context(error: IMAPError) -> ToolContext:
    services = tool_services(reactor=Clock(), imap=FailingPool(error))
    return ToolContext(account=make_account(), services=services)


def calls(error: IMAPError) -> dict[str, Any]:
    ctx = context(error)
    return {
        "read": lambda: get_mail_message(ctx, GetMessageInput(folder="Work", uid=1)),
        "write": lambda: DELETE_MAIL_MESSAGE.handler(ctx, DeleteInput(folder="Work", uid=1)),
        "attachment": lambda: GET_MAIL_ATTACHMENT_LINK.handler(
            ctx, AttachmentLinkInput(folder="Work", uid=1, part="2")
        ),
    }


def message(call: Callable[[], Any]) -> str:
    with pytest.raises(ToolError) as info:
        run(call())
    return info.value.message


@pytest.mark.parametrize("kind", ["read", "write", "attachment"])
def test_refused_stored_login_says_reconnect(kind: str) -> None:
    """A refused stored login reads the same from every tool family: reconnect the account."""
    text = message(calls(IMAPAuthError("AUTHENTICATIONFAILED"))[kind])
    assert text == imap_tool_error(IMAPAuthError("AUTHENTICATIONFAILED")).message
    assert "Reconnect the mail account" in text and "AUTHENTICATIONFAILED" in text


@pytest.mark.parametrize("kind", ["read", "write", "attachment"])
def test_missing_folder_points_at_list_mailboxes(kind: str) -> None:
    """A missing folder points at list_mailboxes from every tool family (TL-F2)."""
    text = message(calls(IMAPNoSuchMailbox("Mailbox doesn't exist: Work"))[kind])
    assert "Call list_mailboxes" in text
    # The writing tools' helper is not told the folder; the others name it.
    assert ("no folder 'Work'" in text) == (kind != "write")


@pytest.mark.parametrize("kind", ["read", "write", "attachment"])
def test_other_failures_quote_the_server(kind: str) -> None:
    """Any other IMAP failure quotes the server's reason after one fixed prefix."""
    text = message(calls(IMAPError("BAD command unknown"))[kind])
    assert text == "The mail server reported an error: BAD command unknown"
