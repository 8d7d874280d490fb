"""When a failed delivery is tried again: the route's `retry` (exponential backoff with full
jitter, or a fixed schedule) with the target's `Retry-After` as a floor (capped at a day).
"""

from __future__ import annotations

import email.utils
import random

from hookshield.config.models import RetryConfig

MAX_RETRY_AFTER_S = 24 * 3600.0


def backoff_s(retry: RetryConfig, attempt: int, retry_after_s: float | None = None) -> float:
    """The pause after failed attempt number `attempt` (1-based)."""
    if retry.schedule_s:
        delay = retry.schedule_s[min(attempt, len(retry.schedule_s)) - 1]
    else:
        delay = (
            min(retry.initial_delay_ms * retry.multiplier ** (attempt - 1), retry.max_delay_ms)
            / 1000
        )
        if retry.jitter:
            delay *= random.random()  # full jitter
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay


def retry_after_s(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds from now: a number of seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None
