"""Token bucket and bulkhead on a driven clock; the deliverer's per-origin slots."""

from __future__ import annotations

import asyncio

from hookshield.config.models import RateLimitConfig
from hookshield.limits import Bulkhead, OriginSlots, TokenBucket
from tests.test_breaker import Clock


def test_bucket_allows_burst_then_refills_at_rate() -> None:
    """burst requests pass at once; then one per 1/per_second seconds."""
    clock = Clock()
    bucket = TokenBucket(RateLimitConfig(per_second=2, burst=3), clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after_s() == 0.5
    clock.now += 0.5
    assert bucket.take()
    assert not bucket.take()


def test_bucket_headers_report_limit_remaining_reset() -> None:
    """X-RateLimit-* say the burst, the whole tokens left, and seconds until full."""
    clock = Clock()
    bucket = TokenBucket(RateLimitConfig(per_second=1, burst=5), clock)
    bucket.take()
    bucket.take()
    assert bucket.headers() == {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "3",
        "X-RateLimit-Reset": "2",
    }


def test_bulkhead_admits_up_to_limit() -> None:
    """enter() fails at once past the limit and succeeds again after leave()."""
    bulkhead = Bulkhead(2)
    assert [bulkhead.enter(), bulkhead.enter(), bulkhead.enter()] == [True, True, False]
    bulkhead.leave()
    assert bulkhead.enter()


async def test_origin_slots_cap_each_origin_and_forget_unused_ones() -> None:
    """At most `size` per origin (others unaffected); past the cap a taker gets False after
    `wait_s`, or the slot freed meanwhile; an origin nobody holds is forgotten."""
    slots = OriginSlots(2, wait_s=0.05)
    assert await slots.take("a")
    assert await slots.take("a")
    assert await slots.take("b")
    assert not await slots.take("a")
    waiting = asyncio.create_task(slots.take("a"))
    await asyncio.sleep(0)
    slots.give("a")
    assert await waiting
    for origin in ("a", "a", "b"):
        slots.give(origin)
    assert len(slots) == 0
