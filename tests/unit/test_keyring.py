"""
The key ring: several keys with ids, the newest current, per-purpose HKDF
subkeys, rotation that keeps old keys, the three sources (environment, key
file, state dir) and their precedence, and corrupt rings refused with a
message that names the source but never the key material.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from mailmcp.oauth._keyring import (
    KEYRING_FILENAME,
    KeyRing,
    KeyRingError,
    MasterKey,
    activate_key,
    add_key,
    load_or_create_keyring,
    new_master_key,
    read_keyring_file,
    write_keyring,
)


def test_first_start_creates_keys_json_0600(tmp_path: Path) -> None:
    """With no key anywhere, a one-key ring is created in the state dir, mode 0600."""
    ring = load_or_create_keyring(tmp_path, None, {})
    path = tmp_path / KEYRING_FILENAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(ring.kids) == 1
    assert read_keyring_file(path).kids == ring.kids


def test_second_load_reads_the_same_ring(tmp_path: Path) -> None:
    """Loading again returns the same keys (no silent regeneration)."""
    first = load_or_create_keyring(tmp_path, None, {})
    second = load_or_create_keyring(tmp_path, None, {})
    assert first.kids == second.kids
    assert first.subkey(first.current_kid, "p") == second.subkey(second.current_kid, "p")


def test_no_temporary_files_left(tmp_path: Path) -> None:
    """The atomic write leaves exactly keys.json behind."""
    load_or_create_keyring(tmp_path, None, {})
    add_key(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEYRING_FILENAME]


def test_newest_key_is_current() -> None:
    """The last key of the ring is the one that encrypts."""
    a, b = new_master_key(1_000_000), new_master_key(2_000_000)
    ring = KeyRing([a, b])
    assert ring.current_kid == b.kid
    assert ring.kids == [a.kid, b.kid]
    assert ring.has(a.kid) and ring.has(b.kid)
    assert not ring.has("nope")


def test_subkeys_are_per_purpose_and_per_key() -> None:
    """
    HKDF gives 32-byte subkeys that differ by purpose and by master key, never
    equal the master key, and are stable for the same inputs.
    """
    a, b = new_master_key(), new_master_key()
    ring = KeyRing([a, b])
    sub = ring.subkey(a.kid, "token/access")
    assert len(sub) == 32
    assert sub != a.secret
    assert sub != ring.subkey(a.kid, "token/refresh")
    assert sub != ring.subkey(b.kid, "token/access")
    assert sub == KeyRing([a]).subkey(a.kid, "token/access")
    assert ring.current_subkey("csrf") == (b.kid, ring.subkey(b.kid, "csrf"))


def test_subkey_of_unknown_kid() -> None:
    """Asking for a key id the ring does not hold is a KeyError."""
    with pytest.raises(KeyError):
        KeyRing([new_master_key()]).subkey("unknown", "x")


def test_rotation_appends_and_keeps_old_keys(tmp_path: Path) -> None:
    """add_key appends a new current key to the file; the old ones stay."""
    before = load_or_create_keyring(tmp_path, None, {})
    after = add_key(tmp_path)
    assert after.kids[:-1] == before.kids
    assert after.current_kid != before.current_kid
    assert after.subkey(before.current_kid, "x") == before.subkey(before.current_kid, "x")
    assert load_or_create_keyring(tmp_path, None, {}).kids == after.kids
    assert (tmp_path / KEYRING_FILENAME).stat().st_mode & 0o777 == 0o600


def test_rotation_of_a_key_file(tmp_path: Path) -> None:
    """add_key with a key file rotates that file, not the state dir."""
    key_file = tmp_path / "mounted.json"
    write_keyring(key_file, KeyRing([new_master_key()]))
    ring = add_key(tmp_path / "state-not-used", key_file)
    assert len(ring.kids) == 2
    assert read_keyring_file(key_file).kids == ring.kids


def test_with_new_key_is_a_new_ring() -> None:
    """with_new_key leaves the original ring untouched."""
    ring = KeyRing([new_master_key()])
    bigger = ring.with_new_key()
    assert len(ring.kids) == 1
    assert len(bigger.kids) == 2


def test_environment_wins_over_file_and_state(tmp_path: Path) -> None:
    """MAILMCP_KEYS (the ring JSON) beats --key-file and the state dir."""
    env_ring = KeyRing([new_master_key()])
    file_ring = KeyRing([new_master_key()])
    key_file = tmp_path / "file.json"
    write_keyring(key_file, file_ring)
    ring = load_or_create_keyring(tmp_path, key_file, {"MAILMCP_KEYS": env_ring.to_json()})
    assert ring.kids == env_ring.kids
    assert not (tmp_path / KEYRING_FILENAME).exists()


def test_key_file_wins_over_state(tmp_path: Path) -> None:
    """A key file beats the state dir, and the state dir gets no keys.json."""
    file_ring = KeyRing([new_master_key()])
    key_file = tmp_path / "file.json"
    write_keyring(key_file, file_ring)
    state = tmp_path / "state"
    state.mkdir()
    assert load_or_create_keyring(state, key_file, {}).kids == file_ring.kids
    assert not (state / KEYRING_FILENAME).exists()


def test_missing_key_file_is_an_error(tmp_path: Path) -> None:
    """A named key file that does not exist is an error, never silently created."""
    with pytest.raises(KeyRingError, match="cannot read key ring"):
        load_or_create_keyring(tmp_path, tmp_path / "missing.json", {})
    assert not (tmp_path / "missing.json").exists()


def test_unwritable_state_dir(tmp_path: Path) -> None:
    """A state 'dir' that is a file: creating the ring fails with a KeyRingError."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(KeyRingError, match="cannot create key ring"):
        load_or_create_keyring(blocker, None, {})


def _doc(*entries: dict[str, object]) -> str:
    return json.dumps({"version": 1, "keys": list(entries)})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


SECRET = b"S" * 32

CORRUPT = [
    ("not json", "{"),
    ("a list", "[]"),
    ("wrong version", json.dumps({"version": 2, "keys": []})),
    ("no keys field", json.dumps({"version": 1})),
    ("short secret", _doc({"kid": "a", "secret": _b64(b"short"), "created": 1})),
    ("empty kid", _doc({"kid": "", "secret": _b64(SECRET), "created": 1})),
    ("numeric kid", _doc({"kid": 5, "secret": _b64(SECRET), "created": 1})),
    ("long kid", _doc({"kid": "k" * 65, "secret": _b64(SECRET), "created": 1})),
    ("missing secret", _doc({"kid": "a", "created": 1})),
    ("bad created", _doc({"kid": "a", "secret": _b64(SECRET), "created": "yesterday"})),
    ("secret not base64", _doc({"kid": "a", "secret": "!!!!", "created": 1})),
    ("entry not an object", json.dumps({"version": 1, "keys": ["x"]})),
]


@pytest.mark.parametrize(("why", "text"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_rings_are_refused(why: str, text: str) -> None:
    """Every kind of corrupt ring is a KeyRingError naming the source, one line, no secret."""
    with pytest.raises(KeyRingError) as raised:
        KeyRing.from_json(text, "the-source")
    message = str(raised.value)
    assert message.startswith("corrupt key ring in the-source")
    assert "\n" not in message
    assert _b64(SECRET) not in message


def test_empty_ring_is_refused() -> None:
    """A ring with no keys cannot encrypt anything."""
    with pytest.raises(KeyRingError, match="no key"):
        KeyRing.from_json(_doc(), "x")


def test_duplicate_kids_are_refused() -> None:
    """Two keys with one id would make decryption ambiguous."""
    entry = {"kid": "same", "secret": _b64(SECRET), "created": 1}
    with pytest.raises(KeyRingError, match="same id"):
        KeyRing.from_json(_doc(entry, entry), "x")


def test_json_round_trip() -> None:
    """to_json/from_json keep ids, order, secrets and creation times."""
    ring = KeyRing([new_master_key(100), new_master_key(200)])
    again = KeyRing.from_json(ring.to_json(), "x")
    assert again.kids == ring.kids
    for kid in ring.kids:
        assert again.subkey(kid, "p") == ring.subkey(kid, "p")


def test_repr_hides_the_secret() -> None:
    """A master key's repr (which may end up in a log) shows only its id."""
    key = MasterKey(kid="abc", secret=SECRET, created=1)
    assert repr(key) == "<MasterKey kid='abc'>"
    assert "SSSS" not in repr(key)


def test_key_ids_are_unique_and_sortable() -> None:
    """New key ids start with their UTC creation time, so they sort by age."""
    early, late = new_master_key(1_000_000_000), new_master_key(1_700_000_000)
    assert early.kid.startswith("20010909T")
    assert early.kid < late.kid
    assert new_master_key(5).kid != new_master_key(5).kid


# -- staged rotation: inactive keys ------------------------------------------------------------


def test_inactive_key_decrypts_but_does_not_encrypt() -> None:
    """A key added inactive is in the ring (its subkeys derive) but the previous key stays current."""
    ring = KeyRing([new_master_key(1)])
    staged = ring.with_new_key(new_master_key(2), active=False)
    assert staged.current_kid == ring.current_kid
    assert staged.inactive_kids == [staged.kids[-1]]
    assert staged.has(staged.kids[-1])
    assert len(staged.subkey(staged.kids[-1], "token/access")) == 32


def test_activate_makes_the_key_current_and_survives_json() -> None:
    """Activation makes the key current (moved last); the inactive flag round-trips through JSON."""
    staged = KeyRing([new_master_key(1)]).with_new_key(new_master_key(2), active=False)
    reread = KeyRing.from_json(staged.to_json(), "test")
    assert reread.current_kid == staged.current_kid and reread.inactive_kids == staged.inactive_kids
    assert json.loads(staged.to_json())["keys"][-1]["inactive"] is True
    new_kid = staged.kids[-1]
    active = reread.with_active(new_kid)
    assert active.current_kid == new_kid and active.inactive_kids == []
    assert "inactive" not in json.loads(active.to_json())["keys"][-1]
    assert sorted(active.kids) == sorted(staged.kids)


def test_activate_unknown_kid_refused() -> None:
    """Activating a kid the ring does not hold names the kids it does hold."""
    ring = KeyRing([new_master_key(1)])
    with pytest.raises(KeyRingError, match="no key 'nope'"):
        ring.with_active("nope")


def test_ring_without_active_key_refused() -> None:
    """A ring whose keys are all inactive has nothing to seal with: refused."""
    key = new_master_key(1)
    document = json.dumps({"version": 1, "keys": [{"kid": key.kid, "secret": "A" * 43,
                                                   "created": 1, "inactive": True}]})
    with pytest.raises(KeyRingError, match="no active key"):
        KeyRing.from_json(document, "test")
    bad_flag = document.replace("true", '"yes"')
    with pytest.raises(KeyRingError, match="inactive flag"):
        KeyRing.from_json(bad_flag, "test")


def test_add_inactive_then_activate_file(tmp_path: Path) -> None:
    """add_key(active=False) then activate_key on the state dir's keys.json (kept 0600)."""
    first = load_or_create_keyring(tmp_path, environ={})
    staged = add_key(tmp_path, active=False)
    assert staged.current_kid == first.current_kid and len(staged.kids) == 2
    done = activate_key(tmp_path, staged.kids[-1])
    assert read_keyring_file(tmp_path / KEYRING_FILENAME).current_kid == done.current_kid == staged.kids[-1]
    assert (tmp_path / KEYRING_FILENAME).stat().st_mode & 0o777 == 0o600
    with pytest.raises(KeyRingError, match="no key ring"):
        add_key(tmp_path / "empty", active=False)


def test_losing_the_creation_race_reads_the_winners_ring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Another process creates keys.json after this one found none: this one
    returns that ring and leaves the file as the winner wrote it.
    """
    from mailmcp.oauth import _keyring

    winner = KeyRing([new_master_key()])
    write_temporary = _keyring._write_temporary

    def rival_first(path: Path, ring: KeyRing) -> Path:
        tmp = write_temporary(path, ring)
        path.write_text(winner.to_json())  # the other process, between our check and our create
        return tmp

    monkeypatch.setattr(_keyring, "_write_temporary", rival_first)
    ring = load_or_create_keyring(tmp_path, None, {})
    assert ring.kids == winner.kids
    assert ring.current_subkey("x") == winner.current_subkey("x")
    assert read_keyring_file(tmp_path / KEYRING_FILENAME).kids == winner.kids
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEYRING_FILENAME]


@pytest.mark.parametrize("rival", [False, True])
def test_without_hard_links_an_exclusive_create_stands_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rival: bool
) -> None:
    """
    On a file system without hard links (os.link: EPERM) the ring is created
    with O_EXCL, 0600, no temporary file left; one already there wins.
    """
    import errno

    from mailmcp.oauth import _keyring

    winner = KeyRing([new_master_key()])
    if rival:
        write_keyring(tmp_path / KEYRING_FILENAME, winner)

    def no_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_keyring.os, "link", no_links)
    path = tmp_path / KEYRING_FILENAME
    ring = _keyring.create_keyring(path, KeyRing([new_master_key()]))
    assert (ring.kids == winner.kids) is rival
    assert read_keyring_file(path).kids == ring.kids
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEYRING_FILENAME]


def test_without_hard_links_a_ring_that_stays_unreadable_is_refused(tmp_path: Path) -> None:
    """An empty keys.json (its writer died) is a corrupt ring, not a wait forever."""
    from mailmcp.oauth import _keyring

    path = tmp_path / KEYRING_FILENAME
    path.write_text("")
    with pytest.raises(KeyRingError, match="corrupt key ring"):
        _keyring._create_exclusively(path, KeyRing([new_master_key()]), patience=0)
    assert path.read_text() == ""
