"""Active health checks: probe a target origin and open its breaker when it is unhealthy.

`unhealthy_threshold` consecutive failed probes (timeout, connection error, non-2xx) trip
the target's breaker, and every further failed probe keeps it open; recovery then takes
the breaker's normal half-open path with real traffic. `healthy_threshold` consecutive
good probes mark the target healthy again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hookshield import logs
from hookshield.breaker import Breaker
from hookshield.config.models import HealthCheckConfig
from hookshield.errors import LocalResourceError, ProxyError
from hookshield.upstream import Client, send


class HealthCheck:
    def __init__(
        self,
        route: str,
        url: str,
        origin: str,
        config: HealthCheckConfig,
        client: Client,
        breaker: Breaker,
        report_failures: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.route, self.url, self.origin, self.config = route, url, origin, config
        self.client, self.breaker = client, breaker
        self.report_failures = report_failures  # consecutive failed probes, after each probe
        self.healthy = True
        self.failures = 0
        self.successes = 0

    async def probe(self) -> bool | None:
        """Whether the target answered 2xx; None when hookshield itself could not probe
        (out of descriptors, say), which says nothing of the target."""
        timeout_s = self.config.timeout_ms / 1000.0
        try:
            answer = await send(self.client, "GET", self.url, self.origin, [], b"", timeout_s)
        except LocalResourceError:
            return None
        except ProxyError:
            return False
        return 200 <= answer.status < 300

    def observe(self, ok: bool) -> None:
        self._judge(ok)
        self.report_failures(self.failures)

    def _judge(self, ok: bool) -> None:
        if ok:
            self.failures, self.successes = 0, self.successes + 1
            if not self.healthy and self.successes >= self.config.healthy_threshold:
                self._set(healthy=True)
            return
        self.failures, self.successes = self.failures + 1, 0
        if self.failures >= self.config.unhealthy_threshold:
            if self.healthy:
                self._set(healthy=False)
            self.breaker.trip()

    def _set(self, healthy: bool) -> None:
        self.healthy = healthy
        level = logging.INFO if healthy else logging.WARNING
        logs.event("health_check", level, route=self.route, url=self.url, healthy=healthy)

    async def run(self) -> None:
        """Probe every `interval_s` until cancelled."""
        while True:
            ok = await self.probe()
            if ok is not None:
                self.observe(ok)
            await asyncio.sleep(self.config.interval_s)
