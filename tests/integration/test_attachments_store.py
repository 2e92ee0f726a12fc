"""
The attachment stores against real servers: the local store served over
real HTTP by the daemon's download resource, and the S3 store against the
harness's SeaweedFS (which checks SigV4 signatures).  One suite, run against
both stores (the ``world`` fixture is parametrized).

Mail comes from the real Dovecot through the real IMAP pool; a loopback
"sink" HTTP server counts every connection anyone makes to it, to prove
that refused attachment URLs cause no outbound request at all.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from mailmcp._account import MailAccount
from mailmcp._attachments import (
    AttachmentDownloads,
    AttachmentRefused,
    LocalAttachmentStore,
    S3AttachmentStore,
    S3Settings,
    make_s3_client,
)
from mailmcp._attachments._helpers import resolve_attachment_urls
from mailmcp._clients import MailServer
from mailmcp._http import MailMCPSite
from mailmcp._imap import IMAPPool
from mailmcp._keyring import KeyRing, new_master_key
from mailmcp._mailbox_api import IMAPSession
from mailmcp._smtp import SMTPSender
from mailmcp._tls import MailTLS
from mailmcp._toolkit import ToolContext, ToolError, ToolServices
from mailmcp._tools._attachments import AttachmentLinkInput, get_mail_attachment_link
from mailmcp._tools._writing import SendInput, send_mail_message
from mailmcp._web import Router
from mailmcp.testing import tool_services
from tests.harness import Services, free_port

pytestmark = pytest.mark.integration

S3_ENV = {"AWS_ACCESS_KEY_ID": "testkey", "AWS_SECRET_ACCESS_KEY": "testsecret", "AWS_REGION": "us-east-1"}


class ShiftedReactor:
    """The real reactor, with a clock that a test can move forward (expiry)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def seconds(self) -> float:
        return float(reactor.seconds()) + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class _SinkResource(resource.Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        if request.path.startswith(b"/redirect"):
            request.setResponseCode(302)
            request.setHeader(b"location", b"http://169.254.169.254/latest/meta-data/")
            return b""
        return b"SINK"


class SinkSite(server.Site):
    """An HTTP server that counts every TCP connection made to it."""

    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


@pytest.fixture
def sink() -> Iterator[tuple[SinkSite, int]]:
    site = SinkSite(_SinkResource())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    yield site, port.getHost().port
    pytest_twisted.blockon(port.stopListening())


_SPARE: list[MailAccount] = []


def fresh_account(services: Services) -> MailAccount:
    """
    A brand-new Dovecot user with IMAPS and SMTPS on the harness servers.
    Dovecot re-reads its passwd-file at most once a second, so users are
    made a batch at a time, a second before they are needed.
    """
    if not _SPARE:
        for _ in range(24):
            _SPARE.append(_new_account(services))
        time.sleep(1.2)
    return _SPARE.pop()


def _new_account(services: Services) -> MailAccount:
    email = f"a{uuid.uuid4().hex[:10]}@example.test"
    password = "pw-" + uuid.uuid4().hex[:8]
    services.add_user(email, password)
    return MailAccount(
        owner="grant-" + uuid.uuid4().hex,
        email=email,
        full_name="Attachment Tester",
        imap=MailServer(host="localhost", port=services.imaps_port, security="tls"),
        imap_username=email,
        imap_password=password,
        smtp=MailServer(host="localhost", port=services.smtps_port, security="tls"),
        smtp_username=email,
        smtp_password=password,
    )


@attrs.define
class World:
    """One store of the given kind, with everything a test needs around it."""

    kind: str
    store: Any
    shifted: ShiftedReactor
    services: ToolServices
    harness: Services
    s3_client: Any = None
    s3_calls: list[str] = attrs.Factory(list)
    s3_threads: list[str] = attrs.Factory(list)
    write_threads: list[str] = attrs.Factory(list)

    def ctx(self, account: MailAccount) -> ToolContext:
        return ToolContext(account=account, services=self.services)

    async def count_objects(self) -> int:
        if self.kind == "local":
            return sum(1 for p in self.store.root.rglob("*") if p.is_file())
        response = await threads.deferToThread(
            self.s3_client.list_objects_v2, Bucket=self.store.bucket, Prefix=self.store.prefix
        )
        return int(response.get("KeyCount", 0))


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


def multipart(payload: bytes, filename: str, subtype: str = "octet-stream", to: str = "x@example.test") -> bytes:
    message = MIMEMultipart()
    message["From"] = "Sender <sender@example.test>"
    message["To"] = to
    message["Subject"] = "with attachment"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@example.test>"
    message.attach(MIMEText("See the attachment.\n"))
    part = MIMEApplication(payload, _subtype=subtype)
    part.add_header("Content-Disposition", "attachment", filename=("utf-8", "", filename))
    message.attach(part)
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def link_for(world: World, account: MailAccount, part: str = "2", **kw: Any) -> Any:
    return await get_mail_attachment_link(
        world.ctx(account), AttachmentLinkInput(folder="INBOX", uid=kw.pop("uid", 1), part=part, **kw)
    )


async def download(url: str) -> tuple[int, Any, bytes]:
    """GET with a bare Agent: no redirects followed, no content decoding, no connection reuse."""
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await agent.request(b"GET", url.encode("ascii"))
    body = await readBody(response)
    # Twisted's client moves Content-Length out of the headers into .length.
    headers = response.headers.copy()
    if isinstance(response.length, int):
        headers.setRawHeaders("content-length", [str(response.length)])
    return response.code, headers, body


@pytest_twisted.ensureDeferred
async def test_binary_round_trip_from_imap(world: World) -> None:
    """A binary attachment goes IMAP -> store -> link -> HTTP download byte for byte, as an attachment."""
    account = fresh_account(world.harness)
    payload = os.urandom(300_000) + bytes(range(256))
    world.harness.deliver(account.email, multipart(payload, "../Quarterly résumé.bin"))
    out = await link_for(world, account)
    assert out.size == len(payload) and out.filename == "Quarterly résumé.bin"
    code, headers, body = await download(out.url)
    assert code == 200
    assert body == payload
    disposition = headers.getRawHeaders("content-disposition")[0]
    assert disposition.startswith("attachment;")
    assert unquote(disposition.split("''", 1)[1]) == "Quarterly résumé.bin"
    assert headers.getRawHeaders("content-type") == ["application/octet-stream"]
    assert "Quarterly" not in urlsplit(out.url).path
    if world.kind == "local":
        assert headers.getRawHeaders("x-content-type-options") == ["nosniff"]
        assert "no-store" in headers.getRawHeaders("cache-control")[0]
        assert headers.getRawHeaders("content-length") == [str(len(payload))]


@pytest_twisted.ensureDeferred
async def test_active_content_is_served_inert(world: World) -> None:
    """An HTML attachment is downloaded as application/octet-stream, never rendered."""
    account = fresh_account(world.harness)
    world.harness.deliver(account.email, multipart(b"<script>alert(1)</script>", "x.html", subtype="xhtml+xml"))
    out = await link_for(world, account)
    code, headers, body = await download(out.url)
    assert code == 200 and body == b"<script>alert(1)</script>"
    assert headers.getRawHeaders("content-type") == ["application/octet-stream"]
    assert headers.getRawHeaders("content-disposition")[0].startswith("attachment;")


@pytest_twisted.ensureDeferred
async def test_second_read_creates_no_object(world: World) -> None:
    """Reading the same attachment again (even from a fresh store instance) stores nothing new."""
    account = fresh_account(world.harness)
    world.harness.deliver(account.email, multipart(os.urandom(50_000), "a.bin"))
    first = await link_for(world, account)
    second = await link_for(world, account)
    assert world.store.puts == 1
    assert await world.count_objects() == 1
    assert first.sha256 == second.sha256
    if world.kind == "s3":
        assert world.s3_calls.count("PutObject") == 1
        # A restarted process (empty cache) asks HEAD and uploads nothing.
        world.store._known.clear()
        await link_for(world, account)
        assert world.s3_calls.count("PutObject") == 1 and world.s3_calls.count("HeadObject") == 2
    assert await world.count_objects() == 1


@pytest_twisted.ensureDeferred
async def test_uploads_run_on_the_pool_not_the_reactor(world: World) -> None:
    """Every upload (boto3 PutObject, or the file write) runs on the store's pool threads."""
    account = fresh_account(world.harness)
    world.harness.deliver(account.email, multipart(b"thread check", "t.bin"))
    await link_for(world, account)
    seen = world.s3_threads if world.kind == "s3" else world.write_threads
    assert seen, "no upload observed"
    main = threading.main_thread().name
    assert all(name != main and name.startswith("PoolThread-att-int") for name in seen), seen


@pytest_twisted.ensureDeferred
async def test_resolve_own_link(world: World) -> None:
    """The owner's own link resolves to the stored bytes with its filename, without fetching the URL."""
    account = fresh_account(world.harness)
    payload = os.urandom(20_000)
    world.harness.deliver(account.email, multipart(payload, "doc.pdf", subtype="pdf"))
    out = await link_for(world, account)
    resolved = await world.store.resolve(account.owner, out.url)
    assert resolved.data == payload
    assert resolved.filename == "doc.pdf"
    assert resolved.content_type == "application/pdf"


@pytest_twisted.ensureDeferred
async def test_url_matrix_refused_with_zero_outbound(world: World, sink: tuple[SinkSite, int]) -> None:
    """
    Every URL of the attack matrix (TL-A1, TL-A2, TL-A4), another user's
    link, an expired or tampered link and a URL presigned by someone else is
    refused; the sink sees no connection and the S3 API is not called.
    """
    site, port = sink
    alice, bob = fresh_account(world.harness), fresh_account(world.harness)
    world.harness.deliver(alice.email, multipart(b"alice's", "a.bin"))
    world.harness.deliver(bob.email, multipart(b"bob's", "b.bin"))
    mine = (await link_for(world, alice)).url
    bobs = (await link_for(world, bob)).url
    short = (await link_for(world, alice, lifetime=60)).url
    ours = urlsplit(mine)
    matrix = [
        "file:///etc/passwd", "|id", "/etc/passwd", f"ftp://127.0.0.1:{port}/x",
        f"gopher://127.0.0.1:{port}/_x", f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/redirect", f"http://[::1]:{port}/",
        "http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/",
        f"http://0x7f000001:{port}/", f"http://2130706433:{port}/", f"http://017700000001:{port}/",
        "http://100.64.0.1/", "http://metadata.google.internal/", f"https://127.0.0.1:{port}/",
        "data:text/plain;base64,SGVsbG8=", "javascript:alert(1)",
        ours._replace(netloc=f"127.0.0.1:{port}").geturl(),
        f"http://127.0.0.1:{port}/redirect?to=" + quote(mine, safe=""),
        mine.replace("://", "://user@", 1),
        bobs,
        mine[:-4] + ("AAAA" if not mine.endswith("AAAA") else "BBBB"),
    ]
    if world.kind == "s3":
        forger, _ = make_s3_client(dict(S3_ENV, AWS_SECRET_ACCESS_KEY="not-ours",
                                        MAILMCP_S3_ENDPOINT=world.harness.s3_endpoint))
        key = unquote(ours.path).split("/", 2)[2]
        matrix.append(forger.generate_presigned_url(
            "get_object", Params={"Bucket": "attachments", "Key": key}, ExpiresIn=60))
        matrix.append(world.s3_client.generate_presigned_url(
            "get_object", Params={"Bucket": "attachments", "Key": key}, ExpiresIn=60))
    calls_before = list(world.s3_calls)
    world.shifted.offset = 61
    matrix.append(short)
    for url in matrix:
        with pytest.raises(AttachmentRefused):
            await world.store.resolve(alice.owner, url)
        with pytest.raises(ToolError):
            await resolve_attachment_urls(world.ctx(alice), [url])
    assert world.s3_calls == calls_before
    assert site.connections == 0
    # The sink does count: one real request to it is seen.
    await download(f"http://127.0.0.1:{port}/")
    assert site.connections == 1


@pytest_twisted.ensureDeferred
async def test_expired_link_not_downloadable(world: World) -> None:
    """An expired link no longer downloads (410 locally; SeaweedFS's own signature check for S3)."""
    account = fresh_account(world.harness)
    world.harness.deliver(account.email, multipart(b"short lived", "s.bin"))
    if world.kind == "local":
        out = await link_for(world, account, lifetime=60)
        world.shifted.offset = 61
        code, _, _ = await download(out.url)
        assert code == 410
    else:
        obj = await world.store.put(account.owner, b"short lived", "application/octet-stream")
        url = world.store.link(account.owner, obj, "s.bin", "application/octet-stream", lifetime=1)
        await deferLater(reactor, 2.2, lambda: None)
        code, _, body = await download(url)
        assert code == 403 and b"expired" in body.lower()
        tampered = url.replace("s.bin", "t.bin")
        code, _, _ = await download(tampered)
        assert code == 403


async def wait_for_message(world: World, account: MailAccount, subject: str) -> int:
    async def look(session: IMAPSession) -> list[int]:
        await session.examine("INBOX")
        return await session.uid_search([b"SUBJECT", f'"{subject}"'.encode()])

    for _ in range(100):
        uids = await world.services.imap.run(account, look, read_only=True)
        if uids:
            return uids[-1]
        await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("the sent message never arrived")


@pytest_twisted.ensureDeferred
async def test_forward_attachment_by_link(world: World) -> None:
    """A link from one message becomes a byte-exact attachment of a sent message in the recipient's mailbox."""
    alice, bob = fresh_account(world.harness), fresh_account(world.harness)
    payload = os.urandom(40_000)
    world.harness.deliver(alice.email, multipart(payload, "forward-me.bin"))
    link = (await link_for(world, alice)).url
    subject = "fwd " + uuid.uuid4().hex[:8]
    result = await send_mail_message(world.ctx(alice), SendInput(
        to=[bob.email], subject=subject, text_body="Forwarding.", attachment_urls=[link]))
    assert result is not None
    uid = await wait_for_message(world, bob, subject)
    received = await link_for(world, bob, uid=uid)
    assert received.filename == "forward-me.bin"
    assert (await world.store.resolve(bob.owner, received.url)).data == payload


@pytest_twisted.ensureDeferred
async def test_storing_again_refreshes_an_old_object(world: World) -> None:
    """
    An object stored long ago is refreshed when stored again (S3: written
    again, so the bucket's lifecycle age restarts; local: its mtime, which
    the sweeper reads), still as one object.
    """
    account = fresh_account(world.harness)
    obj = await world.store.put(account.owner, b"aging content", "text/plain")
    if world.kind == "s3":
        await world.store.put(account.owner, b"aging content", "text/plain")
        assert world.s3_calls.count("PutObject") == 1
        world.store.refresh_after = 0.0
        again = await world.store.put(account.owner, b"aging content", "text/plain")
        assert world.s3_calls.count("PutObject") == 2 and again.key == obj.key
    else:
        path = world.store.root / obj.key
        os.utime(path, (1_000_000, 1_000_000))
        await world.store.put(account.owner, b"aging content", "text/plain")
        assert abs(path.stat().st_mtime - world.shifted.seconds()) < 5
        assert world.store.puts == 1
    assert await world.count_objects() == 1


@pytest_twisted.ensureDeferred
async def test_s3_down_is_a_clear_error_not_a_crash(services: Services, tmp_path: Path) -> None:
    """
    With S3 unreachable (S3-02), storing fails with "storage unavailable"
    after botocore's bounded retries, the link tool still returns an inline
    text attachment (url null, error set), and nothing hangs.
    """
    from mailmcp._attachments import AttachmentError

    pool = ThreadPool(minthreads=0, maxthreads=2, name="att-down")
    pool.start()
    try:
        client, credentials = make_s3_client(dict(S3_ENV, MAILMCP_S3_ENDPOINT=f"http://127.0.0.1:{free_port()}"))
        store = S3AttachmentStore(client, credentials, S3Settings("s3://attachments/down"),
                                  KeyRing([new_master_key()]), reactor, pool)
        with pytest.raises(AttachmentError, match="unavailable"):
            await store.put("grant-x", b"data", "text/plain")
        account = fresh_account(services)
        services.deliver(account.email, multipart(b"binary", "a.bin"))
        text_message = MIMEMultipart()
        text_message["Subject"] = "notes"
        text_message.attach(MIMEText("body\n"))
        notes = MIMEText("plain words\n")
        notes.add_header("Content-Disposition", "attachment", filename="notes.txt")
        text_message.attach(notes)
        services.deliver(account.email, text_message.as_bytes().replace(b"\n", b"\r\n"))
        imap = IMAPPool(reactor, MailTLS(services.ca_file), command_timeout=15.0)
        ctx = ToolContext(account=account, services=tool_services(reactor=reactor, imap=imap,
                                                                  attachments=store))
        with pytest.raises(ToolError, match="unavailable"):
            await get_mail_attachment_link(ctx, AttachmentLinkInput(folder="INBOX", uid=1, part="2"))
        inline = await get_mail_attachment_link(
            ctx, AttachmentLinkInput(folder="INBOX", uid=2, part="2", inline_text=True))
        assert inline.url is None and "unavailable" in (inline.error or "")
        assert inline.text == "plain words\r\n" and inline.filename == "notes.txt"
        await imap.stopService() if imap.running else None
    finally:
        pool.stop()
