"""
``GET /metrics`` through a real ``twistd mailmcp``: only on the private
``--metrics-listen`` endpoint, never on the public listener.

The metrics listener serves Prometheus text (``prometheus_client``'s
exposition, OpenMetrics when asked for by ``Accept``) and the JSON the
benchmarks read (``?format=json&samples=1``), and nothing else: the OAuth
and MCP endpoints are not reachable through it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ROOT, TWISTD, free_port

pytestmark = pytest.mark.integration


def get(url: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_metrics_listener_serves_prometheus_and_json(daemon_factory: Any) -> None:
    """
    --metrics-listen: Prometheus text with the lag histogram, GC, admission
    and process memory; OpenMetrics by Accept; the benchmarks' JSON with
    samples; the public listener answers 404 for all of them.
    """
    metrics_port = free_port()
    daemon = daemon_factory(None, "--metrics-listen", f"tcp:{metrics_port}:interface=127.0.0.1")
    base = f"http://127.0.0.1:{metrics_port}"

    status, headers, body = get(base + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert headers["Cache-Control"] == "no-store"
    text = body.decode()
    for name in (
        "# TYPE mailmcp_reactor_lag_seconds histogram",
        'mailmcp_reactor_lag_seconds_bucket{le="+Inf"}',
        "mailmcp_reactor_lag_seconds_count",
        "mailmcp_reactor_lag_max_seconds",
        'mailmcp_gc_pause_seconds_total{generation="2"}',
        "mailmcp_mcp_admission_limit",
        "mailmcp_mcp_requests_waited_total",
        "mailmcp_process_max_resident_memory_bytes",
        "process_resident_memory_bytes",
    ):
        assert name in text, name

    status, headers, body = get(base + "/metrics", accept="application/openmetrics-text")
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")

    status, headers, body = get(base + "/metrics?format=json&samples=1")
    assert status == 200 and headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert document["reactor_lag"]["count"] >= 1
    assert document["reactor_lag"]["samples"]
    assert document["admission"]["limit"] >= 1

    for path in ("/metrics", "/metrics?format=json&samples=1"):
        status, _, body = get(daemon.base_url + path)
        assert status == 404, path
        assert b"reactor_lag" not in body
    # The metrics listener is not a second way in to the daemon.
    for path in ("/health", "/mcp", "/.well-known/oauth-authorization-server", "/oauth/authorize"):
        status, _, _ = get(base + path)
        assert status == 404, path


def test_metrics_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A --metrics-listen port that is taken ends startup with one stderr line, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "mailmcp", "--state-dir", str(tmp_path / "state"),
             "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
             "--metrics-listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot listen on tcp:{port}" in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
