"""
Process metrics at ``GET /metrics`` on the ``--metrics-listen`` endpoint
(off by default, never on the public listener): the reactor-lag probe,
garbage-collector pauses and memory.

The probe is a timer that asks to run every ``interval`` seconds and records
how late it actually ran.  Anything that holds the reactor (CPU work in a
callback, a blocking call) shows up as lag, so this is the judge of "nothing
blocks the reactor" under load.

Output is Prometheus text by default (`prometheus_client`, with a registry
per daemon); ``?format=json`` gives the same numbers as JSON, and
``?format=json&samples=1`` adds the recent raw samples as
``[monotonic_time, lag_seconds]`` pairs (``since=<monotonic>`` filters them),
which the benchmarks use to compute exact percentiles over one phase.
``time.monotonic`` is the system-wide ``CLOCK_MONOTONIC`` on Linux, so a
process on the same host can compare it with its own clock.

Nothing here is secret: no account, token, address or path is exposed.
"""

from __future__ import annotations

import bisect
import gc
import json
import resource
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from klein import Klein
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall
from twisted.web.iweb import IRequest

from ._admission import Admission

#: Upper bounds (seconds) of the lag histogram's buckets.
BUCKETS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ReactorLagProbe(Service):
    """
    Measure how late the reactor runs a timer.  Keeps a cumulative histogram
    (for Prometheus), the maximum, and a bounded ring of recent samples.
    """

    def __init__(
        self,
        reactor: Any,
        interval: float = 0.02,
        keep: int = 20000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reactor = reactor
        self.interval = interval
        self._clock = clock
        self.samples: deque[tuple[float, float]] = deque(maxlen=keep)
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self._expected = 0.0
        self._call: IDelayedCall | None = None
        #: Called with every lag sample (e.g. `mailmcp.web._admission.Admission.observe_lag`).
        self.observers: list[Callable[[float], None]] = []
        self.gc_pauses = GCPauses()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.gc_pauses.install()
        self._schedule()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.gc_pauses.uninstall()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._expected = self._clock() + self.interval
        self._call = self._reactor.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        now = self._clock()
        lag = max(0.0, now - self._expected)
        self.record(now, lag)
        self._schedule()
        for observer in self.observers:
            observer(lag)

    def record(self, now: float, lag: float) -> None:
        self.samples.append((now, lag))
        self.bucket_counts[bisect.bisect_left(BUCKETS, lag)] += 1
        self.count += 1
        self.total += lag
        if lag > self.max:
            self.max = lag

    def quantile(self, q: float, since: float | None = None) -> float | None:
        values = sorted(lag for t, lag in self.samples if since is None or t >= since)
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]


class GCPauses:
    """
    How long the garbage collector stopped the process, per generation.  A
    full collection scans every tracked object and holds the reactor the
    whole time, so it is the first suspect when lag has no other cause.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.max = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        generation = min(int(info.get("generation", 2)), 2)
        pause = self._clock() - self._started
        self.count[generation] += 1
        self.total[generation] += pause
        if pause > self.max[generation]:
            self.max[generation] = pause

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def snapshot(self) -> dict[str, Any]:
        return {
            f"gen{g}": {
                "collections": self.count[g],
                "pause_sum_seconds": round(self.total[g], 6),
                "pause_max_seconds": round(self.max[g], 6),
            }
            for g in range(3)
        } | {"frozen_objects": gc.get_freeze_count()}


class GCTuning(Service):
    """
    Keep full garbage collections rare and short (docs/architecture.rst, Targets: reactor lag).

    A full collection scans every tracked object with the reactor stopped;
    measured under load (`GCPauses`), it was the whole of the lag p99
    (200-400 ms).  On start, everything built so far -- imported modules,
    wire models, tool schemas, the service tree -- is moved out of the
    collector's sight (`gc.freeze`): it lives as long as the process, and
    reference counting still frees it.  Collections run less often
    (`THRESHOLDS`); young garbage is still collected, in bigger batches.
    Stopping restores the previous state.
    """

    THRESHOLDS = (20_000, 20, 20)

    def __init__(self) -> None:
        self._previous: tuple[int, int, int] | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        gc.collect()
        gc.freeze()
        self._previous = gc.get_threshold()
        gc.set_threshold(*self.THRESHOLDS)

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._previous is not None:
            gc.set_threshold(*self._previous)
            self._previous = None
        gc.unfreeze()


def _rss_bytes() -> tuple[int | None, int | None]:
    """Current and peak resident set size (VmRSS, VmHWM) from /proc, if there."""
    current = peak = None
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return current, peak


class _DaemonCollector(Collector):
    """
    The daemon's own figures as Prometheus metric families, read when
    scraped: the lag histogram, GC pauses, memory peak, requests in flight
    and /mcp admission.
    """

    def __init__(
        self,
        probe: ReactorLagProbe,
        in_flight: Callable[[], int] | None,
        admission: Admission | None,
    ) -> None:
        self._probe = probe
        self._in_flight = in_flight
        self._admission = admission

    def collect(self) -> Iterator[Metric]:
        probe = self._probe
        buckets = [
            (str(le), float(n))
            for le, n in zip(BUCKETS, _cumulative(probe.bucket_counts), strict=True)
        ]
        yield HistogramMetricFamily(
            "mailmcp_reactor_lag_seconds",
            "How late the reactor ran a periodic timer.",
            buckets=[*buckets, ("+Inf", float(probe.count))],
            sum_value=probe.total,
        )
        yield GaugeMetricFamily(
            "mailmcp_reactor_lag_max_seconds", "Largest lag seen since start.", value=probe.max
        )
        gc_pauses = probe.gc_pauses
        collections = CounterMetricFamily(
            "mailmcp_gc_collections", "Garbage collections, per generation.", labels=["generation"]
        )
        paused = CounterMetricFamily(
            "mailmcp_gc_pause_seconds",
            "Time the garbage collector stopped the process, per generation.",
            labels=["generation"],
        )
        longest = GaugeMetricFamily(
            "mailmcp_gc_pause_max_seconds",
            "Longest garbage collector pause since start, per generation.",
            labels=["generation"],
        )
        for generation in range(3):
            label = [str(generation)]
            collections.add_metric(label, gc_pauses.count[generation])
            paused.add_metric(label, gc_pauses.total[generation])
            longest.add_metric(label, gc_pauses.max[generation])
        yield from (collections, paused, longest)
        _, peak = _rss_bytes()
        if peak is not None:
            yield GaugeMetricFamily(
                "mailmcp_process_max_resident_memory_bytes",
                "Peak resident memory (VmHWM).",
                value=peak,
            )
        if self._in_flight is not None:
            yield GaugeMetricFamily(
                "mailmcp_http_requests_in_flight",
                "HTTP requests being answered.",
                value=self._in_flight(),
            )
        admission = self._admission
        if admission is not None:
            yield GaugeMetricFamily(
                "mailmcp_mcp_admission_limit",
                "/mcp requests worked on at once.",
                value=int(admission.limit),
            )
            yield GaugeMetricFamily(
                "mailmcp_mcp_requests_queued",
                "/mcp requests waiting for admission.",
                value=admission.queued,
            )
            yield CounterMetricFamily(
                "mailmcp_mcp_requests_waited",
                "/mcp requests that had to wait for admission.",
                value=admission.waited,
            )


class MetricsApp:
    """
    ``GET /metrics``: Prometheus text (or OpenMetrics, by ``Accept``) from a
    registry of this daemon's own (never the process-global one, so two
    daemons or tests in one process do not mix), or with ``?format=json``
    the JSON document the benchmarks read.

    Served only on ``--metrics-listen``, never on the public listener: the
    JSON with ``samples=1`` is hundreds of kilobytes, an amplifier for
    anyone who can reach it.
    """

    app = Klein()

    def __init__(
        self,
        probe: ReactorLagProbe,
        in_flight: Callable[[], int] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._probe = probe
        self._in_flight = in_flight
        self._admission = admission
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_DaemonCollector(probe, in_flight, admission))
        # process_resident_memory_bytes, CPU seconds, open file descriptors.
        ProcessCollector(registry=self.registry)

    def snapshot(self, since: float | None = None, samples: bool = False) -> dict[str, Any]:
        probe = self._probe
        rss, peak = _rss_bytes()
        document: dict[str, Any] = {
            "now_monotonic": probe._clock(),
            "reactor_lag": {
                "interval_seconds": probe.interval,
                "count": probe.count,
                "sum_seconds": probe.total,
                "max_seconds": probe.max,
                "p50_seconds": probe.quantile(0.50, since),
                "p99_seconds": probe.quantile(0.99, since),
                "buckets": {
                    **{
                        str(le): n
                        for le, n in zip(BUCKETS, _cumulative(probe.bucket_counts), strict=True)
                    },
                    "+Inf": probe.count,
                },
            },
            "process": {"resident_memory_bytes": rss, "max_resident_memory_bytes": peak},
            "gc": probe.gc_pauses.snapshot(),
        }
        if self._in_flight is not None:
            document["http_requests_in_flight"] = self._in_flight()
        if self._admission is not None:
            document["admission"] = {
                "limit": int(self._admission.limit),
                "working": self._admission.working,
                "queued": self._admission.queued,
                "waited_total": self._admission.waited,
            }
        if samples:
            document["reactor_lag"]["samples"] = [
                [t, lag] for t, lag in probe.samples if since is None or t >= since
            ]
        return document

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        args = request.args or {}
        fmt = (args.get(b"format") or [b"prometheus"])[0]
        since: float | None = None
        raw_since = (args.get(b"since") or [None])[0]
        if raw_since is not None:
            try:
                since = float(raw_since)
            except ValueError:
                since = None
        if fmt == b"json":
            body = self.snapshot(since, samples=(args.get(b"samples") or [b"0"])[0] == b"1")
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(body).encode("ascii")
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(self.registry)

    def prometheus(self) -> str:
        """The Prometheus text exposition, as a string."""
        return generate_latest(self.registry).decode("utf-8")


def _cumulative(counts: list[int]) -> list[int]:
    out, running = [], 0
    for n in counts[:-1]:
        running += n
        out.append(running)
    return out
