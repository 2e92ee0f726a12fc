"""
Unit tests for the attachment store's place in the service tree: the owned
thread pool's lifecycle and what `build_attachments` builds for each
``--attachments`` value.  No sockets: S3 client creation and presigning are
local computations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool

from mailmcp._config import build_config
from mailmcp.attachments import (
    LocalAttachmentStore,
    S3AttachmentStore,
    ThreadPoolService,
    build_attachments,
)


def test_thread_pool_service_owns_the_pool() -> None:
    """The pool starts with the service and is stopped (threads joined) with it."""
    pool = ThreadPool(0, 2, name="svc-test")
    service = ThreadPoolService(pool)
    assert not pool.started
    service.startService()
    assert pool.started
    service.stopService()
    assert pool.joined


def test_local_store_is_built_with_route_and_sweeper(tmp_path: Path) -> None:
    """--attachments local: a local store under the state dir, /attachments/ mounted, pool then sweeper."""
    config = build_config({"state-dir": str(tmp_path)}, [], {})
    built = build_attachments(config, MemoryReactorClock(), environ={})
    assert isinstance(built.store, LocalAttachmentStore)
    assert built.store.root == config.state_dir / "attachments"
    assert [prefix for prefix, _ in built.routes] == ["/attachments/"]
    children = list(built.service)
    assert isinstance(children[0], ThreadPoolService) and len(children) == 2
    assert built.store.link_lifetime == config.attachment_link_lifetime


def test_s3_store_is_built_from_the_environment(tmp_path: Path) -> None:
    """--attachments s3://bucket/prefix: an S3 store from the AWS environment, no local route, no sweeper."""
    config = build_config({"state-dir": str(tmp_path), "attachments": "s3://att-bucket/mail/x"}, [], {})
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "MAILMCP_S3_ENDPOINT": "http://192.0.2.1:9"}
    built = build_attachments(config, MemoryReactorClock(), environ=env)
    assert isinstance(built.store, S3AttachmentStore)
    assert (built.store.bucket, built.store.prefix) == ("att-bucket", "mail/x/")
    assert built.routes == [] and len(list(built.service)) == 1


def test_s3_bad_prefix_exits_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A prefix with unsafe characters stops startup with one line on stderr."""
    config = build_config({"state-dir": str(tmp_path), "attachments": "s3://b/a b"}, [], {})
    with pytest.raises(SystemExit):
        build_attachments(config, MemoryReactorClock(), environ={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    err = capsys.readouterr().err
    assert err.startswith("mailmcp: --attachments:") and err.count("\n") == 1
