"""
The reactor-lag probe and ``GET /metrics``: lag is how late the timer ran,
percentiles can be taken over a window, and the output carries no secrets.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from mailmcp._metrics import MetricsApp, ReactorLagProbe


def _probe() -> tuple[Clock, ReactorLagProbe]:
    clock = Clock()
    probe = ReactorLagProbe(clock, interval=0.02, clock=clock.seconds)
    probe.startService()
    return clock, probe


def test_on_time_timer_has_no_lag() -> None:
    clock, probe = _probe()
    clock.pump([0.02] * 10)
    assert probe.count == 10
    assert probe.max == 0.0
    assert probe.quantile(0.99) == 0.0


def test_blocked_reactor_shows_as_lag() -> None:
    """A timer that fires on time records zero lag."""
    clock, probe = _probe()
    clock.advance(0.02)
    clock.advance(0.5)  # the reactor was busy for 0.48 s past the deadline
    assert probe.count == 2
    assert abs(probe.max - 0.48) < 1e-9
    assert probe.bucket_counts[-1] == 0  # 0.48 s fits under the 0.5 s bucket
    assert sum(probe.bucket_counts) == 2


def test_window_percentiles_and_stop() -> None:
    """A reactor busy past the tick's deadline shows as that much lag, in the right bucket."""
    clock, probe = _probe()
    clock.advance(0.02)
    clock.advance(0.12)  # lag 0.1
    since = clock.seconds() + 0.001  # after the late tick
    clock.pump([0.02] * 5)
    assert probe.quantile(0.99) is not None and probe.quantile(0.99) > 0.09
    assert probe.quantile(0.99, since=since) == 0.0
    probe.stopService()
    count = probe.count
    clock.advance(1)
    assert probe.count == count


def test_json_and_prometheus_documents() -> None:
    """The JSON and Prometheus documents carry the counts and nothing that looks like a secret."""
    """Percentiles can be taken from a point in time on; a stopped probe records nothing more."""
    clock, probe = _probe()
    clock.pump([0.02] * 3)
    app = MetricsApp(probe, in_flight=lambda: 2)
    document = app.snapshot(samples=True)
    json.dumps(document)
    assert document["reactor_lag"]["count"] == 3
    assert len(document["reactor_lag"]["samples"]) == 3
    assert document["http_requests_in_flight"] == 2
    text = app.prometheus()
    assert 'mailmcp_reactor_lag_seconds_bucket{le="+Inf"} 3' in text
    assert "mailmcp_reactor_lag_seconds_count 3" in text
    assert "@" not in text and "password" not in text.lower()
