"""The retry schedule: backoff, jitter, a fixed schedule, and `Retry-After`."""

from __future__ import annotations

from hookshield.config.models import RetryConfig
from hookshield.retry import backoff_s, retry_after_s


def test_backoff_exponential_capped_scheduled_and_retry_after() -> None:
    """initial x multiplier^(n-1) capped; jitter stays within [0, that]; schedule; Retry-After floor."""
    plain = RetryConfig(initial_delay_ms=100, multiplier=3, max_delay_ms=500, jitter=False)
    assert [backoff_s(plain, n) for n in (1, 2, 3)] == [0.1, 0.3, 0.5]
    jittered = RetryConfig(initial_delay_ms=1000, jitter=True)
    assert all(0 <= backoff_s(jittered, 2) <= 2.0 for _ in range(100))
    scheduled = RetryConfig(schedule_s=(60, 300))
    assert [backoff_s(scheduled, n) for n in (1, 2, 3)] == [60, 300, 300]
    assert backoff_s(plain, 1, retry_after_s=7) == 7


def test_retry_after_parses_seconds_and_dates() -> None:
    """Retry-After in seconds or as an HTTP date."""
    now = 1_700_000_000.0
    assert retry_after_s("5", now) == 5
    assert retry_after_s("Tue, 14 Nov 2023 22:13:30 GMT", now) == 10
    assert retry_after_s("soon", now) is None
