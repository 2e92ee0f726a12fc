"""
Unit tests for the S3 store's link side, which needs no network: presigned
URLs are computed locally by botocore, and our own SigV4 check of them is
pure HMAC.  The client here points at an unroutable endpoint; nothing in
these tests may connect to it.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from zope.interface.verify import verifyObject

from mailmcp.attachments import AttachmentRefused, S3AttachmentStore, S3Settings, StoredObject
from mailmcp.attachments._common import owner_tag
from mailmcp.attachments._links import EXPIRED, OTHER_OWNER
from mailmcp.attachments._s3 import make_s3_client
from mailmcp.interfaces import IAttachmentStore
from mailmcp.oauth._keyring import KeyRing, new_master_key

ENV = {
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "AWS_REGION": "eu-west-1",
    "MAILMCP_S3_ENDPOINT": "http://192.0.2.1:9",
}


class WallClock:
    """Real time plus an offset (botocore signs with the wall clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def seconds(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def client_and_creds() -> Any:
    return make_s3_client(ENV)


@pytest.fixture
def store(client_and_creds: Any) -> S3AttachmentStore:
    client, creds = client_and_creds
    return S3AttachmentStore(
        client, creds, S3Settings("s3://attachments/mail/att"), KeyRing([new_master_key()]),
        WallClock(), pool=None, link_lifetime=900,  # type: ignore[arg-type]
    )


def stored(store: S3AttachmentStore, owner: str = "grant-a") -> StoredObject:
    tag = owner_tag(store._keyring, owner)
    sha = "cd" * 32
    return StoredObject(store.key_for(tag, sha), 10, sha)


def test_provides_interface(store: S3AttachmentStore) -> None:
    """The S3 store provides IAttachmentStore."""
    assert verifyObject(IAttachmentStore, store)


def test_settings_parse_bucket_and_prefix() -> None:
    """--attachments s3://bucket/prefix gives the bucket and a slash-terminated prefix."""
    s = S3Settings("s3://my-bucket/a/b/")
    assert (s.bucket, s.prefix) == ("my-bucket", "a/b/")
    assert S3Settings("s3://b").prefix == ""
    for bad in ("s3://b/../x", "s3://b/a b", "http://b/x"):
        with pytest.raises(ValueError):
            S3Settings(bad)


def test_presigned_link_shape(store: S3AttachmentStore) -> None:
    """The link is a presigned GET with the filename and a safe type signed in, key without filename."""
    obj = stored(store)
    url = store.link("grant-a", obj, "../../Quarterly <b>.html", "text/html", lifetime=86400)
    parts = urlsplit(url)
    assert parts.path == f"/attachments/{obj.key}"
    assert "Quarterly" not in parts.path
    q = parse_qs(parts.query)
    assert q["X-Amz-Expires"] == ["900"]
    assert q["response-content-type"] == ["application/octet-stream"]
    assert q["response-content-disposition"][0].startswith("attachment; filename=")


def test_check_accepts_our_link(store: S3AttachmentStore) -> None:
    """A link we presigned passes our local SigV4 check, giving back filename and type."""
    obj = stored(store)
    url = store.link("grant-a", obj, "Grüße.pdf", "application/pdf")
    tag, sha, filename, ctype = store.check("grant-a", url)
    assert obj.key == f"mail/att/{tag}/{sha}"
    assert (filename, ctype) == ("Grüße.pdf", "application/pdf")


def test_other_owner_refused(store: S3AttachmentStore) -> None:
    """Another user's genuine link is refused (ownership prefix check, TL-A4)."""
    url = store.link("grant-b", stored(store, "grant-b"), "x.pdf", "application/pdf")
    with pytest.raises(AttachmentRefused) as e:
        store.check("grant-a", url)
    assert e.value.message == OTHER_OWNER


def test_expired_refused(store: S3AttachmentStore) -> None:
    """A presigned URL past its X-Amz-Expires is refused as expired."""
    url = store.link("grant-a", stored(store), "x.pdf", "application/pdf", lifetime=60)
    store._reactor.offset = 61
    with pytest.raises(AttachmentRefused) as e:
        store.check("grant-a", url)
    assert e.value.message == EXPIRED


def _replace_param(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    pairs = [p.partition("=") for p in parts.query.split("&")]
    query = "&".join(f"{k}={quote(value, safe='') if unquote(k) == name else v}" for k, _, v in pairs)
    return parts._replace(query=query).geturl()


@pytest.mark.parametrize(
    "name, value",
    [
        ("X-Amz-Expires", "604800"),
        ("response-content-type", "text/html"),
        ("response-content-disposition", "inline"),
        ("X-Amz-Date", "20990101T000000Z"),
        ("X-Amz-Signature", "0" * 64),
    ],
)
def test_tampered_parameters_refused(store: S3AttachmentStore, name: str, value: str) -> None:
    """Changing any signed parameter (a longer expiry, an inline type) breaks the link."""
    url = store.link("grant-a", stored(store), "x.pdf", "application/pdf")
    with pytest.raises(AttachmentRefused):
        store.check("grant-a", _replace_param(url, name, value))


def test_url_presigned_with_other_credentials_refused(store: S3AttachmentStore) -> None:
    """A correctly shaped URL for our bucket and the caller's prefix, signed by someone else, is refused."""
    env = dict(ENV, AWS_SECRET_ACCESS_KEY="not-our-secret")
    client, _ = make_s3_client(env)
    obj = stored(store)
    forged = client.generate_presigned_url(
        "get_object",
        Params={"Bucket": "attachments", "Key": obj.key,
                "ResponseContentDisposition": "attachment; filename=\"x\"",
                "ResponseContentType": "application/pdf"},
        ExpiresIn=60,
    )
    with pytest.raises(AttachmentRefused):
        store.check("grant-a", forged)


def test_other_keys_and_buckets_refused(store: S3AttachmentStore) -> None:
    """Our signature on another key shape, bucket or host is not accepted."""
    obj = stored(store)
    url = store.link("grant-a", obj, "x.pdf", "application/pdf")
    for other in (
        url.replace("/attachments/", "/other/"),
        url.replace("192.0.2.1:9", "192.0.2.1:10"),
        url.replace("http://", "https://"),
        url.replace(obj.sha256, obj.sha256.upper()),
        url.replace("/mail/att/", "/mail/att/../att/"),
        url.replace("/mail/att/", "/mail/%61tt/"),
        url + "&x-id=GetObject",
    ):
        with pytest.raises(AttachmentRefused):
            store.check("grant-a", other)


def test_presign_needs_no_pool(store: S3AttachmentStore) -> None:
    """link() and check() run without the thread pool (pool=None here) and without network."""
    url = store.link("grant-a", stored(store), "x.pdf", "application/pdf")
    store.check("grant-a", url)
    assert store.puts == 0


def test_from_environment_any() -> None:
    """Without credentials in the given environment the default chain is used (no crash building)."""
    client, creds = make_s3_client(ENV)
    assert client.meta.region_name == "eu-west-1"
    frozen: Any = creds()
    assert frozen.access_key == "AKIDEXAMPLE"


def test_any_flipped_character_is_refused(store: S3AttachmentStore) -> None:
    """Changing any single character of a presigned link (outside the host's case) makes it unacceptable."""
    url = store.link("grant-a", stored(store), "x.pdf", "application/pdf")
    for position in range(len(url)):
        original = url[position]
        replacement = "0" if original.lower() != "0" else "1"
        flipped = url[:position] + replacement + url[position + 1:]
        with pytest.raises(AttachmentRefused):
            store.check("grant-a", flipped)
