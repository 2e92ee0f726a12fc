"""Fixtures several integration modules share: the acceptance deployment and assistants, the attachment world and link sink, the grant store contract's stores, and the writing tools' MCP endpoint."""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool

from mailmcp._tls import MailTLS
from mailmcp.attachments import (
    AttachmentDownloads,
    LocalAttachmentStore,
    S3AttachmentStore,
    S3Settings,
    make_s3_client,
)
from mailmcp.mail._smtp import SMTPSender
from mailmcp.mail.imap import IMAPPool
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.store._redis import RedisGrantStore
from mailmcp.store._sqlite import SQLiteGrantStore
from mailmcp.testing import MemoryGrantStore, tool_services
from mailmcp.web._http import MailMCPSite
from mailmcp.web._router import Router
from tests.harness import Daemon, Services, free_port, generate_client
from tests.integration.acceptance import (
    REDIRECT_URI,
    Assistant,
    fresh_users,
)
from tests.integration.attachments_world import (
    S3_ENV,
    ShiftedReactor,
    SinkSite,
    World,
    _SinkResource,
)
from tests.integration.grant_records import NOW
from tests.integration.mail_live import ScriptedFactory, account
from tests.integration.mcp_loopback import serve_mcp


@pytest.fixture(scope="module")
def deployment(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One daemon (SQLite store, local attachments) for the module, with a confidential and a public client."""
    root = tmp_path_factory.mktemp("acceptance")
    daemon = Daemon.start(root / "state", services)
    try:
        clients = {
            "confidential": generate_client(daemon.state_dir, services),
            "public": generate_client(daemon.state_dir, services, "--public"),
        }
        yield SimpleNamespace(daemon=daemon, clients=clients, root=root)
    finally:
        daemon.stop()


@pytest.fixture
def assistants(tmp_path: Path) -> Iterator[Any]:
    """Start logged-in mcp clients; all are ended afterwards."""
    started: list[Assistant] = []

    def start(daemon: Daemon, client: dict[str, Any], kind: str, mode: str, user: str,
              password: str) -> Assistant:
        config = {
            "base": daemon.base_url,
            "client_id": client["client_id"],
            "client_secret": client.get("client_secret") if kind == "confidential" else None,
            "auth_method": "client_secret_post" if kind == "confidential" else "none",
            "redirect_uri": REDIRECT_URI,
            "user": user,
            "password": password,
            "mode": mode,
        }
        assistant = Assistant(config, tmp_path / f"client-{len(started)}.stderr")
        started.append(assistant)
        return assistant

    yield start
    for assistant in started:
        assistant.close()


@pytest.fixture
def sink() -> Iterator[tuple[SinkSite, int]]:
    site = SinkSite(_SinkResource())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield site, port.getHost().port
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture(params=["local", "s3"])
def world(request: pytest.FixtureRequest, services: Services, tmp_path: Path) -> Iterator[World]:
    pool = ThreadPool(minthreads=0, maxthreads=4, name="att-int")
    pool.start()
    shifted = ShiftedReactor()
    keyring = KeyRing([new_master_key()])
    listening = None
    s3_client = None
    if request.param == "local":
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        store: Any = LocalAttachmentStore(tmp_path / "attachments", keyring, shifted, pool, base_url,
                                          link_lifetime=600)
        site = MailMCPSite(Router([("/attachments/", AttachmentDownloads(store).app.resource())]),
                           max_body=1 << 20, reactor=reactor)
        listening = reactor.listenTCP(port, site, interface="127.0.0.1")
    else:
        harness = request.getfixturevalue("s3")
        env = dict(S3_ENV, MAILMCP_S3_ENDPOINT=harness.s3_endpoint)
        s3_client, credentials = make_s3_client(env)
        store = S3AttachmentStore(s3_client, credentials, S3Settings(f"s3://attachments/t-{uuid.uuid4().hex[:8]}"),
                                  keyring, shifted, pool, link_lifetime=600)
    imap = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=15.0)
    services_ = tool_services(reactor=shifted, imap=imap,
                                 smtp=SMTPSender(reactor, MailTLS(services.ca_file), timeout=30.0),
                                 attachments=store)
    w = World(request.param, store, shifted, services_, services, s3_client)
    if s3_client is not None:
        s3_client.meta.events.register("before-call.s3", lambda model, **kw: w.s3_calls.append(model.name))
        s3_client.meta.events.register(
            "before-call.s3.PutObject", lambda **kw: w.s3_threads.append(threading.current_thread().name)
        )
    else:
        original = store._write

        def spy(*args: Any) -> Any:
            w.write_threads.append(threading.current_thread().name)
            return original(*args)

        store._write = spy
    yield w
    if imap.running or imap.open_connections:
        pytest_twisted.blockon(imap.stopService())
    if listening is not None:
        pytest_twisted.blockon(listening.stopListening())
    pool.stop()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_and_clock(request, tmp_path: Path):
    clock = Clock()
    clock.advance(NOW)
    if request.param == "memory":
        yield MemoryGrantStore(clock), clock
    elif request.param == "sqlite":
        store = SQLiteGrantStore(tmp_path / "grants.sqlite3", clock)
        yield store, clock
        store.close()
    else:
        services = request.getfixturevalue("services")
        store = RedisGrantStore(services.redis_url, clock, prefix=f"test-{secrets.token_hex(4)}:")
        store.connect()
        yield store, clock
        pytest_twisted.blockon(store.disconnect())


@pytest.fixture
def endpoint(services: Services) -> Iterator[Any]:
    """An MCPApp on loopback for a fresh account whose SMTP server is a scripted one."""
    ((user, password),) = fresh_users(services, 1)
    smtp = ScriptedFactory("ok")
    smtp_port = pytest_twisted.blockon(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(smtp))
    acct = account(services, user, password, "plain", smtp_port=smtp_port.getHost().port)
    pool = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=10.0)
    imap_commands: list[Any] = []
    pool.command_observers.append(lambda *event: imap_commands.append(event))
    services_ = tool_services(reactor=reactor, imap=pool,
                             smtp=SMTPSender(reactor, MailTLS(services.ca_file), timeout=10.0))
    url, token, port = serve_mcp(acct, services_)
    yield SimpleNamespace(url=url, token=token, smtp=smtp, pool=pool, imap=imap_commands,
                          user=user, password=password)
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(smtp_port.stopListening())
    pytest_twisted.blockon(pool.stopService())
