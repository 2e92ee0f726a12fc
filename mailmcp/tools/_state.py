"""
The opaque ``state`` of a folder that ``list_mail_messages`` and
``get_mailbox_changes`` hand out, and ``get_mailbox_changes`` takes back as
``since``.

A state records the folder's UIDVALIDITY, a UIDNEXT (every UID at or above
it is new), the message count and, where the server has QRESYNC, the
HIGHESTMODSEQ.  Servers without QRESYNC cannot say which messages vanished
or which flags changed, so for folders of at most `SNAPSHOT_MAX` messages the
state also carries a snapshot: every UID with its flags (as an index into a
table of distinct flag sets, which compresses to a few bytes per message).

It is JSON, zlib-compressed and base64url-encoded behind a version prefix.
It is not signed: it only ever describes the caller's own folder, and a
forged one can do no more than ask about UIDs the caller may read anyway.
It is validated strictly instead (size, version, types, ranges, folder).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..mail._mailbox_api import IMAPError, IMAPSession, MailboxState

#: Largest folder whose state carries a snapshot of every UID and its flags.
SNAPSHOT_MAX = 2000
#: Longest ``since`` accepted, in characters.
MAX_STATE_CHARS = 64 * 1024
#: Most bytes a ``since`` may decompress to.
MAX_STATE_JSON = 512 * 1024
PREFIX = "ms1."
UID_MAX = 2**32 - 1
MODSEQ_MAX = 2**63 - 1


class StateError(ValueError):
    """A ``since`` that is not a state this server handed out."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    v: Literal[1]
    f: str = Field(min_length=16, max_length=16, pattern=r"^[0-9a-f]{16}$")
    uv: int = Field(ge=1, le=UID_MAX)
    next: int = Field(ge=1, le=UID_MAX + 1)
    n: int = Field(ge=0, le=UID_MAX)
    ms: int | None = Field(default=None, ge=0, le=MODSEQ_MAX)
    u: list[list[int]] | None = Field(default=None, max_length=SNAPSHOT_MAX)
    fs: list[list[str]] | None = Field(default=None, max_length=SNAPSHOT_MAX)
    fi: list[int] | None = Field(default=None, max_length=SNAPSHOT_MAX)


@attrs.frozen
class FolderState:
    """A decoded state.  ``flags`` is None unless the state has a snapshot."""

    folder_digest: str
    uidvalidity: int
    uidnext: int
    count: int
    highest_modseq: int | None = None
    flags: Mapping[int, frozenset[str]] | None = None

    def encode(self) -> str:
        if self.flags is not None:
            return self._encode()
        # Without a snapshot a state is five numbers, the same on every call
        # until the folder changes: encoded once (JSON, zlib, base64).
        key = (
            self.folder_digest,
            self.uidvalidity,
            self.uidnext,
            self.count,
            self.highest_modseq,
        )
        text = _ENCODED.get(key)
        if text is None:
            text = self._encode()
            if len(_ENCODED) >= ENCODED_MAX:
                _ENCODED.clear()
            _ENCODED[key] = text
        return text

    def _encode(self) -> str:
        data: dict[str, object] = {
            "v": 1,
            "f": self.folder_digest,
            "uv": self.uidvalidity,
            "next": self.uidnext,
            "n": self.count,
        }
        if self.highest_modseq is not None:
            data["ms"] = self.highest_modseq
        if self.flags is not None:
            uids = sorted(self.flags)
            table: dict[tuple[str, ...], int] = {}
            index = []
            for uid in uids:
                key = tuple(sorted(self.flags[uid]))
                index.append(table.setdefault(key, len(table)))
            data["u"] = _ranges(uids)
            data["fs"] = [list(k) for k in table]
            data["fi"] = index
        raw = json.dumps(data, separators=(",", ":")).encode("utf-8")
        text = PREFIX + base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode("ascii").rstrip("=")
        if len(text) > MAX_STATE_CHARS and self.flags is not None:
            # Thousands of distinct, long keywords: a snapshot that would not
            # be accepted back.  Without it the next answer is "partial".
            return attrs.evolve(self, flags=None).encode()
        return text


#: Encoded states without a snapshot, by their numbers (see `FolderState.encode`).
_ENCODED: dict[tuple[str, int, int, int, int | None], str] = {}
ENCODED_MAX = 4096


@functools.lru_cache(maxsize=1024)
def folder_digest(folder: str) -> str:
    return hashlib.sha256(("mailmcp-state\0" + folder).encode("utf-8")).hexdigest()[:16]


_SYSTEM = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}


def normal_flags(flags: Sequence[str]) -> frozenset[str]:
    """Flags as two states compare them: ``\\Recent`` (per session) dropped, system flags in one case."""
    return frozenset(
        _SYSTEM.get(flag.lower(), flag) for flag in flags if flag.lower() != "\\recent"
    )


def decode(since: str, folder: str) -> FolderState:
    """
    The state in C{since}, or `StateError` with a message fit for the caller
    (never echoing the value back).
    """
    hint = "pass the `state` exactly as list_mail_messages or get_mailbox_changes returned it"
    if not isinstance(since, str) or not since.startswith(PREFIX):
        raise StateError(f"`since` is not a mailbox state; {hint}")
    if len(since) > MAX_STATE_CHARS:
        raise StateError(f"`since` is too long to be a mailbox state; {hint}")
    body = since[len(PREFIX) :]
    try:
        packed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_STATE_JSON)
        if inflater.unconsumed_tail or not inflater.eof:
            raise StateError(f"`since` is damaged or too large; {hint}")
        model = _Model.model_validate_json(raw)
    except StateError:
        raise
    except (binascii.Error, ValueError, zlib.error, ValidationError):
        raise StateError(
            f"`since` is damaged (it does not decode to a mailbox state); {hint}"
        ) from None
    if model.f != folder_digest(folder):
        raise StateError(
            "`since` is the state of another folder; pass the state returned for this folder"
        )
    flags: dict[int, frozenset[str]] | None = None
    snapshot = (model.u, model.fs, model.fi)
    if any(part is not None for part in snapshot):
        if model.u is None or model.fs is None or model.fi is None:
            raise StateError(f"`since` is damaged (an incomplete snapshot); {hint}")
        uids = _expand(model.u, model.next)
        if len(uids) != len(model.fi) or any(not 0 <= i < len(model.fs) for i in model.fi):
            raise StateError(f"`since` is damaged (an inconsistent snapshot); {hint}")
        if any(len(s) > 100 or any(len(f) > 200 for f in s) for s in model.fs):
            raise StateError(f"`since` is damaged (bad flags); {hint}")
        sets = [frozenset(s) for s in model.fs]
        flags = {uid: sets[i] for uid, i in zip(uids, model.fi, strict=True)}
    return FolderState(
        folder_digest=model.f,
        uidvalidity=model.uv,
        uidnext=model.next,
        count=model.n,
        highest_modseq=model.ms,
        flags=flags,
    )


def _ranges(uids: Sequence[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for uid in uids:
        if out and uid == out[-1][1] + 1:
            out[-1][1] = uid
        else:
            out.append([uid, uid])
    return out


def _expand(ranges: list[list[int]], uidnext: int) -> list[int]:
    uids: list[int] = []
    previous = 0
    for pair in ranges:
        if len(pair) != 2 or not previous < pair[0] <= pair[1] < uidnext:
            raise StateError("`since` is damaged (bad UID ranges)")
        if len(uids) + pair[1] - pair[0] + 1 > SNAPSHOT_MAX:
            raise StateError("`since` is damaged (snapshot too large)")
        uids.extend(range(pair[0], pair[1] + 1))
        previous = pair[1]
    return uids


async def current_state(
    session: IMAPSession,
    folder: str,
    mailbox: MailboxState,
    *,
    top_uid: int | None = None,
) -> FolderState:
    """
    The state of the open C{folder} now.  With QRESYNC: UIDVALIDITY,
    HIGHESTMODSEQ and UIDNEXT from the open mailbox (one ``FETCH * (UID)``
    when UIDNEXT is not known and C{top_uid}, the UID of the last message,
    was not given).  Without: a snapshot of every UID and its flags (one
    ``UID FETCH 1:* (UID FLAGS)``) when the folder is small enough.
    """
    digest = folder_digest(folder)
    qresync = "QRESYNC" in session.capabilities and mailbox.highest_modseq is not None
    if not qresync and mailbox.exists <= SNAPSHOT_MAX:
        flags: dict[int, frozenset[str]] = {}
        if mailbox.exists:
            for message in await session.fetch("1:*", "(UID FLAGS)", uid=True):
                flags[message.uid] = normal_flags(message.flags or ())
        uidnext = max([mailbox.uidnext or 1, *(uid + 1 for uid in flags)])
        return FolderState(digest, mailbox.uidvalidity, uidnext, len(flags), None, flags)
    next_uid = mailbox.uidnext
    if next_uid is None:
        top = top_uid
        if top is None and mailbox.exists:
            top = await _highest_uid(session)
        next_uid = (top or 0) + 1
    return FolderState(
        digest,
        mailbox.uidvalidity,
        next_uid,
        mailbox.exists,
        mailbox.highest_modseq if qresync else None,
    )


async def _highest_uid(session: IMAPSession) -> int | None:
    highest = getattr(session, "highest_uid", None)
    if highest is not None:
        result: int | None = await highest()
        return result
    found = await session.uid_search([b"UID", b"*"])
    if not found:
        raise IMAPError("the mail server did not say which UID is the last one")
    return max(found)
