"""
Sealed tokens: JWE compact serialisation, ``alg=dir``, ``enc=A256GCM``.

Every token kind (client id, authorization code, access token, refresh token,
...) is sealed under its own HKDF subkey of the key ring, and carries its kind
again inside as ``typ``, so one kind can never be replayed as another.

The decoder is deliberately strict and cheap to reject with: a size cap,
compact form only, the protected header pinned to exactly
``{"alg": "dir", "enc": "A256GCM", "kid": <known>}``, then authenticated
decryption, then the claims: the right ``typ`` and, for every kind but
client ids (which have no lifetime), an integer ``iat`` not in the future
and an integer ``exp`` not in the past.  Every failure is the same
`InvalidToken`, whose message says nothing about which check failed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from jwcrypto import jwe, jwk
from jwcrypto.common import JWException
from twisted.internet.interfaces import IReactorTime

from ._keyring import KeyRing

MAX_TOKEN_LENGTH = 8192
_ALG = "dir"
_ENC = "A256GCM"
#: Kinds sealed without a lifetime (a client id lives as long as its key).
#: Every other kind must carry an integer ``exp``.
NON_EXPIRING_KINDS = frozenset({"client"})
#: How far in the future an ``iat`` may lie (clock skew between replicas).
MAX_CLOCK_SKEW = 60


class InvalidToken(Exception):
    """The token is missing, malformed, forged, of the wrong kind or expired."""

    def __init__(self) -> None:
        super().__init__("invalid_token")


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TokenCodec:
    """
    Seals and opens tokens with the key ring, reading time from C{clock}.

    :param keyring: the master keys.
    :param clock: where "now" comes from (the reactor, or a test ``Clock``).
    """

    def __init__(self, keyring: KeyRing, clock: IReactorTime) -> None:
        self._keyring = keyring
        self._clock = clock
        self._jwk_cache: dict[tuple[str, str], jwk.JWK] = {}

    @property
    def keyring(self) -> KeyRing:
        return self._keyring

    @property
    def clock(self) -> IReactorTime:
        """Where "now" comes from."""
        return self._clock

    def now(self) -> float:
        return self._clock.seconds()

    def _key(self, kid: str, purpose: str) -> jwk.JWK:
        cached = self._jwk_cache.get((kid, purpose))
        if cached is None:
            raw = self._keyring.subkey(kid, "token/" + purpose)
            cached = jwk.JWK(kty="oct", k=base64.urlsafe_b64encode(raw).rstrip(b"=").decode())
            self._jwk_cache[(kid, purpose)] = cached
        return cached

    def seal(self, typ: str, claims: Mapping[str, Any], lifetime: float | None) -> str:
        """
        Seal C{claims} as a token of kind C{typ}.

        :param lifetime: seconds until it expires, or L{None} for a token that
            does not expire by itself (a client id).
        """
        now = int(self.now())
        body = dict(claims)
        body["typ"] = typ
        body["iat"] = now
        if lifetime is not None:
            body["exp"] = now + int(lifetime)
        kid = self._keyring.current_kid
        token = jwe.JWE(
            json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8"),
            protected=json.dumps({"alg": _ALG, "enc": _ENC, "kid": kid}),
        )
        token.add_recipient(self._key(kid, typ))
        return str(token.serialize(compact=True))

    def open(self, typ: str, token: str | bytes | None) -> dict[str, Any]:
        """
        Verify and decrypt a token of kind C{typ}.

        :raises InvalidToken: for any defect whatsoever.
        """
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidToken() from None
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken()
        parts = token.split(".")
        if len(parts) != 5 or parts[1] != "":
            raise InvalidToken()
        try:
            header = json.loads(_b64url_decode(parts[0]))
        except (ValueError, binascii.Error):
            raise InvalidToken() from None
        if (
            not isinstance(header, dict)
            or set(header) != {"alg", "enc", "kid"}
            or header["alg"] != _ALG
            or header["enc"] != _ENC
            or not isinstance(header["kid"], str)
            or not self._keyring.has(header["kid"])
        ):
            raise InvalidToken()
        envelope = jwe.JWE()
        envelope.allowed_algs = [_ALG, _ENC]
        try:
            envelope.deserialize(token, key=self._key(header["kid"], typ))
            claims = json.loads(envelope.payload)
        except (JWException, ValueError, TypeError, binascii.Error):
            raise InvalidToken() from None
        if not isinstance(claims, dict) or claims.get("typ") != typ:
            raise InvalidToken()
        exp = claims.get("exp")
        if typ in NON_EXPIRING_KINDS:
            # A client id has no time semantics: it lives as long as its key.
            if exp is not None and (type(exp) is not int or exp <= self.now()):
                raise InvalidToken()
            return claims
        now = self.now()
        # TK-08: seal() always writes an integer iat and exp; an iat from the
        # future was not made by this clock (or a replica's, within the skew).
        iat = claims.get("iat")
        if type(iat) is not int or iat > now + MAX_CLOCK_SKEW:
            raise InvalidToken()
        if type(exp) is not int or exp <= now:
            raise InvalidToken()
        return claims
