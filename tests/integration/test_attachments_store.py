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
import uuid
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.python.threadpool import ThreadPool

from mailmcp._account import MailAccount
from mailmcp._tls import MailTLS
from mailmcp._toolkit import ToolContext, ToolError
from mailmcp.attachments import AttachmentRefused, S3AttachmentStore, S3Settings, make_s3_client
from mailmcp.attachments._helpers import resolve_attachment_urls
from mailmcp.mail._mailbox_api import IMAPSession
from mailmcp.mail.imap import IMAPPool
from mailmcp.oauth._keyring import KeyRing, new_master_key
from mailmcp.testing import tool_services
from mailmcp.tools._attachments import AttachmentLinkInput, get_mail_attachment_link
from mailmcp.tools._writing import SendInput, send_mail_message
from tests.harness import Services, free_port
from tests.integration.attachments_world import (
    S3_ENV,
    SinkSite,
    World,
    download,
    fresh_account,
    multipart,
)

pytestmark = pytest.mark.integration


async def link_for(world: World, account: MailAccount, part: str = "2", **kw: Any) -> Any:
    return await get_mail_attachment_link(
        world.ctx(account), AttachmentLinkInput(folder="INBOX", uid=kw.pop("uid", 1), part=part, **kw)
    )


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
    from mailmcp.attachments import AttachmentError

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
