"""
The public listener is no traffic amplifier: ``/metrics`` (whose JSON with
``samples=1`` ran to ~830 KB for one anonymous GET) is not served there at
all.  A default ``twistd mailmcp`` (no ``--metrics-listen``) answers every
variant with a small 404 and nothing about the process.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest

pytestmark = pytest.mark.integration

PATHS = [
    "/metrics",
    "/metrics?format=json",
    "/metrics?format=json&samples=1",
    "/metrics?format=json&samples=1&since=0",
    "/metrics/",
    "/METRICS",
    "/%6detrics?format=json&samples=1",
]


def test_metrics_not_on_the_public_listener(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    for path in PATHS:
        for method in ("GET", "HEAD", "POST"):
            request = urllib.request.Request(daemon.base_url + path, method=method,
                                             data=b"" if method == "POST" else None)
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(request, timeout=10)
            body = answer.value.read()
            assert answer.value.code == 404, (method, path, answer.value.code)
            assert len(body) < 2048, (method, path, len(body))
            assert b"reactor_lag" not in body and b"resident_memory" not in body
