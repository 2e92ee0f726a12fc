"""Forging tokens with a given key and claims, for the token-verification attack tests."""

from __future__ import annotations

import base64
import json
import secrets
import zlib
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(
    key: bytes, header: dict[str, Any], claims: dict[str, Any], *, deflate: bool = False
) -> str:
    """
    A compact ``dir``/A256GCM JWE built by hand (jwcrypto would refuse some
    of these headers on the way out): AES-GCM under C{key} with the encoded
    protected header as AAD, exactly as RFC 7516 §5.1 prescribes.
    """
    protected = b64(json.dumps(header, separators=(",", ":")).encode())
    plaintext = json.dumps(claims, separators=(",", ":")).encode()
    if deflate:
        squeeze = zlib.compressobj(wbits=-15)
        plaintext = squeeze.compress(plaintext) + squeeze.flush()
    iv = secrets.token_bytes(12)
    sealed = AESGCM(key).encrypt(iv, plaintext, protected.encode("ascii"))
    return ".".join([protected, "", b64(iv), b64(sealed[:-16]), b64(sealed[-16:])])
