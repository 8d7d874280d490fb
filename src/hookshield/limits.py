"""Per-route rate limit (token bucket) and concurrency limit (bulkhead), SPEC §5.

Both answer at once: a request over either limit is never queued in memory.
"""

from __future__ import annotations

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
