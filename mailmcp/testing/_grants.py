"""
`MemoryGrantStore`: the in-process grant, client and send-intent store for
tests, and a model of the contract the SQLite and Redis stores implement
(the store contract suite runs the same cases against all three).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..interfaces import IClientStore, IGrantStore, ISendIntentStore
from ..oauth._grants import GrantRecord


@attrs.frozen
class _Rotation:
    """What the memory store remembers of a grant's last refresh rotation."""

    generation: int
    successor: bytes
    at: float


@implementer(IGrantStore, ISendIntentStore, IClientStore)
class MemoryGrantStore:
    """
    An in-process `IGrantStore` for unit tests (and a model of the contract
    the SQLite and Redis stores implement).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.grants: dict[str, GrantRecord] = {}
        self.codes: dict[str, int] = {}
        self.counters: dict[str, tuple[int, float]] = {}
        self.rotations: dict[str, _Rotation] = {}
        self.clients: dict[str, str] = {}
        self.denied_clients: set[str] = set()
        # key -> (state, owner, lease until, kept until)
        self.intents: dict[str, tuple[str, str, float, float]] = {}

    def put_client(self, client_id: str, sealed: str) -> Deferred[None]:
        """`IClientStore.put_client`."""
        if client_id in self.clients:
            raise KeyError("client id already taken")
        self.clients[client_id] = sealed
        return succeed(None)

    def get_client(self, client_id: str) -> Deferred[str | None]:
        """`IClientStore.get_client`."""
        return succeed(self.clients.get(client_id))

    def _now(self) -> float:
        return self._clock.seconds()

    def create_grant(self, record: GrantRecord) -> Deferred[None]:
        self.grants[record.grant_id] = record
        return succeed(None)

    def get_grant(self, grant_id: str) -> Deferred[GrantRecord | None]:
        record = self.grants.get(grant_id)
        if record is not None and record.expires <= self._now():
            record = None
        return succeed(record)

    def get_allowed_grant(self, grant_id: str, client_ref: str) -> Deferred[GrantRecord | None]:
        record = self.grants.get(grant_id)
        if (
            record is None
            or record.expires <= self._now()
            or record.client_ref != client_ref
            or client_ref in self.denied_clients
        ):
            record = None
        return succeed(record)

    def activate_grant(
        self, grant_id: str, code_id: str, code_expires: int, expires: int
    ) -> Deferred[bool]:
        if code_id in self.codes:
            return succeed(False)
        self.codes[code_id] = code_expires
        record = self.grants.get(grant_id)
        if record is None or record.expires <= self._now():
            return succeed(False)
        self.grants[grant_id] = attrs.evolve(record, expires=expires)
        return succeed(True)

    def rotate_refresh(
        self, grant_id: str, generation: int, successor: bytes, grace: int
    ) -> Deferred[bytes | None]:
        now = self._now()
        record = self.grants.get(grant_id)
        if record is None or record.expires <= now:
            return succeed(None)
        if record.generation == generation:
            self.grants[grant_id] = attrs.evolve(record, generation=generation + 1)
            self.rotations[grant_id] = _Rotation(generation + 1, successor, now)
            return succeed(successor)
        last = self.rotations.get(grant_id)
        if (
            last is not None
            and record.generation == generation + 1 == last.generation
            and now < last.at + grace
        ):
            return succeed(last.successor)
        return succeed(None)

    def replace_sealed(self, grant_id: str, old: bytes, new: bytes) -> Deferred[bool]:
        record = self.grants.get(grant_id)
        if record is None or record.expires <= self._now() or record.sealed != old:
            return succeed(False)
        self.grants[grant_id] = attrs.evolve(record, sealed=new)
        return succeed(True)

    def revoke_grant(self, grant_id: str) -> Deferred[None]:
        self.grants.pop(grant_id, None)
        self.rotations.pop(grant_id, None)
        return succeed(None)

    def hit(self, key: str, window: int) -> Deferred[int]:
        now = self._now()
        count, until = self.counters.get(key, (0, 0.0))
        if until <= now:
            count, until = 0, now + window
        self.counters[key] = (count + 1, until)
        return succeed(count + 1)

    def count(self, key: str) -> Deferred[int]:
        count, until = self.counters.get(key, (0, 0.0))
        return succeed(count if until > self._now() else 0)

    def reserve(self, budgets: Sequence[tuple[str, int, int]]) -> Deferred[str | None]:
        now = self._now()
        current: dict[str, tuple[int, float]] = {}
        for key, limit, window in budgets:
            count, until = self.counters.get(key, (0, 0.0))
            if until <= now:
                count, until = 0, now + window
            if count >= limit:
                return succeed(key)
            current[key] = (count, until)
        for key, (count, until) in current.items():
            self.counters[key] = (count + 1, until)
        return succeed(None)

    def release(self, keys: Sequence[str]) -> Deferred[None]:
        now = self._now()
        for key in keys:
            count, until = self.counters.get(key, (0, 0.0))
            if until > now and count > 0:
                self.counters[key] = (count - 1, until)
        return succeed(None)

    # -- account page and operator revocation (issue 15) -------------------

    def list_account_grants(self, account: str) -> Deferred[list[GrantRecord]]:
        now = self._now()
        found = [r for r in self.grants.values() if r.account == account and r.expires > now]
        return succeed(sorted(found, key=lambda r: (r.created, r.grant_id)))

    def revoke_account(self, account: str) -> Deferred[int]:
        now = self._now()
        doomed = [g for g, r in self.grants.items() if r.account == account and r.expires > now]
        for gid in doomed:
            self.revoke_grant(gid)
        return succeed(len(doomed))

    def touch_grant(self, grant_id: str, when: int) -> Deferred[None]:
        record = self.grants.get(grant_id)
        if record is not None and record.last_used < when:
            self.grants[grant_id] = attrs.evolve(record, last_used=when)
        return succeed(None)

    def set_grant_account(self, grant_id: str, account: str) -> Deferred[bool]:
        record = self.grants.get(grant_id)
        if record is None or record.account or record.expires <= self._now():
            return succeed(False)
        self.grants[grant_id] = attrs.evolve(record, account=account)
        return succeed(True)

    def deny_client(self, client_ref: str) -> Deferred[int]:
        self.denied_clients.add(client_ref)
        now = self._now()
        doomed = [
            g for g, r in self.grants.items() if r.client_ref == client_ref and r.expires > now
        ]
        for gid in doomed:
            self.revoke_grant(gid)
        return succeed(len(doomed))

    def client_denied(self, client_ref: str) -> Deferred[bool]:
        return succeed(client_ref in self.denied_clients)

    # -- ISendIntentStore (SM-13, SM-14) ----------------------------------------

    def begin_send(
        self, key: str, account: str, owner: str, lease: float, keep: int
    ) -> Deferred[str]:
        now = self._now()
        record = self.intents.get(key)
        if record is not None and record[0] != "failed" and record[3] > now:
            state, _, until, _ = record
            if state == "sending" and until <= now:
                state = "unknown"
            return succeed(state)
        self.intents[key] = ("sending", owner, now + lease, now + keep)
        return succeed("claimed")

    def end_send(self, key: str, owner: str, state: str, keep: int) -> Deferred[None]:
        record = self.intents.get(key)
        if record is not None and record[1] == owner:
            self.intents[key] = (state, owner, record[2], self._now() + keep)
        return succeed(None)
