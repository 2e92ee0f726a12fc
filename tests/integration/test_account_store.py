"""
The account-page and operator-revocation part of the `IGrantStore`
contract (issue 15), for the memory model, SQLite and the real Redis:
listing a mailbox's grants by account index, revoking one mailbox, the
last-used time, the granted scopes, and the client deny-list.
"""

from __future__ import annotations

import secrets

import attrs
import pytest
import pytest_twisted
from twisted.internet.task import Clock

from mailmcp._scopes import FULL
from mailmcp.oauth._clients import MailServer
from mailmcp.oauth._grants import GrantRecord, account_index, account_indexes
from mailmcp.oauth._keyring import KeyRing, new_master_key
from tests.integration.grant_records import NOW, record

pytestmark = pytest.mark.integration


def of(account: str, client: str = "c1", expires: int = NOW + 60) -> GrantRecord:
    return attrs.evolve(
        record(expires=expires, client=client), account=account, client_name=f"App {client}"
    )


@pytest_twisted.ensureDeferred
async def test_list_and_revoke_account(store_and_clock) -> None:
    """Grants are listed by account index (oldest first, with client name); revoke_account ends only that mailbox's."""
    store, clock = store_and_clock
    a1, a2, other = of("acct-a", "c1"), of("acct-a", "c2"), of("acct-b", "c1")
    for r in (a1, a2, other):
        await store.create_grant(r)
    listed = await store.list_account_grants("acct-a")
    assert sorted(r.grant_id for r in listed) == sorted([a1.grant_id, a2.grant_id])
    assert {r.client_name for r in listed} == {"App c1", "App c2"}
    assert await store.revoke_account("acct-a") == 2
    assert await store.list_account_grants("acct-a") == []
    assert await store.get_grant(a1.grant_id) is None
    assert await store.get_grant(other.grant_id) is not None
    assert await store.revoke_account("acct-a") == 0


@pytest_twisted.ensureDeferred
async def test_listing_skips_expired_and_revoked(store_and_clock) -> None:
    """An expired or individually revoked grant is not listed and not counted."""
    store, clock = store_and_clock
    short, long_, gone = of("acct", expires=NOW + 10), of("acct", expires=NOW + 100), of("acct")
    for r in (short, long_, gone):
        await store.create_grant(r)
    await store.revoke_grant(gone.grant_id)
    clock.advance(20)
    assert [r.grant_id for r in await store.list_account_grants("acct")] == [long_.grant_id]
    assert await store.revoke_account("acct") == 1


@pytest_twisted.ensureDeferred
async def test_activation_keeps_the_grant_listed(store_and_clock) -> None:
    """Activation extends a grant's life; it stays findable by account for all of it."""
    store, clock = store_and_clock
    r = of("acct", expires=NOW + 10)
    await store.create_grant(r)
    assert await store.activate_grant(r.grant_id, secrets.token_hex(8), NOW + 10, NOW + 5000)
    clock.advance(3000)
    assert [x.grant_id for x in await store.list_account_grants("acct")] == [r.grant_id]


@pytest_twisted.ensureDeferred
async def test_touch_grant(store_and_clock) -> None:
    """touch_grant records the last use, never backwards, and never revives a revoked grant."""
    store, clock = store_and_clock
    r = of("acct")
    await store.create_grant(r)
    assert (await store.get_grant(r.grant_id)).last_used == 0
    await store.touch_grant(r.grant_id, NOW + 5)
    await store.touch_grant(r.grant_id, NOW + 1)
    assert (await store.get_grant(r.grant_id)).last_used == NOW + 5
    await store.revoke_grant(r.grant_id)
    await store.touch_grant(r.grant_id, NOW + 9)
    assert await store.get_grant(r.grant_id) is None
    assert await store.list_account_grants("acct") == []


@pytest_twisted.ensureDeferred
async def test_scope_is_stored_and_kept(store_and_clock) -> None:
    """The granted scopes read back (listing too) and survive activation, rotation and last-used writes; "" reads as all five."""
    store, clock = store_and_clock
    narrow = attrs.evolve(of("acct", expires=NOW + 65), scope="mail.read mail.draft")
    legacy = of("acct")
    for r in (narrow, legacy):
        await store.create_grant(r)
    assert await store.get_grant(narrow.grant_id) == narrow
    got = await store.get_grant(legacy.grant_id)
    assert got.scope == "" and got.scopes == FULL
    assert await store.activate_grant(narrow.grant_id, secrets.token_hex(8), NOW + 60, NOW + 5000)
    assert await store.rotate_refresh(narrow.grant_id, 0, b"succ-1", 60) == b"succ-1"
    await store.touch_grant(narrow.grant_id, NOW + 5)
    clock.advance(100)
    listed = {r.grant_id: r for r in await store.list_account_grants("acct")}
    kept = listed[narrow.grant_id]
    assert (kept.generation, kept.last_used) == (1, NOW + 5)
    assert kept.scope == "mail.read mail.draft"
    assert kept.scopes == {"mail.read", "mail.draft"}


@pytest_twisted.ensureDeferred
async def test_deny_client(store_and_clock) -> None:
    """deny_client ends that client's grants (count returned), and the deny-list outlives them."""
    store, clock = store_and_clock
    mine, mine2, theirs = of("a", "bad"), of("b", "bad"), of("a", "good")
    for r in (mine, mine2, theirs):
        await store.create_grant(r)
    assert not await store.client_denied("bad")
    assert await store.deny_client("bad") == 2
    assert await store.client_denied("bad")
    assert not await store.client_denied("good")
    assert await store.get_grant(mine.grant_id) is None
    assert await store.get_grant(theirs.grant_id) is not None
    clock.advance(10**6)
    assert await store.client_denied("bad")


@pytest_twisted.ensureDeferred
async def test_get_allowed_grant(store_and_clock) -> None:
    """The per-request read: the live grant of that client, nothing once denied, revoked, expired or for another client."""
    store, clock = store_and_clock
    # A name beyond ASCII and a client ref of digits only: both come back as written.
    mine = attrs.evolve(of("a", "0123456789", expires=NOW + 60), client_name="Café ✉ app")
    theirs = of("a", "c2", expires=NOW + 60)
    for r in (mine, theirs):
        await store.create_grant(r)
    got = await store.get_allowed_grant(mine.grant_id, "0123456789")
    assert got == mine == await store.get_grant(mine.grant_id)
    assert await store.get_allowed_grant(mine.grant_id, "c2") is None
    assert await store.get_allowed_grant("no-such-grant", "c1") is None
    assert await store.deny_client("c2") == 1
    assert await store.get_allowed_grant(theirs.grant_id, "c2") is None
    assert await store.get_allowed_grant(mine.grant_id, "0123456789") is not None
    await store.revoke_grant(mine.grant_id)
    assert await store.get_allowed_grant(mine.grant_id, "0123456789") is None
    later = of("a", "c1", expires=NOW + 10)
    await store.create_grant(later)
    assert await store.get_allowed_grant(later.grant_id, "c1") is not None
    clock.advance(11)
    assert await store.get_allowed_grant(later.grant_id, "c1") is None


def test_account_index_normalises_and_is_keyed() -> None:
    """The index ignores case, outer spaces and Unicode width of the username, but not server or key."""
    ring = KeyRing([new_master_key(NOW)])
    server = MailServer("imap.example.test", 993, "tls")
    base = account_index(ring, ring.current_kid, server, "alice@example.test")
    assert account_index(ring, ring.current_kid, server, " ALICE@Example.test ") == base
    assert account_index(ring, ring.current_kid, server, "\uff41lice@example.test") == base
    assert (
        account_index(
            ring,
            ring.current_kid,
            MailServer("IMAP.example.test", 993, "tls"),
            "alice@example.test",
        )
        == base
    )
    assert (
        account_index(
            ring,
            ring.current_kid,
            MailServer("imap.example.test", 143, "starttls"),
            "alice@example.test",
        )
        != base
    )
    assert account_index(ring, ring.current_kid, server, "bob@example.test") != base
    other = KeyRing([new_master_key(NOW)])
    assert account_index(other, other.current_kid, server, "alice@example.test") != base
    assert "alice" not in base
    rotated = ring.with_new_key(new_master_key(NOW + 1))
    assert account_indexes(rotated, server, "alice@example.test")[1] == base


@pytest_twisted.ensureDeferred
async def test_sqlite_file_from_before_account_index_opens(tmp_path) -> None:
    """A grants table without the new columns gains them; its grants open with no account and stay revocable by client."""
    import sqlite3

    from mailmcp.store._sqlite import SQLiteGrantStore

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE grants (grant_id TEXT PRIMARY KEY, client_ref TEXT NOT NULL, sealed BLOB NOT NULL,"
        " created INTEGER NOT NULL, expires INTEGER NOT NULL, generation INTEGER NOT NULL DEFAULT 0);"
    )
    db.execute("INSERT INTO grants VALUES ('old', 'c9', x'00', ?, ?, 0)", (NOW, NOW + 60))
    db.commit()
    db.close()
    clock = Clock()
    clock.advance(NOW)
    store = SQLiteGrantStore(path, clock)
    try:
        old = await store.get_grant("old")
        assert (old.account, old.client_name, old.last_used, old.scope) == ("", "", 0, "")
        assert old.scopes == FULL
        assert await store.deny_client("c9") == 1
        assert await store.get_grant("old") is None
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_file_from_before_scopes_gains_the_column(tmp_path) -> None:
    """A file of the account-page release (no scope column) gains it; its grants read as all five, new ones keep theirs."""
    import sqlite3

    from mailmcp.store._sqlite import SQLiteGrantStore

    path = tmp_path / "before-scopes.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE grants (grant_id TEXT PRIMARY KEY, client_ref TEXT NOT NULL, sealed BLOB NOT NULL,"
        " created INTEGER NOT NULL, expires INTEGER NOT NULL, generation INTEGER NOT NULL DEFAULT 0,"
        " successor BLOB, rotated REAL, account TEXT NOT NULL DEFAULT '',"
        " client_name TEXT NOT NULL DEFAULT '', last_used INTEGER NOT NULL DEFAULT 0);"
    )
    db.execute(
        "INSERT INTO grants (grant_id, client_ref, sealed, created, expires, account, client_name)"
        " VALUES ('old', 'c9', x'00', ?, ?, 'acct', 'Old App')",
        (NOW, NOW + 60),
    )
    db.commit()
    db.close()
    clock = Clock()
    clock.advance(NOW)
    store = SQLiteGrantStore(path, clock)
    try:
        new = attrs.evolve(of("acct"), scope="mail.read")
        await store.create_grant(new)
        listed = {r.grant_id: r for r in await store.list_account_grants("acct")}
        assert (listed["old"].client_name, listed["old"].scope) == ("Old App", "")
        assert listed["old"].scopes == FULL
        assert listed[new.grant_id] == new
    finally:
        store.close()
    # Opening the migrated file again changes nothing.
    store = SQLiteGrantStore(path, clock)
    try:
        assert (await store.get_grant(new.grant_id)).scope == "mail.read"
    finally:
        store.close()


@pytest_twisted.ensureDeferred
async def test_set_grant_account_fills_only_an_empty_index(store_and_clock) -> None:
    """
    A grant from before account indexes ("") gets one, is listed under it
    for its whole life (activation extends it), and keeps it: a second set,
    a grant that has one, a revoked or expired grant are left alone.
    """
    store, clock = store_and_clock
    legacy, indexed, gone = of("", expires=NOW + 10), of("acct-x"), of("")
    for r in (legacy, indexed, gone):
        await store.create_grant(r)
    await store.revoke_grant(gone.grant_id)
    assert await store.list_account_grants("acct-new") == []
    assert await store.set_grant_account(legacy.grant_id, "acct-new") is True
    assert await store.set_grant_account(legacy.grant_id, "acct-other") is False
    assert await store.set_grant_account(indexed.grant_id, "acct-new") is False
    assert await store.set_grant_account(gone.grant_id, "acct-new") is False
    assert await store.set_grant_account("no-such-grant", "acct-new") is False
    assert await store.get_grant(gone.grant_id) is None
    got = await store.get_grant(legacy.grant_id)
    assert got == attrs.evolve(legacy, account="acct-new")
    assert (await store.get_grant(indexed.grant_id)).account == "acct-x"
    assert [r.grant_id for r in await store.list_account_grants("acct-new")] == [legacy.grant_id]
    assert await store.list_account_grants("acct-other") == []
    assert await store.activate_grant(legacy.grant_id, secrets.token_hex(8), NOW + 10, NOW + 5000)
    clock.advance(3000)
    assert [r.grant_id for r in await store.list_account_grants("acct-new")] == [legacy.grant_id]
    assert await store.revoke_account("acct-new") == 1
    assert await store.get_grant(legacy.grant_id) is None


@pytest_twisted.ensureDeferred
async def test_set_grant_account_leaves_an_expired_grant(store_and_clock) -> None:
    """An expired grant is not given an index (nor listed)."""
    store, clock = store_and_clock
    old = of("", expires=NOW + 10)
    await store.create_grant(old)
    clock.advance(20)
    assert await store.set_grant_account(old.grant_id, "acct-late") is False
    assert await store.list_account_grants("acct-late") == []
