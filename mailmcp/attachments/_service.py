"""
The attachment store's place in the service tree: the thread pool it owns,
the sweeper for the local store, and the one function ``_service`` calls.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource

from .._config import Config
from ..interfaces import IAttachmentStore
from ._common import (
    AttachmentError,
    Limits,
)
from ._local import AttachmentDownloads, LocalAttachmentStore
from ._s3 import S3AttachmentStore, S3Settings, make_s3_client

log = Logger()

SWEEP_INTERVAL = 300.0


class ThreadPoolService(Service):
    """
    Owns a thread pool: started with the service, stopped (and its threads
    joined) when the service stops, so no worker outlives the daemon.
    """

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.pool.stop()


class Sweeper:
    """
    Removes expired local objects, on the store's thread pool.  Every error
    is logged and swallowed: a `TimerService` whose callable fails stops for
    good, and a sweeper that silently stops lets the disk fill up.
    """

    def __init__(self, store: LocalAttachmentStore, reactor: Any, pool: ThreadPool) -> None:
        self._store = store
        self._reactor = reactor
        self._pool = pool
        self.runs = 0
        self.removed = 0

    def __call__(self) -> Deferred[None]:
        now = self._reactor.seconds()
        d: Deferred[int] = threads.deferToThreadPool(
            self._reactor, self._pool, self._store.sweep, now
        )
        return d.addCallbacks(self._done, self._failed)

    def _done(self, removed: int) -> None:
        self.runs += 1
        self.removed += removed
        if removed:
            log.info("swept {count} expired attachments", count=removed)

    def _failed(self, failure: Failure) -> None:
        self.runs += 1
        log.failure("attachment sweep failed; will try again", failure)


def sweeper_service(
    sweeper: Sweeper, interval: float = SWEEP_INTERVAL, clock: Any = None
) -> TimerService:
    service = TimerService(interval, sweeper)
    if clock is not None:
        service.clock = clock
    return service


@attrs.define
class Attachments:
    """What ``build_routes`` wires: the store, its service, its HTTP part."""

    store: IAttachmentStore
    service: MultiService
    routes: list[tuple[str, IResource]]


def build_attachments(
    config: Config, reactor: Any, environ: Mapping[str, str] | None = None
) -> Attachments:
    """
    Build the store named by ``--attachments``: ``local`` (files under the
    state directory, served at ``/attachments/``, swept by a timer) or
    ``s3://bucket/prefix`` (credentials from the standard AWS environment).

    :raises SystemExit: (after one line on stderr) when S3 is asked for but
        cannot be set up, e.g. no AWS credentials are found.
    """
    environ = os.environ if environ is None else environ
    limits = Limits(
        max_attachment_bytes=config.attachment_max_bytes,
        max_message_bytes=config.attachments_max_message_bytes,
    )
    pool = ThreadPool(minthreads=0, maxthreads=4, name="mailmcp-attachments")
    service = MultiService()
    service.setName("attachments")
    ThreadPoolService(pool).setServiceParent(service)
    lifetime = int(config.attachment_link_lifetime)
    if config.attachments == "local":
        root = config.state_dir / "attachments"
        root.mkdir(mode=0o700, exist_ok=True)
        local = LocalAttachmentStore(
            root,
            config.keyring,
            reactor,
            pool,
            config.base_url,
            link_lifetime=lifetime,
            limits=limits,
        )
        sweeper_service(Sweeper(local, reactor, pool)).setServiceParent(service)
        return Attachments(
            local, service, [("/attachments/", AttachmentDownloads(local).app.resource())]
        )
    try:
        settings = S3Settings(config.attachments)
        client, credentials = make_s3_client(environ)
        store = S3AttachmentStore(
            client,
            credentials,
            settings,
            config.keyring,
            reactor,
            pool,
            link_lifetime=lifetime,
            limits=limits,
        )
    except (ValueError, AttachmentError) as e:
        # Like a listen failure: one line on stderr and exit status 1, no
        # traceback (this runs inside makeService, past option parsing).
        print(f"mailmcp: --attachments: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info(
        "attachments in S3 bucket {bucket} under {prefix!r}",
        bucket=settings.bucket,
        prefix=settings.prefix,
    )
    return Attachments(store, service, [])
