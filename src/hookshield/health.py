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

import aiohttp

from hookshield import logs
from hookshield.breaker import Breaker
from hookshield.config.models import HealthCheckConfig


class HealthCheck:
    def __init__(
        self,
        route: str,
        url: str,
        config: HealthCheckConfig,
        session: aiohttp.ClientSession,
        breaker: Breaker,
        report_failures: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.route, self.url, self.config = route, url, config
        self.session, self.breaker = session, breaker
        self.report_failures = report_failures  # consecutive failed probes, after each probe
        self.healthy = True
        self.failures = 0
        self.successes = 0

    async def probe(self) -> bool:
        try:
            async with asyncio.timeout(self.config.timeout_ms / 1000.0):
                async with self.session.get(self.url, allow_redirects=False) as response:
                    await response.read()
                    return 200 <= response.status < 300
        except (TimeoutError, aiohttp.ClientError):
            return False

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
            self.observe(await self.probe())
            await asyncio.sleep(self.config.interval_s)
