"""A `Runtime`: everything the hot path needs, built once from a `Config`.

Each route becomes a `RoutePlan` with its target resolver, header policy, signer, client
session, breakers, limits and fallback ready. A reload builds a whole new `Runtime` and
swaps the one reference held by `State`; a request keeps the runtime it started with.
A runtime's background tasks (health checks) are started and stopped with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from aiohttp import web
from yarl import URL

from hookshield import logs
from hookshield.breaker import Breakers, CircuitState, TransitionListener
from hookshield.config.models import Config, DynamicTarget, RouteConfig, StaticTarget
from hookshield.config.routes import compile_host_globs
from hookshield.errors import LocalResourceError
from hookshield.fallback import Fallback
from hookshield.headers import HeaderPolicy
from hookshield.health import HealthCheck
from hookshield.limits import RATE_LIMIT_HEADERS, Bulkhead, TokenBucket
from hookshield.metrics import Metrics
from hookshield.queue.base import DeliveryStore
from hookshield.routing import Router
from hookshield.signing import Signer, build_signer
from hookshield.stats import Stats
from hookshield.targets import Resolver, StaticResolver, resolver_for
from hookshield.tasks import service
from hookshield.upstream import Client, Upstream

if TYPE_CHECKING:
    from hookshield.delivery import Deliverer
    from hookshield.reload import Reloader


@dataclass(frozen=True, slots=True)
class RoutePlan:
    config: RouteConfig
    target_label: Callable[[str], str]  # target origin -> the bounded `target` metric label
    resolver: Resolver
    headers: HeaderPolicy
    signer: Signer | None
    client: Client
    timeout_s: float
    breakers: Breakers
    bucket: TokenBucket | None
    bulkhead: Bulkhead | None
    fallback: Fallback | None

    @property
    def path_prefix(self) -> str:
        return self.config.path_prefix

    @property
    def methods(self) -> frozenset[str] | None:
        return self.config.methods

    @property
    def queues(self) -> bool:
        """Calls of this route may be queued: an async route, or a sync one with `fallback.queue`."""
        fallback = self.config.fallback
        return self.config.mode == "async" or (fallback is not None and fallback.queue)


def _on_transition(route: str, label: Callable[[str], str], metrics: Metrics) -> TransitionListener:
    """Breaker changes go to the circuit metrics and, when the state really changed, the log."""

    def record(origin: str, old: CircuitState, new: CircuitState) -> None:
        changed = old is not new
        metrics.circuit(route, label(origin), new.value, new.name.lower() if changed else None)
        if changed:
            level = logging.WARNING if new is CircuitState.OPEN else logging.INFO
            logs.event("circuit", level, route=route, target=origin, old=old.name, new=new.name)

    return record


def target_labeler(target: StaticTarget | DynamicTarget) -> Callable[[str], str]:
    """Static: the target's origin. Dynamic: the `allow_hosts` glob the host matched, or `other`."""
    if isinstance(target, StaticTarget):
        origin = str(target.url.origin())
        return lambda _origin: origin
    globs = [(glob, compile_host_globs([glob])) for glob in target.allow_hosts]

    def label(origin: str) -> str:
        host = URL(origin).host or ""
        return next((glob for glob, pattern in globs if pattern.fullmatch(host)), "other")

    return label


def build_plan(
    route: RouteConfig, upstream: Upstream, metrics: Metrics, previous: RoutePlan | None = None
) -> RoutePlan:
    """A route's plan. From `previous` (the same route in the runtime being replaced) the live
    breakers, rate-limit bucket, bulkhead and fallback cache are kept when their settings did
    not change; the rest is built anew."""
    target = route.target
    client = upstream.client(target.allow_networks if isinstance(target, DynamicTarget) else None)
    label = target_labeler(target)
    signer = build_signer(route.signing) if route.signing else None
    replaced = ("X-Request-ID", "X-Timeout-Ms", *(signer.names if signer else ()))
    plan = RoutePlan(
        config=route,
        target_label=label,
        resolver=resolver_for(target),
        headers=HeaderPolicy(
            route.headers, replaced, RATE_LIMIT_HEADERS if route.rate_limit else ()
        ),
        signer=signer,
        client=client,
        timeout_s=route.timeout_ms / 1000.0,
        breakers=Breakers(route.breaker, _on_transition(route.name, label, metrics)),
        bucket=TokenBucket(route.rate_limit) if route.rate_limit else None,
        bulkhead=Bulkhead(route.max_concurrent) if route.max_concurrent else None,
        fallback=Fallback(route.fallback) if route.fallback else None,
    )
    return _carry_over(plan, previous) if previous is not None else plan


_CARRIED = {  # live part of a plan -> the settings it depends on
    "breakers": ("breaker", "target"),
    "bucket": ("rate_limit",),
    "bulkhead": ("max_concurrent",),
    "fallback": ("fallback",),
}


def _carry_over(plan: RoutePlan, previous: RoutePlan) -> RoutePlan:
    kept = {
        part: getattr(previous, part)
        for part, settings in _CARRIED.items()
        if all(getattr(previous.config, s) == getattr(plan.config, s) for s in settings)
    }
    return replace(plan, **kept)


def _health_check(plan: RoutePlan, metrics: Metrics) -> HealthCheck | None:
    config, resolver = plan.config.health_check, plan.resolver
    if config is None or not isinstance(resolver, StaticResolver):
        return None
    breaker = plan.breakers.get(resolver.origin)
    failures = metrics.health_failures.labels(plan.config.name, resolver.origin)
    url = resolver.origin + config.path
    return HealthCheck(
        plan.config.name, url, resolver.origin, config, plan.client, breaker, failures.set
    )


@dataclass(slots=True)
class Runtime:
    generation: int
    config: Config
    router: Router[RoutePlan]
    plans: tuple[RoutePlan, ...]
    health_checks: tuple[HealthCheck, ...]
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _by_name: dict[str, RoutePlan] = field(default_factory=dict)

    def plan(self, route: str) -> RoutePlan | None:
        if not self._by_name:
            self._by_name = {p.config.name: p for p in self.plans}
        return self._by_name.get(route)

    def start(self) -> None:
        """Start this runtime's background tasks (health checks)."""
        self._tasks = [
            service(f"health_check {check.route} {check.origin}", check.run)
            for check in self.health_checks
        ]

    async def stop(self, deadline_s: float = 5.0) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await asyncio.gather(*tasks, return_exceptions=True)


def build_runtime(
    config: Config,
    upstream: Upstream,
    metrics: Metrics,
    generation: int,
    previous: Runtime | None = None,
) -> Runtime:
    """A runtime for `config`, carrying over the live state of unchanged routes of `previous`."""
    old = previous.plan if previous else (lambda name: None)
    plans = tuple(build_plan(route, upstream, metrics, old(route.name)) for route in config.routes)
    checks = tuple(c for c in (_health_check(p, metrics) for p in plans) if c is not None)
    return Runtime(generation, config, Router(plans), plans, checks)


class State:
    """The process-wide holder: the current runtime, the client sessions and the queue.

    `store`, `deliverer` (worker 0 only), `wake_deliverer` and `reloader` are set by the
    lifecycle (`server`) while it runs;
    `data_calls` (how many calls the data plane has received) by `app.App`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics(enabled=config.metrics_enabled)
        self.stats = Stats()
        self.upstream = Upstream(config.limits, self.metrics.stale_retry)
        self.runtime: Runtime | None = None
        self.store: DeliveryStore | None = None
        self.deliverer: Deliverer | None = None
        self.wake_deliverer: Callable[[], None] = lambda: None
        self.reloader: Reloader | None = None
        self.data_calls: Callable[[], int] = lambda: 0

    def install(self, config: Config) -> Runtime:
        """Build a runtime for `config` (beside the current one), start it and make it current.

        The caller stops the previous runtime's background tasks."""
        generation = self.runtime.generation + 1 if self.runtime else 1
        runtime = build_runtime(config, self.upstream, self.metrics, generation, self.runtime)
        runtime.start()
        self.upstream.configure(config.limits)
        self.runtime, self.config = runtime, config
        self.metrics.generation.set(generation)
        for route in config.routes:
            self.metrics.route_timeout.labels(route.name).set(route.timeout_ms / 1000)
        return runtime

    def local_error(self, error: LocalResourceError) -> None:
        """hookshield ran short of a resource while calling a target: logged and counted."""
        self.metrics.local_error(error.kind)
        logs.event("local_error", logging.ERROR, kind=error.kind, error=error.message)

    def record_attempt(self, plan: RoutePlan, origin: str, result: str, seconds: float) -> None:
        """One attempt to a target: into the metrics and the recent-window statistics."""
        if self.metrics.enabled:
            label = plan.target_label(origin)
            self.metrics.attempt(plan.config.name, label, result, seconds)
            self.stats.add(plan.config.name, label, result, seconds)


STATE = web.AppKey("hookshield.state", State)
