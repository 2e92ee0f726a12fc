"""
The conversation and changes tools against the scripted IMAP server
(`tests.hostile.scripted_imap`, a real Twisted protocol on 127.0.0.1 that
offers neither THREAD nor CONDSTORE nor QRESYNC): the tools take their
fallbacks and never send a command the server did not advertise; a server
that stalls is a clean, bounded error.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from mailmcp._tls import MailTLS
from mailmcp._toolkit import ToolContext, ToolError
from mailmcp.mail.imap import IMAPPool
from mailmcp.testing import tool_services
from mailmcp.tools import _state
from mailmcp.tools._changes import MailboxChangesInput, get_mailbox_changes
from mailmcp.tools._reading import ListMessagesInput, list_mail_messages
from mailmcp.tools._threads import ThreadInput, get_mail_thread
from tests.harness import Services
from tests.hostile.imap_accounts import scripted_account
from tests.hostile.scripted_imap import listen

pytestmark = pytest.mark.integration


@pytest.fixture
def scripted(services: Services) -> Iterator[Any]:
    made: dict[str, Any] = {}

    async def start(behaviour: str) -> tuple[Any, ToolContext]:
        factory, port = await listen(reactor, behaviour)
        pool = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=1.0, wait_timeout=5)
        made.update(factory=factory, port=port, pool=pool)
        ctx = ToolContext(account=scripted_account(port.getHost().port),
                          services=tool_services(reactor=reactor, imap=pool))
        return factory, ctx

    yield start
    if made:
        pytest_twisted.blockon(made["pool"].stopService())
        made["factory"].close_all()
        pytest_twisted.blockon(made["port"].stopListening())


@pytest_twisted.ensureDeferred
async def test_fallbacks_on_a_server_without_thread_condstore_qresync(scripted: Any) -> None:
    factory, ctx = await scripted("normal")
    listing = await list_mail_messages(ctx, ListMessagesInput())
    assert [m.uid for m in listing.messages] == [1]
    changes = await get_mailbox_changes(ctx, MailboxChangesInput(since=listing.state))
    assert changes.method == "snapshot" and changes.complete
    assert (changes.new, changes.changed, changes.vanished) == ([], [], [])
    thread = await get_mail_thread(ctx, ThreadInput(uid=1))
    assert thread.threaded_by == "headers" and [e.uid for e in thread.messages] == [1]
    sent = b"\n".join(factory.lines).upper()
    for word in (b"THREAD", b"ENABLE", b"CHANGEDSINCE", b"VANISHED", b"CONDSTORE", b"QRESYNC"):
        assert word not in sent, word


@pytest_twisted.ensureDeferred
async def test_a_stalling_server_is_a_clean_error(scripted: Any) -> None:
    """IM-02 for the new tools: a clear error within the command timeout, no hang."""
    _factory, ctx = await scripted("stall")
    state = _state.FolderState(_state.folder_digest("INBOX"), 7, 2, 1, None, {1: frozenset()}).encode()
    for call in (get_mail_thread(ctx, ThreadInput(uid=1)),
                 get_mailbox_changes(ctx, MailboxChangesInput(since=state))):
        with pytest.raises(ToolError, match="did not answer (LIST|EXAMINE) within 1 s"):
            await call
