"""
The attachment store inside a real ``twistd -n mailmcp``: the embedded
store is served at ``/attachments/…`` with its security headers and its
links never reach the access log; ``--attachments s3://…`` starts against
the real SeaweedFS with credentials from the standard AWS environment, and
fails with one clear line without them.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from mailmcp.attachments import LocalAttachmentStore
from mailmcp.oauth._keyring import read_keyring_file
from tests.harness import ROOT, TWISTD, Services

pytestmark = pytest.mark.integration


class _Inline:
    """A 'pool' running work at once: this test writes the object directly, as the daemon would."""

    def callInThreadWithCallback(self, on_result: Any, f: Any, *a: Any, **kw: Any) -> None:
        on_result(True, f(*a, **kw))


class _Reactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        import time

        self.advance(time.time())

    def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
        f(*a, **kw)


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_daemon_serves_local_attachments(daemon_factory: Any, tmp_path: Path) -> None:
    """A link made with the daemon's key ring downloads from the daemon, and the log has no signature."""
    daemon = daemon_factory()
    keyring = read_keyring_file(daemon.state_dir / "keys.json")
    reactor = _Reactor()
    store = LocalAttachmentStore(daemon.state_dir / "attachments", keyring, reactor, _Inline(),  # type: ignore[arg-type]
                                 daemon.base_url)
    from twisted.internet.defer import Deferred

    box: list[Any] = []
    Deferred.fromCoroutine(store.put("grant-x", b"\x89PNG\r\n binary", "image/svg+xml")).addBoth(box.append)
    url = store.link("grant-x", box[0], "logo.svg", "image/svg+xml")
    status, headers, body = get(url)
    assert status == 200 and body == b"\x89PNG\r\n binary"
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"].startswith("attachment;")
    assert get(url.replace("sig=", "sig=x"))[0] == 404
    assert get(daemon.base_url + "/attachments/")[0] == 404
    signature = url.split("sig=", 1)[1]
    daemon.stop()
    log = daemon.log_text()
    assert "/attachments/" in log  # the access was logged...
    assert signature not in log  # ...but never the working link


def test_daemon_with_s3(daemon_factory: Any, s3: Services) -> None:
    """--attachments s3://bucket/prefix starts with the standard AWS environment and a custom endpoint."""
    env = {"AWS_ACCESS_KEY_ID": "testkey", "AWS_SECRET_ACCESS_KEY": "testsecret",
           "AWS_REGION": "us-east-1", "MAILMCP_S3_ENDPOINT": s3.s3_endpoint}
    daemon = daemon_factory(None, "--attachments", "s3://attachments/daemon", env=env)
    assert get(daemon.base_url + "/health")[0] == 200
    # With S3 the daemon serves no local downloads.
    assert get(daemon.base_url + "/attachments/x?sig=y")[0] == 404


def test_daemon_s3_without_credentials_fails_clearly(tmp_path: Path) -> None:
    """Without any AWS credentials the daemon refuses to start, with one line and no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MAILMCP_"))}
    env.update(PYTHONPATH=str(ROOT), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true")
    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "mailmcp", "--listen", "tcp:0:interface=127.0.0.1",
         "--state-dir", str(tmp_path / "state"), "--attachments", "s3://attachments/x"],
        capture_output=True, text=True, timeout=60, env=env, cwd=str(tmp_path),
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "no AWS credentials" in output
    assert "Traceback" not in output
