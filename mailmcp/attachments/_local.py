"""
The embedded attachment store: files under ``<state_dir>/attachments``,
served by the daemon itself at ``/attachments/…``.

Layout: ``<root>/<owner tag>/<sha256 of content>``, files 0600 in 0700
directories.  Nothing in a path comes from an email, so a hostile filename
can neither traverse nor collide.  Every disk operation (hashing included)
runs on the store's thread pool; the reactor thread only signs and checks
links and streams files out with a producer.  A file's mtime is "last
stored"; the sweeper removes files older than the longest link lifetime
plus a grace period, so no live link outlives its object.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import IO, Any

from klein import Klein
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest
from zope.interface import implementer

from ..interfaces import IAttachmentStore
from ..oauth._keyring import KeyRing
from ..web._http import json_body
from ._common import (
    AttachmentNotFound,
    AttachmentRefused,
    AttachmentTooLarge,
    Limits,
    ResolvedAttachment,
    StoredObject,
    content_disposition,
    owner_tag,
    safe_content_type,
    sanitise_filename,
)
from ._links import EXPIRED, OTHER_OWNER, LinkClaims, LinkCodec

log = Logger()

#: How long an object outlives the longest link that may point to it.
RETENTION_GRACE = 300


def clean_content_type(content_type: str | None) -> str:
    """The type recorded in a link: the given one, bounded, or octet-stream."""
    if not content_type or len(content_type) > 200 or not content_type.isascii():
        return "application/octet-stream"
    return " ".join(content_type.split())


@implementer(IAttachmentStore)
class LocalAttachmentStore:
    """
    Attachments as files in the state directory.

    :param root: the directory holding the objects (created 0700 if needed).
    :param keyring: signs links and derives owner tags.
    :param reactor: for `deferToThreadPool` and the time.
    :param pool: the thread pool all file I/O runs on (owned by a service).
    :param base_url: the daemon's public base URL, for the links.
    :param link_lifetime: default and maximum link lifetime in seconds.
    """

    def __init__(
        self,
        root: Path,
        keyring: KeyRing,
        reactor: Any,
        pool: ThreadPool,
        base_url: str,
        *,
        link_lifetime: int = 3600,
        limits: Limits | None = None,
    ) -> None:
        self.root = root
        self._keyring = keyring
        self._reactor = reactor
        self._pool = pool
        self.codec = LinkCodec(keyring, reactor, base_url)
        self.link_lifetime = link_lifetime
        self.limits = limits or Limits()
        self.retention = link_lifetime + RETENTION_GRACE
        #: Objects written since start (a stored-again object does not count).
        self.puts = 0

    def _in_pool(self, f: Any, *args: Any) -> Deferred[Any]:
        return threads.deferToThreadPool(self._reactor, self._pool, f, *args)

    async def put(self, owner: str, data: bytes, content_type: str) -> StoredObject:
        if len(data) > self.limits.max_attachment_bytes:
            raise AttachmentTooLarge(
                f"attachment of {len(data)} bytes is over the {self.limits.max_attachment_bytes}-byte cap"
            )
        tag = owner_tag(self._keyring, owner)
        obj: StoredObject = await self._in_pool(
            self._write, tag, bytes(data), self._reactor.seconds()
        )
        if obj.created:
            self.puts += 1
            log.info(
                "stored attachment {sha:.12} ({size} bytes) for {tag:.8}",
                sha=obj.sha256,
                size=obj.size,
                tag=tag,
            )
        return obj

    def _write(self, tag: str, data: bytes, now: float) -> StoredObject:
        """In the pool: hash, then write unless the same content is there."""
        sha = hashlib.sha256(data).hexdigest()
        directory = self.root / tag
        path = directory / sha
        try:
            if path.stat().st_size == len(data):
                os.utime(path, (now, now))
                return StoredObject(f"{tag}/{sha}", len(data), sha, created=False)
        except FileNotFoundError:
            pass
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = directory / f".{sha}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.utime(tmp, (now, now))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredObject(f"{tag}/{sha}", len(data), sha, created=True)

    def link(
        self,
        owner: str,
        obj: StoredObject,
        filename: str,
        content_type: str,
        lifetime: float | None = None,
    ) -> str:
        lifetime = self.link_lifetime if lifetime is None else min(lifetime, self.link_lifetime)
        claims = LinkClaims(
            owner_tag=owner_tag(self._keyring, owner),
            sha256=obj.sha256,
            size=obj.size,
            filename=sanitise_filename(filename),
            content_type=clean_content_type(content_type),
            expires=int(self._reactor.seconds() + max(1, lifetime)),
        )
        return self.codec.sign(claims)

    def check(self, owner: str, url: str) -> LinkClaims:
        """
        Pure check that C{url} is a live link we issued to C{owner}.

        :raises AttachmentRefused: otherwise.
        """
        claims = self.codec.verify_url(url)
        if claims.owner_tag != owner_tag(self._keyring, owner):
            raise AttachmentRefused(OTHER_OWNER)
        return claims

    async def resolve(self, owner: str, url: str) -> ResolvedAttachment:
        claims = self.check(owner, url)
        if claims.size > self.limits.max_attachment_bytes:
            raise AttachmentTooLarge(
                f"attachment of {claims.size} bytes is over the {self.limits.max_attachment_bytes}-byte cap"
            )
        data: bytes | None = await self._in_pool(self._read, claims)
        if data is None:
            raise AttachmentNotFound(EXPIRED)
        return ResolvedAttachment(data, claims.filename, claims.content_type)

    def _path(self, claims: LinkClaims) -> Path:
        # owner_tag and sha256 were checked to be lower-case hex by the codec.
        return self.root / claims.owner_tag / claims.sha256

    def _read(self, claims: LinkClaims) -> bytes | None:
        try:
            with open(self._path(claims), "rb") as f:
                data = f.read(claims.size + 1)
        except FileNotFoundError:
            return None
        if len(data) != claims.size or hashlib.sha256(data).hexdigest() != claims.sha256:
            return None
        return data

    def open_object(self, claims: LinkClaims) -> IO[bytes] | None:
        """
        Open the object for streaming (an ``open`` is cheap enough for the
        reactor thread; the reading is done by a producer).
        """
        try:
            f = open(self._path(claims), "rb")  # noqa: SIM115 - closed by the download
        except FileNotFoundError:
            return None
        if os.fstat(f.fileno()).st_size != claims.size:
            f.close()
            return None
        return f

    def sweep(self, now: float) -> int:
        """
        In the pool: remove objects last stored before ``now - retention``
        and stale temporary files.  Returns how many files were removed.
        Errors on single files are logged and skipped.
        """
        cutoff = now - self.retention
        removed = 0
        if not self.root.is_dir():
            return 0
        for directory in self.root.iterdir():
            if not directory.is_dir() or directory.is_symlink():
                continue
            for path in directory.iterdir():
                try:
                    if path.lstat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
                except OSError as e:
                    log.warn(
                        "cannot sweep attachment {name}: {error}",
                        name=path.name[:12],
                        error=e.strerror,
                    )
            try:
                directory.rmdir()  # only succeeds when empty
            except OSError:
                pass
        return removed


_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"private, no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; sandbox"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


@implementer(IPushProducer)
class _FileProducer:
    """
    Stream a file into a request in chunks, pausing when the transport's
    buffer is full (push producer), so a large attachment is never held in
    memory whole.  Unlike Twisted's pull producers (``FileSender``), it needs
    no global cooperator, so it also runs under ``StubTreq`` in tests.
    """

    CHUNK = 64 * 1024

    def __init__(self, f: IO[bytes], request: IRequest) -> None:
        self._file = f
        # twisted.web's Request is an IConsumer; IRequest does not say so.
        self._request: Any = request
        self._paused = False
        self._busy = False
        self._done = False
        self.deferred: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        self._request.registerProducer(self, True)
        self._produce()
        return self.deferred

    def _produce(self) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            while not self._paused and not self._done:
                chunk = self._file.read(self.CHUNK)
                if not chunk:
                    self._finish()
                    return
                self._request.write(chunk)
        finally:
            self._busy = False

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._file.close()
        self._request.unregisterProducer()
        self.deferred.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        # The connection went away: stop reading; the request is dead.
        if not self._done:
            self._done = True
            self._file.close()
            self.deferred.callback(None)


def _error(request: IRequest, status: int, error: str) -> bytes:
    body: bytes = json_body(request, status, {"error": error})
    request.setHeader(b"referrer-policy", b"no-referrer")
    return body


class AttachmentDownloads:
    """
    ``GET /attachments/<kid>.<payload>?sig=…``: stream a local object as a
    download.  Possession of an unexpired link is the authorisation, exactly
    as with an S3 presigned URL; the link binds the object, the filename and
    the type, so nothing in the request can change what is served or how.
    """

    app = Klein()

    def __init__(self, store: LocalAttachmentStore) -> None:
        self._store = store

    @app.route("/attachments/<token>", methods=["GET", "HEAD"])
    def download(self, request: IRequest, token: str) -> bytes | Deferred[bytes]:
        sigs = request.args.get(b"sig") or []
        if len(sigs) != 1:
            return _error(request, 404, "not_found")
        try:
            claims = self._store.codec.verify_token(token, sigs[0].decode("ascii", "replace"))
        except AttachmentRefused as e:
            if e.message == EXPIRED:
                return _error(request, 410, "expired")
            return _error(request, 404, "not_found")
        f = self._store.open_object(claims)
        if f is None:
            return _error(request, 410, "expired")
        for name, value in _SECURITY_HEADERS:
            request.setHeader(name, value)
        request.setHeader(b"content-type", safe_content_type(claims.content_type).encode("ascii"))
        request.setHeader(
            b"content-disposition", content_disposition(claims.filename).encode("ascii")
        )
        request.setHeader(b"content-length", str(claims.size).encode("ascii"))
        if request.method == b"HEAD":
            f.close()
            return b""
        log.debug("serving attachment {sha:.12}", sha=claims.sha256)
        return _FileProducer(f, request).start().addCallback(lambda _: b"")
