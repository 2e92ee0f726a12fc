"""
The default grant store: one SQLite file in the state directory.

Why the queries run on the reactor thread and not on a thread pool: every
statement here is a primary-key point lookup or a one-row write (tens of
microseconds), and the token verifier reads a grant on every ``/mcp`` call,
where a thread-pool round trip would cost more than the query itself.  What
could stall is the disk: in WAL mode with ``synchronous=NORMAL`` a commit
does not fsync; only checkpoints do, so automatic checkpoints are switched
off here and `SQLiteGrantStore` runs them (PASSIVE, never blocking writers)
on its own one-thread pool, together with the sweep of expired rows.

One process per file.  Several processes or hosts share state through the
Redis store (``--store redis://...``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..interfaces import IClientStore, IGrantStore, ISendIntentStore
from ..oauth._grants import USED_CODE_MARGIN, GrantRecord

log = Logger()

_SCHEMA_CLIENTS = (
    "CREATE TABLE IF NOT EXISTS clients ("
    " client_id TEXT PRIMARY KEY, sealed TEXT NOT NULL, created INTEGER NOT NULL)"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY,
    client_ref TEXT NOT NULL,
    sealed BLOB NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    successor BLOB,
    rotated REAL
);
CREATE INDEX IF NOT EXISTS grants_expires ON grants (expires);
CREATE TABLE IF NOT EXISTS used_codes (
    code_id TEXT PRIMARY KEY,
    expires INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS used_codes_expires ON used_codes (expires);
CREATE TABLE IF NOT EXISTS denied_clients (
    client_ref TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS send_intents (
    key TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT NOT NULL,
    lease REAL NOT NULL,
    expires REAL NOT NULL
);
"""


#: Columns added after the first release, with their declarations: a file
#: written by an older version gains them when opened.
_ADDED_COLUMNS = {
    "successor": "BLOB",
    "rotated": "REAL",
    # The account page (issue 15).
    "account": "TEXT NOT NULL DEFAULT ''",
    "client_name": "TEXT NOT NULL DEFAULT ''",
    "last_used": "INTEGER NOT NULL DEFAULT 0",
    # The granted scopes, for the account page ("": from before scopes).
    "scope": "TEXT NOT NULL DEFAULT ''",
}

#: Made after the added columns exist.
_INDEXES = """
CREATE INDEX IF NOT EXISTS grants_account ON grants (account);
CREATE INDEX IF NOT EXISTS grants_client ON grants (client_ref);
"""

_COLUMNS = (
    "grant_id, client_ref, sealed, created, expires, generation, account, client_name, last_used,"
    " scope"
)


def _record(row: Any) -> GrantRecord:
    return GrantRecord(
        grant_id=row[0],
        client_ref=row[1],
        sealed=bytes(row[2]),
        created=row[3],
        expires=row[4],
        generation=row[5],
        account=row[6],
        client_name=row[7],
        last_used=row[8],
        scope=row[9],
    )


def _create_private(path: str) -> None:
    """
    Create the database file 0600 before SQLite opens it (and make an
    existing one and its ``-wal``/``-shm`` files 0600): SQLite creates the
    ``-wal`` and ``-shm`` files with the database file's mode, so they are
    private from the first write on, whatever the umask.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, path + "-wal", path + "-shm"):
        try:
            os.chmod(name, 0o600)
        except FileNotFoundError:
            pass


def _run(call: Callable[[], Any]) -> Deferred[Any]:
    try:
        return succeed(call())
    except sqlite3.Error:
        return fail(Failure())


@contextmanager
def _write_lock(db: sqlite3.Connection) -> Iterator[None]:
    """
    One write transaction that holds the file's write lock from its first
    read (BEGIN IMMEDIATE), so another process cannot read the same state in
    between (no check-then-act); committed at the end unless the body already
    ended it, rolled back on any error.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if db.in_transaction:
        db.execute("COMMIT")


@implementer(IGrantStore, ISendIntentStore, IClientStore)
class SQLiteGrantStore(Service):
    """
    `IGrantStore` on a SQLite file.  As a service it sweeps expired rows and
    checkpoints the WAL every C{maintenance_interval} seconds.
    """

    def __init__(
        self, path: Path | str, clock: IReactorTime, maintenance_interval: float = 60.0
    ) -> None:
        self._path = str(path)
        self._clock = clock
        self._interval = maintenance_interval
        if self._path != ":memory:":
            _create_private(self._path)
        self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=2000")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)
        self._db.execute(_SCHEMA_CLIENTS)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(grants)")}
        for column, declaration in _ADDED_COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE grants ADD COLUMN {column} {declaration}")
        self._db.executescript(_INDEXES)
        self._pool: ThreadPool | None = None
        self._loop: LoopingCall | None = None

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="mailmcp-sqlite")
        self._pool.start()
        self._loop = LoopingCall(self.maintain)
        self._loop.clock = self._clock

        def stopped(failure: Failure) -> None:
            log.error("sqlite maintenance stopped ({kind})", kind=type(failure.value).__name__)

        self._loop.start(self._interval, now=False).addErrback(stopped)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        self.close()
        return None

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass

    def maintain(self) -> Deferred[None] | None:
        """Delete what has expired; checkpoint the WAL off the reactor thread."""
        try:
            self.sweep()
        except sqlite3.Error as e:
            log.error("sqlite sweep failed: {kind}", kind=type(e).__name__)
        if self._pool is None:
            return None
        d: Deferred[None] = deferToThreadPool(self._clock, self._pool, self._checkpoint)  # type: ignore[arg-type]

        def failed(failure: Failure) -> None:
            log.error("sqlite checkpoint failed: {kind}", kind=type(failure.value).__name__)

        d.addErrback(failed)
        return d

    def _checkpoint(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def sweep(self) -> int:
        now = self._now()
        removed = 0
        for table in ("grants", "used_codes", "counters", "send_intents"):
            removed += self._db.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,)).rowcount  # noqa: S608
        return removed

    # -- IGrantStore -----------------------------------------------------------

    def _now(self) -> float:
        return self._clock.seconds()

    def create_grant(self, record: GrantRecord) -> Deferred[None]:
        def call() -> None:
            self._db.execute(
                f"INSERT INTO grants ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    record.grant_id,
                    record.client_ref,
                    record.sealed,
                    record.created,
                    record.expires,
                    record.generation,
                    record.account,
                    record.client_name,
                    record.last_used,
                    record.scope,
                ),
            )

        return _run(call)

    def get_grant(self, grant_id: str) -> Deferred[GrantRecord | None]:
        def call() -> GrantRecord | None:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM grants WHERE grant_id = ? AND expires > ?",  # noqa: S608
                (grant_id, self._now()),
            ).fetchone()
            return None if row is None else _record(row)

        return _run(call)

    def get_allowed_grant(self, grant_id: str, client_ref: str) -> Deferred[GrantRecord | None]:
        def call() -> GrantRecord | None:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM grants WHERE grant_id = ? AND expires > ?"  # noqa: S608
                " AND client_ref = ?"
                " AND NOT EXISTS (SELECT 1 FROM denied_clients WHERE client_ref = ?)",
                (grant_id, self._now(), client_ref, client_ref),
            ).fetchone()
            return None if row is None else _record(row)

        return _run(call)

    def activate_grant(
        self, grant_id: str, code_id: str, code_expires: int, expires: int
    ) -> Deferred[bool]:
        def call() -> bool:
            with _write_lock(self._db):
                fresh = self._db.execute(
                    "INSERT OR IGNORE INTO used_codes (code_id, expires) VALUES (?, ?)",
                    (code_id, max(code_expires, int(self._now())) + USED_CODE_MARGIN),
                ).rowcount
                updated = 0
                if fresh:
                    updated = self._db.execute(
                        "UPDATE grants SET expires = ? WHERE grant_id = ? AND expires > ?",
                        (expires, grant_id, self._now()),
                    ).rowcount
            return bool(fresh and updated)

        return _run(call)

    def rotate_refresh(
        self, grant_id: str, generation: int, successor: bytes, grace: int
    ) -> Deferred[bytes | None]:
        def call() -> bytes | None:
            now = self._now()
            # One transaction: rotate if at `generation`, then read back the
            # successor now current (ours, or the winner's within the grace).
            with _write_lock(self._db):
                rotated = self._db.execute(
                    "UPDATE grants SET generation = generation + 1, successor = ?, rotated = ?"
                    " WHERE grant_id = ? AND generation = ? AND expires > ?",
                    (successor, now, grant_id, generation, now),
                ).rowcount
                row = None
                if not rotated:
                    row = self._db.execute(
                        "SELECT successor FROM grants WHERE grant_id = ? AND generation = ?"
                        " AND expires > ? AND rotated IS NOT NULL AND rotated + ? > ?",
                        (grant_id, generation + 1, now, grace, now),
                    ).fetchone()
            if rotated:
                return successor
            return None if row is None or row[0] is None else bytes(row[0])

        return _run(call)

    def replace_sealed(self, grant_id: str, old: bytes, new: bytes) -> Deferred[bool]:
        def call() -> bool:
            # One UPDATE is atomic: the WHERE on the old value is the compare.
            return bool(
                self._db.execute(
                    "UPDATE grants SET sealed = ? WHERE grant_id = ? AND sealed = ? AND expires > ?",
                    (new, grant_id, old, self._now()),
                ).rowcount
            )

        return _run(call)

    def revoke_grant(self, grant_id: str) -> Deferred[None]:
        def call() -> None:
            self._db.execute("DELETE FROM grants WHERE grant_id = ?", (grant_id,))

        return _run(call)

    def hit(self, key: str, window: int) -> Deferred[int]:
        def call() -> int:
            now = self._now()
            row = self._db.execute(
                "INSERT INTO counters (key, count, expires) VALUES (?, 1, ?)"
                " ON CONFLICT (key) DO UPDATE SET"
                "  count = CASE WHEN expires <= ? THEN 1 ELSE count + 1 END,"
                "  expires = CASE WHEN expires <= ? THEN ? ELSE expires END"
                " RETURNING count",
                (key, now + window, now, now, now + window),
            ).fetchone()
            return int(row[0])

        return _run(call)

    def count(self, key: str) -> Deferred[int]:
        def call() -> int:
            row = self._db.execute(
                "SELECT count FROM counters WHERE key = ? AND expires > ?", (key, self._now())
            ).fetchone()
            return int(row[0]) if row else 0

        return _run(call)

    def reserve(self, budgets: Sequence[tuple[str, int, int]]) -> Deferred[str | None]:
        def call() -> str | None:
            now = self._now()
            # BEGIN IMMEDIATE takes the write lock before reading, so another
            # process cannot read the same counts in between (no check-then-act).
            with _write_lock(self._db):
                for key, limit, _ in budgets:
                    row = self._db.execute(
                        "SELECT count FROM counters WHERE key = ? AND expires > ?", (key, now)
                    ).fetchone()
                    if row is not None and int(row[0]) >= limit:
                        self._db.execute("ROLLBACK")
                        return key
                for key, _, window in budgets:
                    self._db.execute(
                        "INSERT INTO counters (key, count, expires) VALUES (?, 1, ?)"
                        " ON CONFLICT (key) DO UPDATE SET"
                        "  count = CASE WHEN expires <= ? THEN 1 ELSE count + 1 END,"
                        "  expires = CASE WHEN expires <= ? THEN ? ELSE expires END",
                        (key, now + window, now, now, now + window),
                    )
            return None

        return _run(call)

    def release(self, keys: Sequence[str]) -> Deferred[None]:
        def call() -> None:
            now = self._now()
            self._db.executemany(
                "UPDATE counters SET count = count - 1 WHERE key = ? AND expires > ? AND count > 0",
                [(key, now) for key in keys],
            )

        return _run(call)

    # -- account page and operator revocation (issue 15) -------------------

    def list_account_grants(self, account: str) -> Deferred[list[GrantRecord]]:
        def call() -> list[GrantRecord]:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM grants WHERE account = ? AND expires > ?"  # noqa: S608
                " ORDER BY created, grant_id",
                (account, self._now()),
            ).fetchall()
            return [_record(row) for row in rows]

        return _run(call)

    def revoke_account(self, account: str) -> Deferred[int]:
        def call() -> int:
            with _write_lock(self._db):
                live = self._db.execute(
                    "SELECT count(*) FROM grants WHERE account = ? AND expires > ?",
                    (account, self._now()),
                ).fetchone()[0]
                self._db.execute("DELETE FROM grants WHERE account = ?", (account,))
            return int(live)

        return _run(call)

    def touch_grant(self, grant_id: str, when: int) -> Deferred[None]:
        def call() -> None:
            self._db.execute(
                "UPDATE grants SET last_used = ? WHERE grant_id = ? AND last_used < ?",
                (when, grant_id, when),
            )

        return _run(call)

    def set_grant_account(self, grant_id: str, account: str) -> Deferred[bool]:
        def call() -> bool:
            cursor = self._db.execute(
                "UPDATE grants SET account = ? WHERE grant_id = ? AND account = '' AND expires > ?",
                (account, grant_id, self._now()),
            )
            return bool(cursor.rowcount)

        return _run(call)

    def deny_client(self, client_ref: str) -> Deferred[int]:
        def call() -> int:
            with _write_lock(self._db):
                self._db.execute(
                    "INSERT OR IGNORE INTO denied_clients (client_ref) VALUES (?)", (client_ref,)
                )
                live = self._db.execute(
                    "SELECT count(*) FROM grants WHERE client_ref = ? AND expires > ?",
                    (client_ref, self._now()),
                ).fetchone()[0]
                self._db.execute("DELETE FROM grants WHERE client_ref = ?", (client_ref,))
            return int(live)

        return _run(call)

    def client_denied(self, client_ref: str) -> Deferred[bool]:
        def call() -> bool:
            row = self._db.execute(
                "SELECT 1 FROM denied_clients WHERE client_ref = ?", (client_ref,)
            ).fetchone()
            return row is not None

        return _run(call)

    # -- ISendIntentStore (SM-13, SM-14) ----------------------------------------

    def begin_send(
        self, key: str, account: str, owner: str, lease: float, keep: int
    ) -> Deferred[str]:
        def call() -> str:
            now = self._now()
            # The write lock first, so a second writer on this file cannot
            # read the same absence in between (no check-then-act).
            with _write_lock(self._db):
                self._db.execute(
                    "DELETE FROM send_intents WHERE key = ? AND (state = 'failed' OR expires <= ?)",
                    (key, now),
                )
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO send_intents (key, account, state, owner, lease, expires)"
                    " VALUES (?, ?, 'sending', ?, ?, ?)",
                    (key, account, owner, now + lease, now + keep),
                ).rowcount
                state = "claimed"
                if not inserted:
                    row = self._db.execute(
                        "SELECT state, lease FROM send_intents WHERE key = ?", (key,)
                    ).fetchone()
                    state = str(row[0])
                    if state == "sending" and float(row[1]) <= now:
                        state = "unknown"
            return state

        return _run(call)

    def end_send(self, key: str, owner: str, state: str, keep: int) -> Deferred[None]:
        def call() -> None:
            self._db.execute(
                "UPDATE send_intents SET state = ?, expires = ? WHERE key = ? AND owner = ?",
                (state, self._now() + keep, key, owner),
            )

        return _run(call)

    # -- short client ids (IClientStore) --

    def put_client(self, client_id: str, sealed: str) -> Deferred[None]:
        def call() -> None:
            write_client(self._db, client_id, sealed, int(self._now()))

        return _run(call)

    def get_client(self, client_id: str) -> Deferred[str | None]:
        def call() -> str | None:
            row = self._db.execute(
                "SELECT sealed FROM clients WHERE client_id = ?", (client_id,)
            ).fetchone()
            return str(row[0]) if row else None

        return _run(call)


def write_client(db: sqlite3.Connection, client_id: str, sealed: str, created: int) -> None:
    """Insert one client record (also used by ``mailmcp-generate``, without a reactor)."""
    db.execute(_SCHEMA_CLIENTS)
    db.execute(
        "INSERT INTO clients (client_id, sealed, created) VALUES (?, ?, ?)",
        (client_id, sealed, created),
    )
