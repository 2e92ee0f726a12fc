"""
The S3 attachment store: boto3 on a dedicated thread pool.

boto3 is blocking, so every call that touches the network (``head_object``,
``put_object``, ``get_object``) runs through `deferToThreadPool` on the pool
the store's service owns, and so does hashing the content; the reactor
thread only computes presigned URLs (pure HMAC in botocore) and checks
them.  (With refreshable credentials, such as an instance role, botocore
may refresh them inside a presign; keep them cached by using the default
credential chain, which refreshes well ahead of expiry.)

Keys are ``<prefix>/<owner tag>/<sha256 of content>``: no filename, nothing
from the email, and the same bytes stored twice for one owner are one object.
A process-local set of known keys, backed by ``head_object``, makes reading
the same message again cost no upload.  The filename and content type live
only in the presigned URL (``response-content-disposition`` and
``response-content-type`` are part of what is signed).

``resolve`` accepts a URL only if it is a presigned GET for this bucket,
under the caller's owner tag, unexpired, and carrying a valid SigV4
signature under our own credentials, which we recompute locally.  Only then
is the object read, through the S3 API, never by fetching the URL.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..interfaces import IAttachmentStore
from ..oauth._keyring import KeyRing
from ._common import (
    MAX_URL_LENGTH,
    AttachmentError,
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
from ._links import EXPIRED, NOT_OURS, OTHER_OWNER, TAMPERED

log = Logger()

#: SigV4 presigned URLs cannot live longer than this.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
UNAVAILABLE = "attachment storage is unavailable, try again later"
_PREFIX_CHARS = re.compile(r"[A-Za-z0-9._\-/]*")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_PROBE = "mailmcp-probe-key"
#: An object last written longer ago than this is written again when it is
#: stored again: with a lifecycle rule expiring objects after one day, a
#: fresh link then always has at least 12 hours of object behind it.
REFRESH_AFTER = 12 * 3600.0
_KNOWN_MAX = 100_000


class S3Settings:
    """Bucket and key prefix parsed from ``--attachments s3://bucket/prefix``."""

    def __init__(self, spec: str) -> None:
        parts = urlsplit(spec)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket/prefix URL: {spec!r}")
        self.bucket = parts.netloc
        prefix = parts.path.strip("/")
        if not _PREFIX_CHARS.fullmatch(prefix) or "//" in prefix or ".." in prefix.split("/"):
            raise ValueError("the S3 key prefix may only use letters, digits and ._-/")
        self.prefix = prefix + "/" if prefix else ""


def make_s3_client(environ: Mapping[str, str]) -> tuple[Any, Callable[[], Any]]:
    """
    Build the one boto3 S3 client of the process from the standard AWS
    environment and config files (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
    instance roles, …).  ``MAILMCP_S3_ENDPOINT`` (or ``AWS_ENDPOINT_URL_S3`` /
    ``AWS_ENDPOINT_URL``) points it at an S3-compatible server, which then
    gets path-style addressing unless ``MAILMCP_S3_ADDRESSING_STYLE`` says
    otherwise.  Costs about 0.3 s: call once, at startup.

    :return: the client, and a function giving the current (frozen)
        credentials, used to check our own presigned URLs.
    """
    import boto3
    from botocore.config import Config as BotoConfig

    session = boto3.session.Session(
        aws_access_key_id=environ.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=environ.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=environ.get("AWS_SESSION_TOKEN") or None,
        region_name=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
    )
    endpoint = (
        environ.get("MAILMCP_S3_ENDPOINT")
        or environ.get("AWS_ENDPOINT_URL_S3")
        or environ.get("AWS_ENDPOINT_URL")
        or None
    )
    style = environ.get("MAILMCP_S3_ADDRESSING_STYLE") or ("path" if endpoint else "auto")
    client = session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=session.region_name or "us-east-1",
        config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": style},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        ),
    )
    credentials = session.get_credentials()
    if credentials is None:
        raise AttachmentError("no AWS credentials found for the S3 attachment store")
    return client, credentials.get_frozen_credentials


def _signing_key(secret: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def _canonical_host(scheme: str, netloc: str) -> str:
    netloc = netloc.lower()
    for default in ((":80", "http"), (":443", "https")):
        if netloc.endswith(default[0]) and scheme == default[1]:
            return netloc[: -len(default[0])]
    return netloc


def _filename_from_disposition(value: str) -> str:
    """The filename* (or filename) of a Content-Disposition we wrote ourselves."""
    match = re.search(r"filename\*=UTF-8''([^;\s]+)", value)
    if match:
        return sanitise_filename(unquote(match.group(1), encoding="utf-8", errors="replace"))
    match = re.search(r'filename="([^"]*)"', value)
    return sanitise_filename(match.group(1) if match else None)


@implementer(IAttachmentStore)
class S3AttachmentStore:
    """
    Attachments in an S3 bucket.

    :param client: a boto3 S3 client (thread-safe; create once).
    :param credentials: returns the client's frozen credentials.
    :param settings: bucket and key prefix.
    :param keyring: derives owner tags.
    :param reactor: for `deferToThreadPool` and the time.
    :param pool: the thread pool every boto3 network call runs on.
    :param link_lifetime: default and maximum presigned URL lifetime.
    :param refresh_after: age after which storing an object writes it again.
    """

    def __init__(
        self,
        client: Any,
        credentials: Callable[[], Any],
        settings: S3Settings,
        keyring: KeyRing,
        reactor: Any,
        pool: ThreadPool,
        *,
        link_lifetime: int = 3600,
        limits: Limits | None = None,
        refresh_after: float = REFRESH_AFTER,
    ) -> None:
        self._client = client
        self._credentials = credentials
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self._keyring = keyring
        self._reactor = reactor
        self._pool = pool
        self.link_lifetime = min(link_lifetime, MAX_PRESIGN_SECONDS)
        self.limits = limits or Limits()
        self._region = str(client.meta.region_name)
        #: key -> when it was last written, for keys known to be stored.
        self._known: dict[str, float] = {}
        self.refresh_after = refresh_after
        #: Objects uploaded since start (an already stored object does not count).
        self.puts = 0
        probe = urlsplit(
            client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": _PROBE}, ExpiresIn=60
            )
        )
        self._scheme = probe.scheme.lower()
        self._netloc = probe.netloc.lower()
        self._base_path = probe.path[: -len(_PROBE)]
        self._key_pattern = re.compile(re.escape(self.prefix) + r"([0-9a-f]{32})/([0-9a-f]{64})")

    def _in_pool(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return threads.deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)

    def key_for(self, tag: str, sha: str) -> str:
        return f"{self.prefix}{tag}/{sha}"

    async def put(self, owner: str, data: bytes, content_type: str) -> StoredObject:
        if len(data) > self.limits.max_attachment_bytes:
            raise AttachmentTooLarge(
                f"attachment of {len(data)} bytes is over the {self.limits.max_attachment_bytes}-byte cap"
            )
        data = bytes(data)
        tag = owner_tag(self._keyring, owner)
        sha: str = await self._in_pool(lambda: hashlib.sha256(data).hexdigest())
        key = self.key_for(tag, sha)
        now = self._reactor.seconds()
        stored_at = self._known.get(key)
        if stored_at is not None and now - stored_at < self.refresh_after:
            return StoredObject(key, len(data), sha, created=False)
        try:
            created, stored_at = await self._in_pool(self._upload_if_missing, key, data, sha, now)
        except AttachmentError:
            raise
        except Exception as e:
            log.error(
                "S3 upload of {sha:.12} failed: {kind}: {error}",
                sha=sha,
                kind=type(e).__name__,
                error=str(e)[:300],
            )
            raise AttachmentError(UNAVAILABLE) from None
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        self._known[key] = stored_at
        if created:
            self.puts += 1
            log.info(
                "uploaded attachment {sha:.12} ({size} bytes) for {tag:.8}",
                sha=sha,
                size=len(data),
                tag=tag,
            )
        return StoredObject(key, len(data), sha, created=created)

    def _upload_if_missing(self, key: str, data: bytes, sha: str, now: float) -> tuple[bool, float]:
        """
        In the pool: HEAD, and PUT unless the object is there and young.
        An object older than `refresh_after` is uploaded again, which
        restarts its age for the bucket's lifecycle rule (which counts from
        the last write), so a fresh link never points at an object about to
        expire.

        :return: (whether we wrote, when the object was last written).
        """
        from botocore.exceptions import ClientError

        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
            modified = head.get("LastModified")
            written = modified.timestamp() if isinstance(modified, datetime.datetime) else 0.0
            if (
                int(head.get("ContentLength", -1)) == len(data)
                and now - written < self.refresh_after
            ):
                return False, written
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 404 and e.response.get("Error", {}).get("Code") not in (
                "404",
                "NoSuchKey",
                "NotFound",
            ):
                raise
        self._client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentType="application/octet-stream",
            Metadata={"sha256": sha},
        )
        return True, now

    def link(
        self,
        owner: str,
        obj: StoredObject,
        filename: str,
        content_type: str,
        lifetime: float | None = None,
    ) -> str:
        lifetime = self.link_lifetime if lifetime is None else min(lifetime, self.link_lifetime)
        try:
            url: str = self._client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": obj.key,
                    "ResponseContentDisposition": content_disposition(filename),
                    "ResponseContentType": safe_content_type(content_type),
                },
                ExpiresIn=max(1, int(lifetime)),
            )
        except Exception as e:
            # Expired credentials that cannot be refreshed (S3-03): no link
            # at all rather than a crash, or a URL S3 would refuse.
            log.error(
                "S3 presign failed: {kind}: {error}", kind=type(e).__name__, error=str(e)[:300]
            )
            raise AttachmentError(UNAVAILABLE) from None
        return url

    def verify_url(self, url: str) -> tuple[str, str, str, str]:
        """
        Check that C{url} is a live presigned GET we issued for this bucket.
        Pure computation: no request is made.

        :return: (owner tag, sha256, filename, content type).
        :raises AttachmentRefused: for anything else.
        """
        if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or url != url.strip():
            raise AttachmentRefused(NOT_OURS)
        try:
            parts = urlsplit(url)
        except ValueError:
            raise AttachmentRefused(NOT_OURS) from None
        if (
            parts.scheme.lower() != self._scheme
            or parts.netloc.lower() != self._netloc
            or parts.fragment
            or not parts.path.startswith(self._base_path)
            or "%" in parts.path
        ):
            raise AttachmentRefused(NOT_OURS)
        match = self._key_pattern.fullmatch(parts.path[len(self._base_path) :])
        if match is None:
            raise AttachmentRefused(NOT_OURS)
        params: dict[str, str] = {}
        for pair in parts.query.split("&"):
            name, eq, value = pair.partition("=")
            name, value = unquote(name), unquote(value)
            if not eq or name in params:
                raise AttachmentRefused(TAMPERED)
            params[name] = value
        try:
            creds = self._credentials()
        except Exception as e:
            log.error(
                "S3 credentials unavailable: {kind}: {error}",
                kind=type(e).__name__,
                error=str(e)[:300],
            )
            raise AttachmentError(UNAVAILABLE) from None
        allowed = {
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
            "response-content-disposition",
            "response-content-type",
        }
        if creds.token:
            allowed.add("X-Amz-Security-Token")
        if set(params) != allowed:
            raise AttachmentRefused(TAMPERED)
        amz_date = params["X-Amz-Date"]
        try:
            signed_at = datetime.datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=datetime.UTC)
            expires = int(params["X-Amz-Expires"])
        except ValueError:
            raise AttachmentRefused(TAMPERED) from None
        scope = f"{amz_date[:8]}/{self._region}/s3/aws4_request"
        if (
            params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256"
            or params["X-Amz-SignedHeaders"] != "host"
            or params["X-Amz-Credential"] != f"{creds.access_key}/{scope}"
            or not 0 < expires <= MAX_PRESIGN_SECONDS
        ):
            raise AttachmentRefused(TAMPERED)
        canonical_query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, v in sorted(params.items())
            if k != "X-Amz-Signature"
        )
        canonical = "\n".join(
            [
                "GET",
                parts.path,
                canonical_query,
                f"host:{_canonical_host(parts.scheme.lower(), parts.netloc)}",
                "",
                "host",
                "UNSIGNED-PAYLOAD",
            ]
        )
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                amz_date,
                scope,
                hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
            ]
        )
        expected = hmac.new(
            _signing_key(creds.secret_key, amz_date[:8], self._region),
            to_sign.encode("utf-8"),
            hashlib.sha256,
        ).hexdigest()
        if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
            raise AttachmentRefused(TAMPERED)
        if signed_at.timestamp() + expires <= self._reactor.seconds():
            raise AttachmentRefused(EXPIRED)
        filename = _filename_from_disposition(params["response-content-disposition"])
        return match.group(1), match.group(2), filename, params["response-content-type"]

    def check(self, owner: str, url: str) -> tuple[str, str, str, str]:
        """
        Pure check that C{url} is a live presigned link we issued to C{owner}.

        :raises AttachmentRefused: otherwise.
        """
        verified = self.verify_url(url)
        if verified[0] != owner_tag(self._keyring, owner):
            raise AttachmentRefused(OTHER_OWNER)
        return verified

    async def resolve(self, owner: str, url: str) -> ResolvedAttachment:
        tag, sha, filename, content_type = self.check(owner, url)
        key = self.key_for(tag, sha)
        try:
            data: bytes | None = await self._in_pool(self._download, key, sha)
        except AttachmentError:
            raise
        except Exception as e:
            log.error(
                "S3 read of {sha:.12} failed: {kind}: {error}",
                sha=sha,
                kind=type(e).__name__,
                error=str(e)[:300],
            )
            raise AttachmentError(UNAVAILABLE) from None
        if data is None:
            raise AttachmentNotFound(EXPIRED)
        return ResolvedAttachment(data, filename, content_type)

    def _download(self, key: str, sha: str) -> bytes | None:
        """In the pool: GET the object through the API, capped and checked."""
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        body = response["Body"]
        try:
            if int(response.get("ContentLength", 0)) > self.limits.max_attachment_bytes:
                raise AttachmentTooLarge(
                    f"attachment is over the {self.limits.max_attachment_bytes}-byte cap"
                )
            data: bytes = body.read(self.limits.max_attachment_bytes + 1)
        finally:
            body.close()
        if hashlib.sha256(data).hexdigest() != sha:
            return None
        return data
