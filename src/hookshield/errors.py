"""hookshield's own answers: one exception class per SPEC §4 error code.

Every answer that hookshield makes itself (rather than the target) is one of these,
turned into the SPEC's JSON body by `ProxyError.to_answer`, the only place that does so.
"""

from __future__ import annotations

import json

from multidict import CIMultiDict

from hookshield.message import Answer


class ProxyError(Exception):
    """Base of hookshield-made error answers; subclasses fix status, code and fallback reason."""

    status: int = 500
    code: str = "INTERNAL"
    # The fallback reason (SPEC §4) this failure maps to, or None when a fallback never applies.
    fallback_reason: str | None = None

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, int(self.retry_after_s + 0.999)))
        return headers

    def to_answer(self, request_id: str) -> Answer:
        body = {"success": False, "error": self.message, "code": self.code, "requestId": request_id}
        headers = CIMultiDict(self.headers())
        headers["Content-Type"] = "application/json"
        return Answer(self.status, headers, json.dumps(body).encode(), outcome=f"error:{self.code}")


class Timeout(ProxyError):
    status, code, fallback_reason = 504, "TIMEOUT", "timeout"


class UpstreamUnreachable(ProxyError):
    status, code, fallback_reason = 502, "UPSTREAM_UNREACHABLE", "upstream_unreachable"


class UpstreamError(ProxyError):
    status, code, fallback_reason = 502, "UPSTREAM_ERROR", "upstream_error"


class CircuitOpen(ProxyError):
    status, code, fallback_reason = 503, "CIRCUIT_OPEN", "circuit_open"


class RateLimited(ProxyError):
    status, code, fallback_reason = 429, "RATE_LIMITED", "rate_limited"


class Overloaded(ProxyError):
    status, code, fallback_reason = 503, "OVERLOADED", "overloaded"


class LocalResourceError(Overloaded):
    """hookshield itself ran out of a resource (file descriptors, socket buffers) while
    calling a target: its own failure, never counted against the target's breaker."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # the `kind` label of hookshield_local_errors_total


class NoRoute(ProxyError):
    status, code = 404, "NO_ROUTE"


class MethodNotAllowed(ProxyError):
    status, code = 405, "METHOD_NOT_ALLOWED"

    def __init__(self, message: str, *, allow: list[str]) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Allow": ", ".join(self.allow)}


class PayloadTooLarge(ProxyError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class TargetForbidden(ProxyError):
    status, code = 403, "TARGET_FORBIDDEN"


class BadRequest(ProxyError):
    status, code = 400, "BAD_REQUEST"


class QueueUnavailable(ProxyError):
    status, code = 503, "QUEUE_UNAVAILABLE"


# The platform-side HTTP rules (SPEC §9): the connection is closed after these answers.
class HeadersTooLarge(ProxyError):
    status, code = 431, "HEADERS_TOO_LARGE"


class UriTooLong(ProxyError):
    status, code = 414, "URI_TOO_LONG"


class RequestTimeout(ProxyError):
    status, code = 408, "REQUEST_TIMEOUT"


class VersionNotSupported(ProxyError):
    status, code = 505, "VERSION_NOT_SUPPORTED"
