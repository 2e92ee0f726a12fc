"""
The reactor-lag probe and ``GET /metrics``: lag is how late the timer ran,
percentiles can be taken over a window, and the output carries no secrets.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from mailmcp.web._metrics import MetricsApp, ReactorLagProbe


def _probe() -> tuple[Clock, ReactorLagProbe]:
    clock = Clock()
    probe = ReactorLagProbe(clock, interval=0.02, clock=clock.seconds)
    probe.startService()
    return clock, probe


def test_on_time_timer_has_no_lag() -> None:
    """A timer that fires on time records zero lag."""
    clock, probe = _probe()
    clock.pump([0.02] * 10)
    assert probe.count == 10
    assert probe.max == 0.0
    assert probe.quantile(0.99) == 0.0


def test_blocked_reactor_shows_as_lag() -> None:
    """A reactor busy past the tick's deadline shows as that much lag, in the right bucket."""
    clock, probe = _probe()
    clock.advance(0.02)
    clock.advance(0.5)  # the reactor was busy for 0.48 s past the deadline
    assert probe.count == 2
    assert abs(probe.max - 0.48) < 1e-9
    assert probe.bucket_counts[-1] == 0  # 0.48 s fits under the 0.5 s bucket
    assert sum(probe.bucket_counts) == 2


def test_window_percentiles_and_stop() -> None:
    """Percentiles can be taken from a point in time on; a stopped probe records nothing more."""
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


def test_lag_samples_feed_the_admission_limit_and_show_in_metrics() -> None:
    """
    Every lag sample reaches the probe's observers: a lagging reactor cuts
    the /mcp admission limit, an idle one raises it; /metrics shows it.
    """
    from mailmcp.web._admission import Admission

    clock, probe = _probe()
    admission = Admission(initial=16, minimum=4, maximum=64)
    probe.observers.append(admission.observe_lag)
    clock.advance(0.02)
    assert admission.limit == 17
    clock.advance(0.5)  # 0.48 s late
    assert admission.limit == 12.75
    admission.enter()
    app = MetricsApp(probe, admission=admission)
    assert app.snapshot()["admission"] == {"limit": 12, "working": 1, "queued": 0, "waited_total": 0}
    assert "mailmcp_mcp_admission_limit 12" in app.prometheus()


def test_gc_tuning_freezes_startup_objects_and_restores_on_stop() -> None:
    """
    Started, GCTuning moves what exists out of the collector's sight and
    makes collections rarer; stopped, it puts both back.
    """
    import gc

    from mailmcp.web._metrics import GCTuning

    before = gc.get_threshold()
    tuning = GCTuning()
    tuning.startService()
    try:
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == GCTuning.THRESHOLDS
    finally:
        tuning.stopService()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_gc_pauses_are_recorded_per_generation() -> None:
    """A forced full collection shows up as one gen2 pause in the probe's GC figures."""
    import gc

    clock, probe = _probe()
    try:
        gc.collect()
        snapshot = probe.gc_pauses.snapshot()
        assert snapshot["gen2"]["collections"] >= 1
        assert snapshot["gen2"]["pause_max_seconds"] > 0
    finally:
        probe.stopService()
    collections = probe.gc_pauses.count[2]
    gc.collect()
    assert probe.gc_pauses.count[2] == collections  # uninstalled on stop


def test_lag_samples_are_kept_only_with_a_metrics_listener(tmp_path: object) -> None:
    """
    The raw lag samples exist for the metrics JSON: without
    --metrics-listen the probe keeps none (admission needs only the
    stream), with it the recent ones.  Nothing listens or starts here.
    """
    from pathlib import Path

    from twisted.internet.testing import MemoryReactorClock

    from mailmcp._service import build_service
    from mailmcp.tap import Options

    def probe_of(*argv: str) -> ReactorLagProbe:
        options = Options(environ={})
        options.parseOptions(["--state-dir", str(Path(str(tmp_path)) / "state"), *argv])
        top = build_service(options.config, MemoryReactorClock())
        parts = top.getServiceNamed("parts")  # type: ignore[attr-defined]
        probe: ReactorLagProbe = parts.getServiceNamed("reactor-lag")
        return probe

    assert probe_of().samples.maxlen == 0
    with_listener = probe_of("--metrics-listen", "tcp:0:interface=127.0.0.1")
    assert with_listener.samples.maxlen == 20000
