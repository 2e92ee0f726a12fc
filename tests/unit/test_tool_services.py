"""
`ToolServices`, the record every tool handler gets: the daemon builds it
complete from its options, tests build it with `mailmcp.testing.tool_services`,
and nobody changes it afterwards.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from mailmcp._audit import Audit, build_audit
from mailmcp._service import build_tool_services
from mailmcp._toolkit import ToolServices
from mailmcp.attachments import LocalAttachmentStore
from mailmcp.attachments._common import Limits
from mailmcp.attachments._helpers import StoredPartIndex
from mailmcp.interfaces import ISendBudget
from mailmcp.mail._sendintent import SendIntents
from mailmcp.mail._smtp import SMTPSender
from mailmcp.mail.imap import IMAPPool
from mailmcp.store._sqlite import SQLiteGrantStore
from mailmcp.tap import Options
from mailmcp.testing import FakeIMAPPool, MemoryAttachmentStore, tool_services


def daemon_services(tmp_path: Path, *argv: str) -> tuple[ToolServices, MultiService]:
    """
    The ToolServices the daemon builds for these options, beside the grant
    store its OAuth part adds first (nothing listens or starts).
    """
    options = Options(environ={})
    options.parseOptions(["--state-dir", str(tmp_path / "state"), *argv])
    config, reactor = options.config, MemoryReactorClock()
    parent = MultiService()
    store = SQLiteGrantStore(tmp_path / "grants.sqlite3", reactor)
    store.setName("grant-store")
    store.setServiceParent(parent)
    audit = build_audit(config.audit_log, reactor, parent)
    services, routes = build_tool_services(config, reactor, parent, audit)
    assert [prefix for prefix, _ in routes] == ["/attachments/"]
    return services, parent


def test_the_daemon_builds_every_part_from_its_options(tmp_path: Path) -> None:
    """Every part is there, of its real type, with the operator's caps and policy; the pool is a child service."""
    services, parent = daemon_services(
        tmp_path,
        "--attachment-max-bytes", "1000",
        "--attachments-max-message-bytes", "5000",
        "--send-allow-domains", "example.test .partner.test",
        "--trusted-authserv-id", "MX.Example.Test",
        "--audit-log", str(tmp_path / "audit.log"),
    )  # fmt: skip
    assert isinstance(services.imap, IMAPPool)
    assert parent.getServiceNamed("imap-pool") is services.imap
    assert isinstance(services.smtp, SMTPSender)
    assert isinstance(services.attachments, LocalAttachmentStore)
    assert services.limits == services.attachments.limits
    assert (services.limits.max_attachment_bytes, services.limits.max_message_bytes) == (1000, 5000)
    assert isinstance(services.attachment_index, StoredPartIndex)
    assert ISendBudget.providedBy(services.send_limiter)
    # A grant store that records intents (SQLite) claims keyed sends for every daemon sharing it.
    assert isinstance(services.send_intents, SendIntents)
    assert isinstance(services.audit, Audit)
    assert services.send_allow_domains == ("example.test", ".partner.test")
    assert services.trusted_authserv_id == "mx.example.test"


def test_what_the_operator_left_out_is_an_explicit_none(tmp_path: Path) -> None:
    """Without --audit-log there is no audit trail and no allow-list; the other parts are still there."""
    services, _ = daemon_services(tmp_path)
    assert services.audit is None
    assert services.send_allow_domains == () and services.trusted_authserv_id is None
    assert services.smtp is not None and services.attachments is not None


def test_the_record_is_frozen() -> None:
    """A handler cannot swap a part for everyone else."""
    services = tool_services()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        services.smtp = None  # type: ignore[misc]


def test_the_testing_builder_fills_what_a_test_leaves_out() -> None:
    """A clock, an empty fake mailbox, the default caps; sending, attachments, budget, intents and audit off."""
    services = tool_services()
    assert isinstance(services.reactor, Clock)
    assert isinstance(services.imap, FakeIMAPPool) and services.imap.server.mailboxes == {}
    assert services.limits == Limits()
    assert (services.smtp, services.attachments, services.attachment_index, services.send_limiter,
            services.send_intents, services.audit, services.cpu_pool) == (None,) * 7
    assert services.send_allow_domains == () and services.trusted_authserv_id is None


def test_the_testing_builder_takes_the_stores_caps() -> None:
    """Given an attachment store, the caps are the store's own, as in the daemon; explicit caps win."""
    store = MemoryAttachmentStore(limits=Limits(max_attachment_bytes=10, max_message_bytes=20))
    assert tool_services(attachments=store).limits == store.limits
    mine = Limits(max_attachment_bytes=1, max_message_bytes=2)
    assert tool_services(attachments=store, limits=mine).limits == mine
