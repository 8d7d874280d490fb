"""Prometheus metrics (SPEC §7), declared once, on the process's own registry.

Label values are bounded: `route` is a configured route name, `target` a static target's
origin or, for a dynamic target, the `allow_hosts` glob its host matched (else `other`).
`Metrics(enabled=False)` keeps the same interface and records nothing (for measuring the
cost of metrics, or when nothing scrapes them).

With `--workers N` (`supervisor`) every worker writes its values to the shared directory
named by `PROMETHEUS_MULTIPROC_DIR` and `exposition()` sums them: counters and histograms
add up, gauges show the highest live worker's value (a breaker open in any worker is open).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import Gauge as _Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Webhook latencies: 5 ms to 30 s.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
Gauge = partial(_Gauge, multiprocess_mode="livemax")  # the mode matters only with workers


class Metrics:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
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
        for result in ("success", "failure"):
            self.reloads.labels(result)

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once per label set (the hot path's metrics)."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, route: str, outcome: str) -> None:
        if self.enabled:
            self._child(self.requests, route, outcome).inc()

    def attempt(self, route: str, target: str, result: str, seconds: float) -> None:
        if self.enabled:
            self._child(self.upstream, route, target, result).inc()
            self._child(self.duration, route, target).observe(seconds)

    def fallback(self, route: str, reason: str) -> None:
        if self.enabled:
            self.fallbacks.labels(route, reason).inc()

    def circuit(self, route: str, target: str, state: int, entered: str | None) -> None:
        """The breaker's state now; `entered` names the state just entered (None: no change)."""
        self.circuit_state.labels(route, target).set(state)
        if entered is not None:
            self.circuit_transitions.labels(route, target, entered).inc()

    def delivery(self, route: str, result: str) -> None:
        if self.enabled:
            self.delivery_attempts.labels(route, result).inc()

    def sizes(self, sizes: dict[str, tuple[int, int]], routes: list[str]) -> None:
        for route in routes:
            depth, dead = sizes.get(route, (0, 0))
            self.queue_depth.labels(route).set(depth)
            self.dlq_size.labels(route).set(dead)

    def exposition(self) -> bytes:
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not shared:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, shared)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
