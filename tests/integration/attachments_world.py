"""An attachment world on SeaweedFS: accounts, a link sink site, multipart messages and downloads."""

from __future__ import annotations

import time
import uuid
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import attrs
from twisted.internet import reactor, threads
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from mailmcp._account import MailAccount
from mailmcp._toolkit import ToolContext, ToolServices
from mailmcp.oauth._clients import MailServer
from tests.harness import Services

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
