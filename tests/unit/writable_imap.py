"""A fake IMAP server that accepts writes (APPEND, STORE, MOVE, refusals on demand) and a fake SMTP sender, for the writing-tool unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from mailmcp.mail._mailbox_api import Appended, IMAPError, Literal
from mailmcp.mail._smtp import RecipientResult, SendResult
from mailmcp.testing import (
    FakeIMAPServer,
    FakeIMAPSession,
)


class WritableSession(FakeIMAPSession):
    """The shared fake with the write commands working, as a UIDPLUS server does them."""

    server: WritableServer

    @property
    def capabilities(self) -> frozenset[str]:
        return self.server.caps

    async def uid_store(self, uids: Sequence[int], mode: str, flags: Sequence[str], *,
                        silent: bool = True) -> dict[int, tuple[str, ...]]:
        self._log("UID STORE", tuple(uids), mode, tuple(flags))
        assert self._selected is not None and not self._read_only
        for message in self._selected.messages:
            if message.uid in uids:
                if mode == "+FLAGS":
                    message.flags |= set(flags)
                elif mode == "-FLAGS":
                    message.flags -= set(flags)
                else:
                    message.flags = set(flags)
        return {}

    async def uid_copy(self, uids: Sequence[int], mailbox: str) -> dict[int, int]:
        self._log("UID COPY", tuple(uids), mailbox)
        assert self._selected is not None
        target = self._box(mailbox)
        return {m.uid: target.add(m.raw, m.flags) for m in self._selected.messages if m.uid in uids}

    async def uid_move(self, uids: Sequence[int], mailbox: str) -> dict[int, int]:
        self._log("UID MOVE", tuple(uids), mailbox)
        assert self._selected is not None and not self._read_only
        target = self._box(mailbox)
        mapping = {m.uid: target.add(m.raw, m.flags) for m in self._selected.messages if m.uid in uids}
        for uid in mapping:
            self._selected.expunge(uid)
        return mapping

    async def uid_expunge(self, uids: Sequence[int]) -> None:
        self._log("UID EXPUNGE", tuple(uids))
        assert "UIDPLUS" in self.capabilities
        assert self._selected is not None and not self._read_only
        for message in list(self._selected.messages):
            if message.uid in uids and "\\Deleted" in message.flags:
                self._selected.expunge(message.uid)

    async def uid_search(self, criteria: Sequence[bytes | Literal]) -> list[int]:
        if list(criteria[:2]) == [b"HEADER", b"Message-ID"]:
            self._log("UID SEARCH", tuple(criteria))
            assert self._selected is not None
            wanted = criteria[2]
            assert isinstance(wanted, bytes)
            needle = wanted.strip(b'"').decode()
            return [m.uid for m in self._selected.messages
                    if (m.parsed().get("Message-ID") or "").strip() == needle]
        return await super().uid_search(criteria)

    async def append(self, mailbox: str, message: bytes, flags: Sequence[str] = (),
                     date: str | None = None) -> Appended:
        if mailbox in self.server.refuse_append:
            self._log("APPEND", mailbox)
            raise IMAPError("NO [OVERQUOTA] Quota exceeded")
        result = await super().append(mailbox, message, flags, date)
        self.server.commands[-1] = ("APPEND", mailbox, tuple(flags))
        return result


@attrs.define
class WritableServer(FakeIMAPServer):
    caps: frozenset[str] = frozenset({"IMAP4REV1", "UIDPLUS", "MOVE", "SPECIAL-USE"})
    refuse_append: set[str] = attrs.field(factory=set)

    def session(self) -> WritableSession:
        return WritableSession(self)


class FakeSender:
    """Records sends; answers with C{outcome} (a SendResult or an exception to raise)."""

    def __init__(self, outcome: Any = None) -> None:
        self.sent: list[tuple[str, tuple[str, ...], bytes]] = []
        self.outcome = outcome
        self._claimed: set[str] = set()

    def claim(self, message_id: str) -> Any:
        if message_id in self._claimed:
            return False
        self._claimed.add(message_id)
        return lambda: self._claimed.discard(message_id)

    async def send(self, account: Any, envelope_from: str, recipients: Sequence[str],
                   message: bytes) -> SendResult:
        self.sent.append((envelope_from, tuple(recipients), message))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome or SendResult(
            250, "2.0.0 Ok: queued", tuple(RecipientResult(r, 250, "2.1.5 Ok") for r in recipients)
        )


def commands(server: WritableServer, *names: str) -> list[tuple[Any, ...]]:
    return [c for c in server.commands if c[0] in names]
