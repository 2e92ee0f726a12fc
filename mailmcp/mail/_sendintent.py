"""
At most once across processes and crashes (docs/threat-model.rst, SM-13 and
SM-14).

A send with an ``idempotency_key`` has a fixed Message-ID, and Sent is
searched for it first.  That alone does not cover two retries running at once
on two daemons behind a balancer (both miss it in Sent, both send), nor a
daemon killed after ``DATA`` but before it filed the Sent copy (the retry
finds nothing and sends again).  So before ``DATA`` the send records its
intent in the grant store every daemon shares (state ``sending``, the
owning process, a lease), and after it the outcome (``sent``, ``failed`` or
``unknown``):

- ``claimed``: no record (or only a ``failed`` one): this call sends.
- ``sending`` with a live lease: another call is sending it right now.
- ``sending`` past its lease: its owner died mid-send; the mail may have
  gone out, so the outcome is unknown and nothing is sent again.
- ``sent`` / ``unknown``: an earlier call sent it, or may have.

The lease is the SMTP timeout plus `LEASE_MARGIN`: a live owner always
settles a send within the SMTP timeout, so a ``sending`` record older than
the lease has no live owner.  Sends without a key get a random Message-ID
and need no record.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any, Literal

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .._account import MailAccount
from ._sendrate import send_key

log = Logger()

#: Seconds past the SMTP timeout before a ``sending`` record counts as
#: abandoned (covers the store round trips and modest clock skew).
LEASE_MARGIN = 10.0

#: Seconds an intent record is kept: a retry with the same key within this
#: time is answered from the store even if the Sent copy is missing.
KEEP = 7 * 24 * 3600

BeginState = Literal["claimed", "sending", "unknown", "sent"]
EndState = Literal["sent", "failed", "unknown"]


def intent_key(message_id: str) -> str:
    """The store key of a Message-ID's intent: hashed, so no address sits in the store."""
    return hashlib.sha256(message_id.encode("utf-8")).hexdigest()


def process_owner() -> str:
    """An id for this process, unique across hosts and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


class SendIntents:
    """
    Records send intents in an `mailmcp.interfaces.ISendIntentStore` on
    behalf of one process (C{owner}).

    :param store: the grant store (SQLite, Redis or the memory double).
    :param lease: seconds a ``sending`` record stays owned (the SMTP
        timeout plus `LEASE_MARGIN`).
    """

    def __init__(self, store: Any, lease: float, owner: str | None = None) -> None:
        self._store = store
        self.lease = lease
        self.owner = owner if owner is not None else process_owner()

    def begin(self, account: MailAccount, message_id: str) -> Deferred[BeginState]:
        d: Deferred[BeginState] = self._store.begin_send(
            intent_key(message_id), send_key(account), self.owner, self.lease, KEEP
        )
        return d

    def end(self, message_id: str, state: EndState) -> Deferred[None]:
        d: Deferred[None] = self._store.end_send(intent_key(message_id), self.owner, state, KEEP)
        return d
