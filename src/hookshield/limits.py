"""Per-route rate limit (token bucket) and concurrency limit (bulkhead), SPEC §5, and the
deliverer's per-target cap (`OriginSlots`).

The route limits answer at once: a request over either is never queued in memory. A
delivery waits a moment for a slot of its target (it usually frees within a round trip).
"""

from __future__ import annotations

import asyncio
import math
import time

from hookshield.breaker import Clock
from hookshield.config.models import RateLimitConfig

RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


class TokenBucket:
    """`burst` tokens, refilled at `per_second`; one token per request."""

    def __init__(self, config: RateLimitConfig, clock: Clock = time.monotonic) -> None:
        self.rate, self.capacity = config.per_second, float(config.burst)
        self._clock = clock
        self._tokens = self.capacity
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def retry_after_s(self) -> float:
        """Seconds until one token is available."""
        return max(0.0, (1.0 - self._tokens) / self.rate)

    def headers(self) -> dict[str, str]:
        """`X-RateLimit-Limit/Remaining/Reset` (Reset: seconds until the bucket is full)."""
        reset = math.ceil((self.capacity - self._tokens) / self.rate)
        values = (str(int(self.capacity)), str(int(self._tokens)), str(reset))
        return dict(zip(RATE_LIMIT_HEADERS, values, strict=True))


class Bulkhead:
    """At most `limit` calls in flight; `enter` answers False at once when full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


class OriginSlots:
    """At most `size` deliveries at once to one target origin. An origin that no delivery
    holds or waits for is forgotten, so many origins (dynamic targets) do not accumulate."""

    def __init__(self, size: int, wait_s: float) -> None:
        self.size, self.wait_s = size, wait_s
        self._origins: dict[str, _Slots] = {}

    def __len__(self) -> int:
        """Origins in use."""
        return len(self._origins)

    async def take(self, origin: str) -> bool:
        """One of the origin's slots, waiting up to `wait_s` for it; False if none freed."""
        slots = self._origins.get(origin)
        if slots is None:
            slots = self._origins[origin] = _Slots(self.size)
        slots.users += 1
        try:
            if await slots.take(self.wait_s):
                return True
        except BaseException:
            self._leave(origin)
            raise
        self._leave(origin)
        return False

    def give(self, origin: str) -> None:
        self._origins[origin].free.release()
        self._leave(origin)

    def _leave(self, origin: str) -> None:
        slots = self._origins[origin]
        slots.users -= 1
        if slots.users == 0:
            del self._origins[origin]


class _Slots:
    """One origin's slots, and how many deliveries hold or wait for one."""

    def __init__(self, size: int) -> None:
        self.free = asyncio.Semaphore(size)
        self.users = 0

    async def take(self, wait_s: float) -> bool:
        if not self.free.locked():
            return await self.free.acquire()  # free: taken at once, no timer
        try:
            async with asyncio.timeout(wait_s):
                return await self.free.acquire()
        except TimeoutError:
            return False
