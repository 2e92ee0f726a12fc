"""
An in-memory `IAttachmentStore` for tests of code that uses the store (the
mail tools).  Same links, same checks and same errors as the local store,
with the objects in a dict and no thread pool.
"""

from __future__ import annotations

import hashlib

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from zope.interface import implementer

from ..attachments._common import (
    AttachmentNotFound,
    AttachmentRefused,
    AttachmentTooLarge,
    Limits,
    ResolvedAttachment,
    StoredObject,
    owner_tag,
    sanitise_filename,
)
from ..attachments._links import EXPIRED, OTHER_OWNER, LinkClaims, LinkCodec
from ..attachments._local import clean_content_type
from ..interfaces import IAttachmentStore
from ..oauth._keyring import KeyRing, new_master_key


@implementer(IAttachmentStore)
class MemoryAttachmentStore:
    """
    :param clock: "now" for link expiry (a fresh `Clock` by default).
    :param base_url: where links pretend to point.
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        keyring: KeyRing | None = None,
        base_url: str = "http://mailmcp.test",
        link_lifetime: int = 3600,
        limits: Limits | None = None,
    ) -> None:
        self._clock = clock if clock is not None else Clock()
        self._keyring = keyring if keyring is not None else KeyRing([new_master_key()])
        self.codec = LinkCodec(self._keyring, self._clock, base_url)
        self.link_lifetime = link_lifetime
        self.limits = limits or Limits()
        self.objects: dict[str, bytes] = {}
        self.puts = 0
        #: URLs given to resolve/check, to show that nothing else looked at them.
        self.checked: list[str] = []

    async def put(self, owner: str, data: bytes, content_type: str) -> StoredObject:
        if len(data) > self.limits.max_attachment_bytes:
            raise AttachmentTooLarge(
                f"attachment of {len(data)} bytes is over the {self.limits.max_attachment_bytes}-byte cap"
            )
        sha = hashlib.sha256(data).hexdigest()
        key = f"{owner_tag(self._keyring, owner)}/{sha}"
        created = key not in self.objects
        if created:
            self.objects[key] = bytes(data)
            self.puts += 1
        return StoredObject(key, len(data), sha, created=created)

    def link(
        self,
        owner: str,
        obj: StoredObject,
        filename: str,
        content_type: str,
        lifetime: float | None = None,
    ) -> str:
        lifetime = self.link_lifetime if lifetime is None else min(lifetime, self.link_lifetime)
        return self.codec.sign(
            LinkClaims(
                owner_tag(self._keyring, owner),
                obj.sha256,
                obj.size,
                sanitise_filename(filename),
                clean_content_type(content_type),
                int(self._clock.seconds() + max(1, lifetime)),
            )
        )

    def check(self, owner: str, url: str) -> LinkClaims:
        self.checked.append(url)
        claims = self.codec.verify_url(url)
        if claims.owner_tag != owner_tag(self._keyring, owner):
            raise AttachmentRefused(OTHER_OWNER)
        return claims

    async def resolve(self, owner: str, url: str) -> ResolvedAttachment:
        claims = self.check(owner, url)
        data = self.objects.get(claims.key)
        if data is None:
            raise AttachmentNotFound(EXPIRED)
        return ResolvedAttachment(data, claims.filename, claims.content_type)
