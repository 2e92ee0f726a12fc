"""
The key ring: several master keys with ids; the newest active key encrypts,
any key decrypts.

Each master key never encrypts anything itself: every purpose (a token kind,
CSRF, attachment links, ...) gets its own subkey derived with HKDF, so a key
leaked for one purpose opens nothing else.  Rotation appends a new key; the
old ones stay to open what they sealed until they are removed by hand.

Staged rotation, for several processes: a key added *inactive* only
decrypts.  Once every process has it, activating it makes it the encrypting
key; since every process can already open what it seals, no process ever
meets a token it cannot open.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEYRING_FILENAME = "keys.json"
_KEY_BYTES = 32


class KeyRingError(Exception):
    """
    The key ring cannot be read or is not valid.  The message is one line that
    names the source and never the key material.
    """


@attrs.frozen(repr=False)
class MasterKey:
    """
    One master key: an id, 32 secret bytes, its creation time, and whether
    it may encrypt (an inactive key only decrypts).
    """

    kid: str
    secret: bytes
    created: int
    active: bool = True

    def __repr__(self) -> str:
        return f"<MasterKey kid={self.kid!r}{'' if self.active else ' inactive'}>"


_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def _b64decode(text: str) -> bytes:
    """
    Strict base64url: the stdlib decoder silently skips characters outside
    the alphabet, which would let a mangled secret through (LG-04).

    :raises ValueError: for anything but base64url text.
    """
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError("a key secret is not base64url text")
    return base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_master_key(now: float | None = None) -> MasterKey:
    """A fresh random master key with a unique, sortable id."""
    created = int(time.time() if now is None else now)
    kid = time.strftime("%Y%m%dT%H%M%S", time.gmtime(created)) + "-" + secrets.token_hex(4)
    return MasterKey(kid=kid, secret=secrets.token_bytes(_KEY_BYTES), created=created)


class KeyRing:
    """
    An ordered set of master keys.  The last active one is the current
    (encrypting) key; all of them can be looked up by id to decrypt.
    """

    def __init__(self, keys: Iterable[MasterKey]) -> None:
        self._keys = list(keys)
        if not self._keys:
            raise KeyRingError("the key ring holds no key")
        self._by_kid = {k.kid: k for k in self._keys}
        if len(self._by_kid) != len(self._keys):
            raise KeyRingError("the key ring holds two keys with the same id")
        active = [k for k in self._keys if k.active]
        if not active:
            raise KeyRingError("the key ring holds no active key")
        self._current = active[-1].kid
        self._subkeys: dict[tuple[str, str], bytes] = {}

    @property
    def current_kid(self) -> str:
        return self._current

    @property
    def kids(self) -> list[str]:
        return [k.kid for k in self._keys]

    @property
    def inactive_kids(self) -> list[str]:
        return [k.kid for k in self._keys if not k.active]

    def has(self, kid: str) -> bool:
        return kid in self._by_kid

    def subkey(self, kid: str, purpose: str) -> bytes:
        """
        The 32-byte key for C{purpose} under master key C{kid}.

        :raises KeyError: for an unknown kid.
        """
        cached = self._subkeys.get((kid, purpose))
        if cached is not None:
            return cached
        master = self._by_kid[kid]
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=_KEY_BYTES,
            salt=b"mailmcp key ring v1",
            info=b"mailmcp/" + purpose.encode("utf-8"),
        ).derive(master.secret)
        self._subkeys[(kid, purpose)] = derived
        return derived

    def current_subkey(self, purpose: str) -> tuple[str, bytes]:
        kid = self.current_kid
        return kid, self.subkey(kid, purpose)

    def with_new_key(self, key: MasterKey | None = None, active: bool = True) -> KeyRing:
        """
        A new ring with C{key} (or a fresh one) appended: the current key, or
        with C{active=False} a key that only decrypts until activated.
        """
        key = key if key is not None else new_master_key()
        return KeyRing([*self._keys, attrs.evolve(key, active=active)])

    def with_active(self, kid: str) -> KeyRing:
        """
        A new ring where key C{kid} is active and current (moved last).

        :raises KeyRingError: for an unknown kid.
        """
        if kid not in self._by_kid:
            raise KeyRingError(
                f"the key ring holds no key {kid!r} (it holds {', '.join(self.kids)})"
            )
        others = [k for k in self._keys if k.kid != kid]
        return KeyRing([*others, attrs.evolve(self._by_kid[kid], active=True)])

    def to_json(self) -> str:
        keys: list[dict[str, object]] = []
        for k in self._keys:
            entry: dict[str, object] = {
                "kid": k.kid,
                "secret": _b64encode(k.secret),
                "created": k.created,
            }
            if not k.active:
                entry["inactive"] = True
            keys.append(entry)
        return json.dumps({"version": 1, "keys": keys}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> KeyRing:
        """
        Parse a key ring document.

        :raises KeyRingError: naming C{source} when it is not a valid ring.
        """
        try:
            document = json.loads(text)
            if not isinstance(document, Mapping) or document.get("version") != 1:
                raise ValueError("not a version 1 key ring")
            keys = []
            for entry in document["keys"]:
                secret = _b64decode(entry["secret"])
                if len(secret) != _KEY_BYTES:
                    raise ValueError("a key is not 32 bytes")
                kid = entry["kid"]
                if not isinstance(kid, str) or not kid or len(kid) > 64:
                    raise ValueError("a key id is not a short string")
                inactive = entry.get("inactive", False)
                if not isinstance(inactive, bool):
                    raise ValueError("a key's inactive flag is not true or false")
                keys.append(
                    MasterKey(
                        kid=kid, secret=secret, created=int(entry["created"]), active=not inactive
                    )
                )
        except (ValueError, KeyError, TypeError) as e:
            # json.JSONDecodeError is a ValueError; its text quotes no content.
            reason = str(e) if not isinstance(e, KeyError) else f"missing field {e}"
            raise KeyRingError(f"corrupt key ring in {source}: {reason}") from None
        try:
            return cls(keys)
        except KeyRingError as e:
            # No key at all means no current key to seal with (LG-04).
            raise KeyRingError(f"corrupt key ring in {source}: {e}") from None


def _write_temporary(path: Path, ring: KeyRing) -> Path:
    """
    Write C{ring}, complete and synced, to a new private (0600) file beside
    C{path}, under a name no other process or thread uses; return its path.
    """
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(ring.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_keyring(path: Path, ring: KeyRing) -> None:
    """
    Write C{ring} to C{path} atomically, readable by the owner only (0600).
    """
    tmp = _write_temporary(path, ring)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def create_keyring(path: Path, ring: KeyRing) -> KeyRing:
    """
    Make C{ring} the key ring at C{path} unless one is there already, and
    return the ring that is there.

    Two processes starting at once on a fresh state directory must end up
    with one key ring, or each would seal what the other cannot open.  The
    file appears complete or not at all: it is written under a temporary
    name and hard-linked to C{path}, which fails if C{path} exists; the
    loser reads the winner's ring.  Where hard links are not supported, an
    exclusive create stands in, and the loser waits (up to a second) for
    the winner to finish writing.
    """
    tmp = _write_temporary(path, ring)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return read_keyring_file(path)
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        return _create_exclusively(path, ring)
    finally:
        _unlink_quietly(tmp)
    return ring


#: What os.link fails with on file systems without hard links.
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}


def _create_exclusively(path: Path, ring: KeyRing, patience: float = 1.0) -> KeyRing:
    """`create_keyring` by O_CREAT|O_EXCL on C{path} itself."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        deadline = time.monotonic() + patience
        while True:
            try:
                return read_keyring_file(path)
            except KeyRingError:
                # The winner may still be writing it; a corrupt ring stays corrupt.
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(ring.to_json())
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quietly(path)
        raise
    return ring


def read_keyring_file(path: Path) -> KeyRing:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise KeyRingError(f"cannot read key ring {path}: {e.strerror}") from None
    return KeyRing.from_json(text, str(path))


def load_or_create_keyring(
    state_dir: Path,
    key_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> KeyRing:
    """
    The daemon's key ring, from the first source that exists:

      1. C{MAILMCP_KEYS} in the environment (the key ring JSON itself);
      2. C{key_file} (e.g. a mounted container secret), read-only;
      3. C{state_dir/keys.json}, created with a fresh key on first start.

    Keys are never taken from the command line, where ``ps`` shows them.
    """
    environ = os.environ if environ is None else environ
    inline = environ.get("MAILMCP_KEYS")
    if inline is not None:
        if not inline.strip():
            # Set but empty (a secret that did not render): refuse rather
            # than quietly make a new ring that no other replica shares.
            raise KeyRingError("MAILMCP_KEYS is set but empty")
        return KeyRing.from_json(inline, "MAILMCP_KEYS")
    if key_file is not None:
        return read_keyring_file(key_file)
    path = state_dir / KEYRING_FILENAME
    if path.exists():
        return read_keyring_file(path)
    try:
        return create_keyring(path, KeyRing([new_master_key()]))
    except OSError as e:
        raise KeyRingError(f"cannot create key ring {path}: {e.strerror}") from None


def _save(path: Path, ring: KeyRing) -> KeyRing:
    try:
        write_keyring(path, ring)
    except OSError as e:
        raise KeyRingError(f"cannot write key ring {path}: {e.strerror}") from None
    return ring


def add_key(state_dir: Path, key_file: Path | None = None, active: bool = True) -> KeyRing:
    """
    Rotate: append a new key to the key ring file and return the ring.
    Everything sealed under the older keys stays valid.  With
    C{active=False} the new key only decrypts until `activate_key`.
    """
    path = key_file if key_file is not None else state_dir / KEYRING_FILENAME
    if path.exists():
        ring = read_keyring_file(path).with_new_key(active=active)
    elif not active:
        raise KeyRingError(f"no key ring at {path} to add an inactive key to")
    else:
        ring = KeyRing([new_master_key()])
    return _save(path, ring)


def activate_key(state_dir: Path, kid: str, key_file: Path | None = None) -> KeyRing:
    """Make key C{kid} of the key ring file the current (encrypting) key."""
    path = key_file if key_file is not None else state_dir / KEYRING_FILENAME
    return _save(path, read_keyring_file(path).with_active(kid))
