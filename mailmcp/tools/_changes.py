"""
``get_mailbox_changes``: what arrived, changed flags or vanished in a folder
since an earlier ``state`` (see `mailmcp.tools._state`).

Three ways to answer, best first:

``qresync``
    The server has QRESYNC (RFC 7162) and the state carries a
    HIGHESTMODSEQ: ``UID FETCH 1:<old uidnext-1> (UID FLAGS) (CHANGEDSINCE m
    VANISHED)`` names exactly the changed and the expunged UIDs, whatever the
    folder's size.  QRESYNC is enabled on the pooled connection the first time
    (``ENABLE`` leaves the open folder first).  It changes how that connection
    reports expunges for good (``VANISHED`` instead of ``EXPUNGE``); the
    session counts both, so the other tools see the same message count on it.
``snapshot``
    Otherwise, for folders of at most `SNAPSHOT_MAX` messages, the state holds
    every UID with its flags and one ``UID FETCH 1:* (UID FLAGS)`` is compared
    with it.
``partial``
    A bigger folder on such a server: new messages are found (``UID SEARCH
    UID <uidnext>:*``), the number of vanished messages is counted, and the
    answer says plainly that it cannot tell which flags changed.

New messages are always those with a UID at or above the old UIDNEXT.  A
changed UIDVALIDITY voids every UID: the answer says so and names none.
Changes may be reported twice (a state can be a little older than the
listing it came with), never missed.
"""

from __future__ import annotations

import heapq
from typing import Annotated, Any, Literal, Protocol, cast

from pydantic import Field

from .._scopes import READ
from .._toolkit import Tool, ToolContext, ToolError
from ..mail._mailbox_api import IMAPSession, MailboxState
from ._reading import Folder, MessageSummary, _In, _Out, _run, fetch_summaries, summarise, uid_set
from ._state import (
    MAX_STATE_CHARS,
    SNAPSHOT_MAX,
    StateError,
    current_state,
    decode,
    normal_flags,
)


class QresyncSession(IMAPSession, Protocol):
    """The reads `mailmcp.mail.imap._session.Session` adds to `IMAPSession` for this tool."""

    async def enable_qresync(self) -> None: ...

    async def reopen(self, mailbox: str) -> MailboxState: ...

    async def uid_fetch_changed(
        self, uid_range: tuple[int, int], modseq: int
    ) -> tuple[dict[int, tuple[str, ...]], list[int]]: ...


MAX_CHANGED = 1000
MAX_VANISHED = 10_000


class ChangedFlags(_Out):
    uid: int
    flags: list[str] = Field(description="The message's flags now.")


class MailboxChangesOutput(_Out):
    folder: str
    uidvalidity: int
    uidvalidity_changed: bool = Field(
        description="True when the folder was renumbered since `since`: every UID from then is "
        "void, none are listed; list the folder again."
    )
    method: Literal["qresync", "snapshot", "partial", "renumbered"] = Field(
        description="How the changes were found: qresync (exact, server-side), snapshot (exact, "
        "by comparison), partial (new messages only; see complete)."
    )
    complete: bool = Field(
        description="False when the server cannot say cheaply which flags changed or which "
        "messages vanished; `warnings` says what is missing."
    )
    new: list[MessageSummary] = Field(description="Messages that arrived since, newest first.")
    new_total: int = Field(description="How many messages arrived since.")
    new_truncated: bool = Field(description="True when more arrived than `limit`.")
    changed: list[ChangedFlags] = Field(
        description="Messages from before whose flags changed, with their flags now."
    )
    changed_truncated: bool
    vanished: list[int] = Field(description="UIDs from before that are gone (deleted or moved).")
    vanished_truncated: bool
    state: str = Field(description="Pass as `since` next time.")
    warnings: list[str] = Field(default_factory=list)


class MailboxChangesInput(_In):
    folder: Folder = "INBOX"
    since: Annotated[str, Field(min_length=1, max_length=MAX_STATE_CHARS)] = Field(
        description="The `state` an earlier list_mail_messages or get_mailbox_changes call "
        "returned for this folder."
    )
    limit: int = Field(
        default=50,
        strict=True,
        ge=1,
        le=200,
        description="Summaries of at most this many new messages (the newest).",
    )


async def get_mailbox_changes(
    ctx: ToolContext, arguments: MailboxChangesInput
) -> MailboxChangesOutput:
    folder, limit = arguments.folder, arguments.limit
    try:
        old = decode(arguments.since, folder)
    except StateError as e:
        raise ToolError(str(e)) from None

    async def operation(session: IMAPSession) -> MailboxChangesOutput:
        use_qresync = old.highest_modseq is not None and "QRESYNC" in session.capabilities
        if use_qresync:
            await cast(QresyncSession, session).enable_qresync()
        # A fresh EXAMINE, not the pool's cached selection: a folder deleted
        # and re-created by another client keeps its old UIDVALIDITY on a
        # connection that had it open (Dovecot says nothing on NOOP).
        mailbox = await cast(QresyncSession, session).reopen(folder)
        if mailbox.uidvalidity != old.uidvalidity:
            now = await current_state(session, folder, mailbox)
            return MailboxChangesOutput(
                folder=folder, uidvalidity=mailbox.uidvalidity, uidvalidity_changed=True,
                method="renumbered", complete=True, new=[], new_total=0, new_truncated=False,
                changed=[], changed_truncated=False, vanished=[], vanished_truncated=False,
                state=now.encode(),
                warnings=[
                    f"folder {folder!r} was renumbered (uidvalidity {old.uidvalidity} → "
                    f"{mailbox.uidvalidity}): earlier UIDs are void; list it again"
                ],
            )  # fmt: skip
        warnings: list[str] = []
        complete = True
        changed: dict[int, tuple[str, ...]] = {}
        vanished: list[int] = []
        new_uids: list[int]
        if use_qresync:
            method: Literal["qresync", "snapshot", "partial"] = "qresync"
            if old.uidnext > 1:
                assert old.highest_modseq is not None
                changed, vanished = await cast(QresyncSession, session).uid_fetch_changed(
                    (1, min(old.uidnext - 1, 2**32 - 1)), old.highest_modseq
                )
            new_uids = await _uids_from(session, old.uidnext)
            now = await current_state(session, folder, mailbox)
        elif old.flags is not None and mailbox.exists <= SNAPSHOT_MAX:
            method = "snapshot"
            now = await current_state(session, folder, mailbox)
            if now.flags is None:  # the server has QRESYNC; the old state came without it
                current = await _current_flags(session, mailbox)
            else:
                current = dict(now.flags)
            new_uids = sorted(uid for uid in current if uid >= old.uidnext)
            vanished = sorted(set(old.flags) - set(current))
            changed = {
                uid: tuple(sorted(flags))
                for uid, flags in current.items()
                if uid in old.flags and flags != old.flags[uid]
            }
        else:
            method = "partial"
            complete = False
            present = await session.uid_search([b"UID", b"1:%d" % max(1, old.uidnext - 1)])
            present = [u for u in present if u < old.uidnext]
            if old.flags is not None:
                vanished = sorted(set(old.flags) - set(present))
            elif len(present) < old.count:
                warnings.append(
                    f"{old.count - len(present)} message(s) from before are gone; this server "
                    "cannot say which without listing the folder again"
                )
            warnings.append(
                "this mail server cannot report changed flags cheaply for a folder this size "
                f"(over {SNAPSHOT_MAX} messages without QRESYNC); `changed` is empty"
            )
            new_uids = await _uids_from(session, old.uidnext)
            now = await current_state(session, folder, mailbox, top_uid=max(new_uids, default=None))
        chosen = sorted(set(heapq.nlargest(limit, new_uids)), reverse=True)
        summaries: list[MessageSummary] = []
        if chosen:
            results, fetch_warnings = await fetch_summaries(session, uid_set(chosen), uid=True)
            warnings += fetch_warnings
            wanted = set(chosen)
            summaries = [
                summarise(m)
                for m in sorted(results, key=lambda m: m.uid, reverse=True)
                if m.uid in wanted
            ]
        changed_list = [ChangedFlags(uid=u, flags=list(changed[u])) for u in sorted(changed)]
        return MailboxChangesOutput(
            folder=folder,
            uidvalidity=mailbox.uidvalidity,
            uidvalidity_changed=False,
            method=method,
            complete=complete,
            new=summaries,
            new_total=len(new_uids),
            new_truncated=len(new_uids) > len(chosen),
            changed=changed_list[:MAX_CHANGED],
            changed_truncated=len(changed_list) > MAX_CHANGED,
            vanished=vanished[:MAX_VANISHED],
            vanished_truncated=len(vanished) > MAX_VANISHED,
            state=now.encode(),
            warnings=warnings,
        )

    result: MailboxChangesOutput = await _run(ctx, folder, operation)
    return result


async def _uids_from(session: IMAPSession, uidnext: int) -> list[int]:
    """UIDs at or above C{uidnext} (``n:*`` also matches the last message, so filter)."""
    if uidnext > 2**32 - 1:
        return []
    found = await session.uid_search([b"UID", b"%d:*" % uidnext])
    return [uid for uid in found if uid >= uidnext]


async def _current_flags(session: IMAPSession, mailbox: MailboxState) -> dict[int, frozenset[str]]:
    if not mailbox.exists:
        return {}
    return {
        m.uid: normal_flags(m.flags or ())
        for m in await session.fetch("1:*", "(UID FLAGS)", uid=True)
    }


TOOLS: list[Tool[Any, Any]] = [
    Tool(
        name="get_mailbox_changes",
        title="What changed in a folder",
        description=(
            "What happened in a folder since an earlier `state` (from list_mail_messages or a "
            "previous call): the messages that arrived (summaries, newest first), messages "
            "whose flags changed (read, flagged …) and the UIDs that vanished, plus a new "
            "`state` for next time. Cheaper than listing the folder again. If the folder was "
            "renumbered, says so (uidvalidity_changed) and names no UIDs."
        ),
        input_model=MailboxChangesInput,
        output_model=MailboxChangesOutput,
        handler=get_mailbox_changes,
        scopes=frozenset({READ}),
        read_only=True,
        destructive=False,
        idempotent=True,
        open_world=True,
    ),
]
