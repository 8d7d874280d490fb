"""Prometheus metrics (SPEC §7), declared once, on the process's own registry.

Label values are bounded: `route` is a configured route name, `target` a static target's
origin or, for a dynamic target, the `allow_hosts` glob its host matched (else `other`).
`Metrics(enabled=False)` keeps the same interface and records nothing (for measuring the
cost of metrics, or when nothing scrapes them).

The per-request metrics (requests, attempts and their durations, delivery attempts) are
tallied in plain dicts on the hot path and folded into the Prometheus metrics by `fold`:
before every scrape and once a second (`fold_every`, run by the lifecycle). A Prometheus
counter or histogram update takes a lock and walks Python code; a tally is one dict update.

With `--workers N` (`supervisor`) every worker writes its values to the shared directory
named by `PROMETHEUS_MULTIPROC_DIR` and `exposition()` sums them: counters and histograms
add up, gauges show the highest live worker's value (a breaker open in any worker is open).
Another worker's counts reach a scrape within a second (its next fold).
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import Gauge as _Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Webhook latencies: 5 ms to 30 s.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
Gauge = partial(_Gauge, multiprocess_mode="livemax")  # the mode matters only with workers
FOLD_S = 1.0


class CounterTally:
    """Increments of one counter by label values, folded into it later."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.counts: dict[tuple[str, ...], int] = {}

    def add(self, labels: tuple[str, ...]) -> None:
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + 1

    def fold(self) -> None:
        counts, self.counts = self.counts, {}
        for labels, n in counts.items():
            self.counter.labels(*labels).inc(n)


class HistogramTally:
    """Observations of one histogram by label values: per bucket counts and their sum.

    `fold` adds them to the histogram's own bucket and sum values, as `observe` would one by
    one (`tests/test_metrics.py` checks the result against `observe` itself)."""

    def __init__(self, histogram: Histogram, buckets: tuple[float, ...]) -> None:
        self.histogram, self.buckets = histogram, buckets
        self.tallies: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        tally = self.tallies.get(labels)
        if tally is None:  # one count per bucket (the last one +Inf), then the sum
            tally = self.tallies[labels] = [0.0] * (len(self.buckets) + 2)
        tally[bisect_left(self.buckets, value)] += 1
        tally[-1] += value

    def fold(self) -> None:
        tallies, self.tallies = self.tallies, {}
        for labels, tally in tallies.items():
            child = self.histogram.labels(*labels)
            for value, n in zip(child._buckets, tally[:-1], strict=True):
                if n:
                    value.inc(n)
            child._sum.inc(tally[-1])


class Metrics:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hookshield_requests", "Platform requests by how they were answered.",
            ["route", "outcome"], registry=r,
        )  # fmt: skip
        self.upstream = Counter(
            "hookshield_upstream_requests", "Attempts sent to targets, by result.",
            ["route", "target", "result"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "hookshield_upstream_duration_seconds", "Time from sending an attempt to its full answer.",
            ["route", "target"], buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "hookshield_fallbacks", "Fallback answers by reason.", ["route", "reason"], registry=r
        )
        self.circuit_state = Gauge(
            "hookshield_circuit_state", "Breaker state: 0 closed, 1 half-open, 2 open.",
            ["route", "target"], registry=r,
        )  # fmt: skip
        self.circuit_transitions = Counter(
            "hookshield_circuit_transitions", "Breaker state changes by the state entered.",
            ["route", "target", "to"], registry=r,
        )  # fmt: skip
        self.delivery_attempts = Counter(
            "hookshield_delivery_attempts", "Async delivery attempts by what followed them.",
            ["route", "result"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "hookshield_queue_depth", "Deliveries waiting or in flight.", ["route"], registry=r
        )
        self.dlq_size = Gauge(
            "hookshield_dlq_size", "Dead-lettered deliveries.", ["route"], registry=r
        )
        self.reloads = Counter(
            "hookshield_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.generation = Gauge(
            "hookshield_config_generation", "The config generation in force.", registry=r
        )
        self.route_timeout = Gauge(
            "hookshield_route_timeout_seconds",
            "Each route's configured timeout.",
            ["route"],
            registry=r,
        )
        self.health_failures = Gauge(
            "hookshield_health_check_consecutive_failures", "Failed active health probes in a row.",
            ["route", "target"], registry=r,
        )  # fmt: skip
        self.local_errors = Counter(
            "hookshield_local_errors", "Calls hookshield could not make for want of its own "
            "resources (file descriptors, buffers), by kind.", ["kind"], registry=r,
        )  # fmt: skip
        self.stale_retries = Counter(
            "hookshield_upstream_stale_retries", "Requests sent again on a new connection "
            "because the pooled one had been closed by the target before answering.",
            registry=r,
        )  # fmt: skip
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self._requests = CounterTally(self.requests)
        self._attempts = CounterTally(self.upstream)
        self._durations = HistogramTally(self.duration, BUCKETS)
        self._deliveries = CounterTally(self.delivery_attempts)

    def fold(self) -> None:
        """Add what the hot path tallied to the Prometheus metrics."""
        for tally in (self._requests, self._attempts, self._durations, self._deliveries):
            tally.fold()

    async def fold_every(self, interval_s: float = FOLD_S) -> None:
        """Fold once per `interval_s`, for as long as the task runs (and once when cancelled)."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                self.fold()
        finally:
            self.fold()

    def request(self, route: str, outcome: str) -> None:
        if self.enabled:
            self._requests.add((route, outcome))

    def attempt(self, route: str, target: str, result: str, seconds: float) -> None:
        if self.enabled:
            self._attempts.add((route, target, result))
            self._durations.observe((route, target), seconds)

    def fallback(self, route: str, reason: str) -> None:
        if self.enabled:
            self.fallbacks.labels(route, reason).inc()

    def circuit(self, route: str, target: str, state: int, entered: str | None) -> None:
        """The breaker's state now; `entered` names the state just entered (None: no change)."""
        self.circuit_state.labels(route, target).set(state)
        if entered is not None:
            self.circuit_transitions.labels(route, target, entered).inc()

    def local_error(self, kind: str) -> None:
        if self.enabled:
            self.local_errors.labels(kind).inc()

    def stale_retry(self) -> None:
        if self.enabled:
            self.stale_retries.inc()

    def delivery(self, route: str, result: str) -> None:
        if self.enabled:
            self._deliveries.add((route, result))

    def sizes(self, sizes: dict[str, tuple[int, int]], routes: list[str]) -> None:
        for route in routes:
            depth, dead = sizes.get(route, (0, 0))
            self.queue_depth.labels(route).set(depth)
            self.dlq_size.labels(route).set(dead)

    def exposition(self) -> bytes:
        self.fold()
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not shared:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, shared)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
