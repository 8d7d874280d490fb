"""The one classification of a call's result, used by breakers, retries, DLQ and metrics.

Every attempt ends as one `Kind`. Whether that kind trips a breaker, may be retried by
async delivery, and which `result` label it carries in metrics is decided here and
nowhere else.
"""

from __future__ import annotations

import enum

from hookshield.errors import ProxyError, Timeout, UpstreamError, UpstreamUnreachable


class Kind(enum.Enum):
    SUCCESS = "success"  # 2xx
    REDIRECT = "redirect"  # 3xx: passed back on sync routes, a failure for async delivery
    REJECTED = "rejected"  # 4xx other than the ones below: the target's business answer
    RETRY_LATER = "retry_later"  # 408, 425: the target asks for the same request again
    THROTTLED = "throttled"  # 429
    SERVER_ERROR = "server_error"  # 5xx
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # connection refused, reset, DNS failure


_RETRY_LATER_STATUSES = frozenset({408, 425})


def of_status(status: int) -> Kind:
    if status < 300:
        return Kind.SUCCESS
    if status < 400:
        return Kind.REDIRECT
    if status == 429:
        return Kind.THROTTLED
    if status in _RETRY_LATER_STATUSES:
        return Kind.RETRY_LATER
    return Kind.REJECTED if status < 500 else Kind.SERVER_ERROR


def of_error(error: ProxyError) -> Kind | None:
    """The kind of a failed attempt, or None when the error is not about the target."""
    if isinstance(error, Timeout):
        return Kind.TIMEOUT
    if isinstance(error, UpstreamUnreachable):
        return Kind.UNREACHABLE
    if isinstance(error, UpstreamError):  # an answer too large to pass on
        return Kind.SERVER_ERROR
    return None


def trips_breaker(kind: Kind, trip_on_429: bool = True) -> bool:
    """Timeouts, connection errors and 5xx count (429 too unless configured off);
    a 4xx is the target's answer and never counts."""
    if kind is Kind.THROTTLED:
        return trip_on_429
    return kind in (Kind.SERVER_ERROR, Kind.TIMEOUT, Kind.UNREACHABLE)


def retryable(kind: Kind) -> bool:
    """For async delivery: may this attempt be tried again (else dead-letter)?"""
    return kind in (
        Kind.SERVER_ERROR, Kind.TIMEOUT, Kind.UNREACHABLE, Kind.THROTTLED, Kind.RETRY_LATER,
    )  # fmt: skip


def metric_result(kind: Kind) -> str:
    """The `result` label of `hookshield_upstream_requests_total`."""
    if kind is Kind.TIMEOUT:
        return "timeout"
    if kind is Kind.UNREACHABLE:
        return "connect_error"
    return "success" if kind in (Kind.SUCCESS, Kind.REDIRECT, Kind.REJECTED) else "http_error"
