"""The grant store contract suites' clock start and a grant record factory."""

from __future__ import annotations

import secrets

from mailmcp.oauth._grants import GrantRecord

NOW = 1_800_000_000


def record(grant_id: str | None = None, expires: int = NOW + 60, client: str = "c1") -> GrantRecord:
    return GrantRecord(grant_id=grant_id or secrets.token_hex(16), client_ref=client,
                       sealed=b"\x00\xffsealed" + secrets.token_bytes(20), created=NOW, expires=expires)
