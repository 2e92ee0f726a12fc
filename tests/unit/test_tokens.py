"""
The sealed-token codec: round trip, expiry read from an injected Clock, and
every kind of forgery or malformation mapped to the same `InvalidToken`
(wrong kind, tampered header / IV / ciphertext / tag, ``alg=none`` and other
algorithms, unknown kid, oversize, JSON serialization), plus rotation.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from jwcrypto import jwe, jwk
from twisted.internet.task import Clock

from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.oauth._tokens import MAX_TOKEN_LENGTH, InvalidToken, TokenCodec


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1_800_000_000)
    return c


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing([new_master_key()])


@pytest.fixture
def codec(ring: KeyRing, clock: Clock) -> TokenCodec:
    return TokenCodec(ring, clock)


def seal_raw(
    codec: TokenCodec, typ: str, claims: dict[str, Any], header: dict[str, Any] | None = None,
    key_purpose: str | None = None,
) -> str:
    """Seal with a chosen protected header / subkey, bypassing TokenCodec.seal."""
    kid = codec.keyring.current_kid
    raw = codec.keyring.subkey(kid, "token/" + (key_purpose or typ))
    key = jwk.JWK(kty="oct", k=b64(raw))
    protected = header if header is not None else {"alg": "dir", "enc": "A256GCM", "kid": kid}
    token = jwe.JWE(json.dumps(claims).encode(), protected=json.dumps(protected))
    token.add_recipient(key)
    return str(token.serialize(compact=True))


def test_round_trip(codec: TokenCodec, clock: Clock) -> None:
    """A sealed token opens to its claims plus typ, iat and exp."""
    token = codec.seal("access", {"sub": "alice", "n": [1, 2]}, 60)
    claims = codec.open("access", token)
    assert claims == {"sub": "alice", "n": [1, 2], "typ": "access",
                      "iat": 1_800_000_000, "exp": 1_800_000_060}


def test_compact_five_parts_dir_a256gcm(codec: TokenCodec, ring: KeyRing) -> None:
    """The token is compact JWE with alg dir, enc A256GCM, the current kid, no encrypted key."""
    token = codec.seal("access", {}, 60)
    parts = token.split(".")
    assert len(parts) == 5
    assert parts[1] == ""
    assert json.loads(unb64(parts[0])) == {"alg": "dir", "enc": "A256GCM", "kid": ring.current_kid}


def test_claims_are_not_readable(codec: TokenCodec) -> None:
    """The payload is encrypted: a claim value does not appear in the token."""
    token = codec.seal("access", {"password": "hunter2-hunter2"}, 60)
    assert "hunter2" not in token
    assert b"hunter2" not in b"".join(unb64(p) for p in token.split(".") if p)


def test_bytes_token_accepted(codec: TokenCodec) -> None:
    """An ASCII bytes token (as from a header) opens like the str."""
    token = codec.seal("access", {"a": 1}, 60)
    assert codec.open("access", token.encode())["a"] == 1


def test_no_lifetime_means_no_exp(codec: TokenCodec, clock: Clock) -> None:
    """A token sealed without a lifetime (a client id) has no exp and never expires."""
    token = codec.seal("client", {}, None)
    clock.advance(10 * 365 * 86400)
    assert "exp" not in codec.open("client", token)


def test_expiry(codec: TokenCodec, clock: Clock) -> None:
    """A token opens until its exp, and not at or after it."""
    token = codec.seal("code", {}, 60)
    clock.advance(59)
    codec.open("code", token)
    clock.advance(1)
    with pytest.raises(InvalidToken):
        codec.open("code", token)


def test_non_integer_exp_refused(codec: TokenCodec) -> None:
    """An exp that is not an integer (e.g. a string) is refused, not compared loosely."""
    token = seal_raw(codec, "access", {"typ": "access", "exp": "9999999999"})
    with pytest.raises(InvalidToken):
        codec.open("access", token)


def test_wrong_kind(codec: TokenCodec) -> None:
    """A token of one kind never opens as another (different subkey)."""
    token = codec.seal("refresh", {}, 60)
    with pytest.raises(InvalidToken):
        codec.open("access", token)


def test_wrong_typ_claim_under_right_key(codec: TokenCodec) -> None:
    """Even under the right subkey, the typ claim inside must match."""
    token = seal_raw(codec, "access", {"typ": "refresh"})
    with pytest.raises(InvalidToken):
        codec.open("access", token)
    missing = seal_raw(codec, "access", {"sub": "x"})
    with pytest.raises(InvalidToken):
        codec.open("access", missing)


def test_claims_not_an_object(codec: TokenCodec) -> None:
    """A payload that is JSON but not an object is refused."""
    kid = codec.keyring.current_kid
    key = jwk.JWK(kty="oct", k=b64(codec.keyring.subkey(kid, "token/access")))
    token = jwe.JWE(b"[1,2]", protected=json.dumps({"alg": "dir", "enc": "A256GCM", "kid": kid}))
    token.add_recipient(key)
    with pytest.raises(InvalidToken):
        codec.open("access", token.serialize(compact=True))


def _replace_part(token: str, index: int, new: str) -> str:
    parts = token.split(".")
    parts[index] = new
    return ".".join(parts)


def _flip(part: str) -> str:
    data = bytearray(unb64(part))
    data[len(data) // 2] ^= 0x01
    return b64(bytes(data))


@pytest.mark.parametrize(("index", "what"), [(2, "iv"), (3, "ciphertext"), (4, "tag")])
def test_tampered_parts(codec: TokenCodec, index: int, what: str) -> None:
    """Flipping one bit of the IV, ciphertext or tag breaks authentication."""
    token = codec.seal("access", {"sub": "alice"}, 60)
    with pytest.raises(InvalidToken):
        codec.open("access", _replace_part(token, index, _flip(token.split(".")[index])))


def test_tampered_header_is_authenticated(codec: TokenCodec) -> None:
    """
    The protected header is additional authenticated data: re-encoding it
    (same meaning, different bytes) breaks the tag.
    """
    token = codec.seal("access", {}, 60)
    header = json.loads(unb64(token.split(".")[0]))
    reordered = b64(json.dumps(dict(reversed(list(header.items())))).encode())
    with pytest.raises(InvalidToken):
        codec.open("access", _replace_part(token, 0, reordered))


HEADERS: list[dict[str, Any]] = [
    {"alg": "none", "enc": "A256GCM"},
    {"alg": "A256KW", "enc": "A256GCM"},
    {"alg": "RSA-OAEP", "enc": "A256GCM"},
    {"alg": "dir", "enc": "A128GCM"},
    {"alg": "dir", "enc": "A256CBC-HS512"},
    {"alg": "dir", "enc": "A256GCM", "zip": "DEF"},
    {"alg": "dir", "enc": "A256GCM", "cty": "JWT"},
    {"alg": "dir", "enc": "A256GCM", "jku": "https://evil.example/keys"},
]


@pytest.mark.parametrize("header", HEADERS, ids=[json.dumps(h) for h in HEADERS])
def test_header_is_pinned(codec: TokenCodec, header: dict[str, Any]) -> None:
    """Any header other than exactly alg=dir, enc=A256GCM and a kid is refused."""
    token = codec.seal("access", {}, 60)
    forged_header = dict(header)
    if "kid" not in forged_header and header.get("alg") != "none":
        forged_header["kid"] = codec.keyring.current_kid
    forged = _replace_part(token, 0, b64(json.dumps(forged_header).encode()))
    with pytest.raises(InvalidToken):
        codec.open("access", forged)


def test_alg_none_unsigned_token(codec: TokenCodec) -> None:
    """A hand-made alg=none token with a plaintext payload is refused."""
    header = b64(json.dumps({"alg": "none", "enc": "A256GCM", "kid": codec.keyring.current_kid}).encode())
    payload = b64(json.dumps({"typ": "access", "sub": "mallory"}).encode())
    for token in (f"{header}..{payload}..", f"{header}...{payload}.", f"{header}.{payload}"):
        with pytest.raises(InvalidToken):
            codec.open("access", token)


def test_a256kw_token_with_the_right_key_is_refused(codec: TokenCodec) -> None:
    """A genuinely well-formed token under another algorithm (A256KW) is still refused."""
    kid = codec.keyring.current_kid
    token = seal_raw(
        codec, "access", {"typ": "access"}, header={"alg": "A256KW", "enc": "A256GCM", "kid": kid}
    )
    with pytest.raises(InvalidToken):
        codec.open("access", token)


def test_unknown_kid(codec: TokenCodec, clock: Clock) -> None:
    """A token from another key ring (its kid unknown here) is refused."""
    foreign = TokenCodec(KeyRing([new_master_key()]), clock).seal("access", {}, 60)
    with pytest.raises(InvalidToken):
        codec.open("access", foreign)


def test_known_kid_wrong_key(ring: KeyRing, clock: Clock) -> None:
    """Another ring reusing our kid with a different secret cannot forge tokens."""
    impostor_key = new_master_key()
    impostor = KeyRing([type(impostor_key)(kid=ring.current_kid, secret=b"x" * 32, created=0)])
    forged = TokenCodec(impostor, clock).seal("access", {}, 60)
    with pytest.raises(InvalidToken):
        TokenCodec(ring, clock).open("access", forged)


def test_oversize(codec: TokenCodec) -> None:
    """A token longer than the cap is refused before any parsing."""
    token = codec.seal("access", {"pad": "x" * (MAX_TOKEN_LENGTH)}, 60)
    assert len(token) > MAX_TOKEN_LENGTH
    with pytest.raises(InvalidToken):
        codec.open("access", token)
    with pytest.raises(InvalidToken):
        codec.open("access", "a" * (MAX_TOKEN_LENGTH + 1))


def test_near_cap_still_opens(codec: TokenCodec) -> None:
    """A token just under the cap opens (the cap is not off by a lot)."""
    token = codec.seal("access", {"pad": "x" * 5000}, 60)
    assert len(token) <= MAX_TOKEN_LENGTH
    assert codec.open("access", token)["pad"] == "x" * 5000


def test_json_serialization_refused(codec: TokenCodec) -> None:
    """The general or flattened JSON serialization of a valid token is refused."""
    kid = codec.keyring.current_kid
    key = jwk.JWK(kty="oct", k=b64(codec.keyring.subkey(kid, "token/access")))
    token = jwe.JWE(
        json.dumps({"typ": "access"}).encode(),
        protected=json.dumps({"alg": "dir", "enc": "A256GCM", "kid": kid}),
    )
    token.add_recipient(key)
    for text in (token.serialize(), token.serialize(compact=False)):
        with pytest.raises(InvalidToken):
            codec.open("access", text)


@pytest.mark.parametrize(
    "garbage",
    [None, "", ".", "....", "a.b.c.d.e", "a..c.d.e", "!!!..!!!.!!!.!!!", "é..a.b.c", b"\xff\xfe", 42],
)
def test_garbage(codec: TokenCodec, garbage: Any) -> None:
    """Anything malformed is InvalidToken, never another exception."""
    with pytest.raises(InvalidToken):
        codec.open("access", garbage)


def test_header_not_an_object(codec: TokenCodec) -> None:
    """A header that decodes to JSON but not an object is refused."""
    token = codec.seal("access", {}, 60)
    with pytest.raises(InvalidToken):
        codec.open("access", _replace_part(token, 0, b64(b'["dir"]')))


def test_error_says_nothing(codec: TokenCodec) -> None:
    """Every failure has the same message, so nothing tells an attacker which check failed."""
    messages = set()
    for bad in ("", "a.b.c.d.e", codec.seal("refresh", {}, 60)):
        with pytest.raises(InvalidToken) as raised:
            codec.open("access", bad)
        messages.add(str(raised.value))
    assert messages == {"invalid_token"}


def test_rotation_old_tokens_still_open(ring: KeyRing, clock: Clock) -> None:
    """
    After a new key is added, tokens sealed under the old one still open, and
    new tokens are sealed under the new key.
    """
    old_codec = TokenCodec(ring, clock)
    old_token = old_codec.seal("client", {"cid": "1"}, None)
    rotated = ring.with_new_key()
    new_codec = TokenCodec(rotated, clock)
    assert new_codec.open("client", old_token)["cid"] == "1"
    new_token = new_codec.seal("client", {"cid": "2"}, None)
    assert json.loads(unb64(new_token.split(".")[0]))["kid"] == rotated.current_kid
    assert rotated.current_kid != ring.current_kid
    with pytest.raises(InvalidToken):
        old_codec.open("client", new_token)


def test_tokens_differ_each_time(codec: TokenCodec) -> None:
    """Sealing the same claims twice gives different tokens (fresh IV)."""
    assert codec.seal("access", {"a": 1}, 60) != codec.seal("access", {"a": 1}, 60)
