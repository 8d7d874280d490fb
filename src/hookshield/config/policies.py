"""The per-route policy keys that `defaults` and every route share.

`parse_policies(section, base, ...)` reads a mapping on top of `base`: a key the section
leaves out keeps the base value, and inside `breaker` and `retry` each field is inherited
on its own. `headers`, `signing`, `fallback` and `rate_limit` replace the base as a whole.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

from hookshield.config.models import (
    SCHEMES,
    BreakerConfig,
    FallbackConfig,
    HeadersConfig,
    HealthCheckConfig,
    Mode,
    RateLimitConfig,
    RetryConfig,
    Secret,
    SigningConfig,
    StaticResponse,
)
from hookshield.config.reader import Section, parse_duration

POLICY_KEYS = (
    "mode", "timeout_ms", "headers", "signing", "fallback", "rate_limit",
    "max_concurrent", "breaker", "retry", "pass_errors", "health_check",
)  # fmt: skip
DEFAULT_SIGNATURE_HEADERS: dict[str, str] = {
    "hmac-sha256": "X-Platform-Signature",
    "standard-webhooks": "webhook-signature",
    "stripe": "Stripe-Signature",
}


@dataclass(frozen=True)
class Policies:
    mode: Mode = "sync"
    timeout_ms: float = 10000.0
    headers: HeadersConfig = field(default_factory=HeadersConfig)
    signing: SigningConfig | None = None
    fallback: FallbackConfig | None = None
    rate_limit: RateLimitConfig | None = None
    max_concurrent: int | None = None
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    pass_errors: bool = False
    health_check: HealthCheckConfig | None = None


def parse_policies(section: Section, base: Policies, secrets: dict[str, Secret]) -> Policies:
    s = section
    return Policies(
        mode=_mode(s, base.mode),
        timeout_ms=s.number("timeout_ms", base.timeout_ms),
        headers=_headers(s.section("headers", ("add", "remove", "allow_underscores")))
        if s.has("headers")
        else base.headers,
        signing=_signing(s.section("signing", ("scheme", "secret", "header")), secrets)
        if s.has("signing")
        else base.signing,
        fallback=_fallback(s.section("fallback", ("cached", "response", "queue")))
        if s.has("fallback")
        else base.fallback,
        rate_limit=_rate_limit(s.section("rate_limit", ("per_second", "burst")))
        if s.has("rate_limit")
        else base.rate_limit,
        max_concurrent=s.integer("max_concurrent", 1)
        if s.has("max_concurrent")
        else base.max_concurrent,
        breaker=_breaker(s.section("breaker", _names(BreakerConfig)), base.breaker),
        retry=_retry(s.section("retry", (*_names(RetryConfig), "schedule")), base.retry),
        pass_errors=s.boolean("pass_errors", base.pass_errors),
        health_check=_health_check(s.section("health_check", (*_names(HealthCheckConfig),)))
        if s.has("health_check")
        else base.health_check,
    )


def _names(model: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(model) if f.name != "schedule_s")


def _mode(section: Section, default: Mode) -> Mode:
    mode = section.string("mode", default)
    if mode not in ("sync", "async"):
        section.fail("mode", "must be 'sync' or 'async'")
        return default
    return cast(Mode, mode)


_Numeric = Any  # BreakerConfig | RetryConfig: frozen dataclasses of int/float/bool fields


def _numbers(section: Section, base: _Numeric, zero_ok: tuple[str, ...] = ()) -> _Numeric:
    """Read each int/float/bool field of `base`'s dataclass, inheriting what is absent.

    Numbers must be > 0 (ints >= 1), except the fields in `zero_ok`, which may be 0.
    """
    changes: dict[str, object] = {}
    for f in fields(base):
        current = getattr(base, f.name)
        if f.name not in section.raw or not isinstance(current, int | float):
            continue
        if isinstance(current, bool):
            changes[f.name] = section.boolean(f.name, current)
        elif isinstance(current, int):
            changes[f.name] = section.integer(f.name, current)
        else:
            changes[f.name] = section.number(f.name, current, above=f.name not in zero_ok)
    return replace(base, **changes)


def _breaker(section: Section, base: BreakerConfig) -> BreakerConfig:
    breaker: BreakerConfig = _numbers(section, base, zero_ok=("failure_rate",))
    if breaker.failure_rate > 1:
        section.fail("failure_rate", "must be a share between 0 and 1")
        breaker = replace(breaker, failure_rate=base.failure_rate)
    return breaker


def _health_check(section: Section) -> HealthCheckConfig | None:
    path = section.required_string("path")
    if path and not path.startswith("/"):
        section.fail("path", "must start with '/'")
    return _numbers(section, HealthCheckConfig(path=path)) if path else None


def _retry(section: Section, base: RetryConfig) -> RetryConfig:
    retry: RetryConfig = _numbers(section, base)
    if section.has("schedule"):
        schedule = _schedule(section)
        if schedule:
            attempts = retry.max_attempts if "max_attempts" in section.raw else len(schedule)
            retry = replace(retry, schedule_s=schedule, max_attempts=attempts)
    if retry.multiplier < 1:
        section.fail("multiplier", "must be >= 1")
    return retry


def _schedule(section: Section) -> tuple[float, ...]:
    raw = section.raw["schedule"]
    if not isinstance(raw, list) or not raw:
        section.fail("schedule", "must be a non-empty list of durations like 500ms, 5s, 1m, 2h")
        return ()
    delays = [parse_duration(item) if isinstance(item, str) else None for item in raw]
    for i, delay in enumerate(delays):
        if delay is None:
            section.problems.add(
                f"{section.at('schedule')}[{i}]",
                f"must be a duration like 500ms, 5s, 1m, 2h, got {raw[i]!r}",
            )
    return tuple(d for d in delays if d is not None) if None not in delays else ()


def _headers(section: Section) -> HeadersConfig:
    add = section.string_map("add")
    return HeadersConfig(
        add=tuple(add.items()),
        remove=section.strings("remove"),
        allow_underscores=section.boolean("allow_underscores", False),
    )


def _signing(section: Section, secrets: dict[str, Secret]) -> SigningConfig | None:
    scheme = section.required_string("scheme")
    if scheme and scheme not in SCHEMES:
        section.fail("scheme", f"must be one of {', '.join(SCHEMES)}")
        return None
    names = section.strings("secret")
    if not names:
        section.problems.add(section.at("secret"), "is required (a secret name or a list of names)")
    chosen = [_secret(section, name, secrets, scheme) for name in names]
    if not scheme or None in chosen or not chosen:
        return None
    header = section.string("header", DEFAULT_SIGNATURE_HEADERS[scheme]) or ""
    return SigningConfig(scheme, tuple(s for s in chosen if s is not None), header)


def _secret(section: Section, name: str, secrets: dict[str, Secret], scheme: str) -> Secret | None:
    secret = secrets.get(name)
    if secret is None:
        known = ", ".join(sorted(secrets)) or "none"
        section.problems.add(section.at("secret"), f"unknown secret '{name}' (defined: {known})")
        return None
    if scheme == "standard-webhooks" and not _is_whsec(secret.value):
        section.problems.add(
            section.at("secret"),
            f"secret '{name}' must be in whsec_<base64> form for standard-webhooks",
        )
        return None
    return secret


def _is_whsec(value: bytes) -> bool:
    if not value.startswith(b"whsec_"):
        return False
    try:
        return bool(base64.b64decode(value[6:], validate=True))
    except binascii.Error:
        return False


def _rate_limit(section: Section) -> RateLimitConfig:
    per_second = section.number("per_second", 1.0)
    burst = section.integer("burst", max(1, math.ceil(per_second)))
    return RateLimitConfig(per_second, burst)


def _fallback(section: Section) -> FallbackConfig | None:
    if not section.raw:
        section.problems.add(section.path, "needs at least one of 'cached', 'response', 'queue'")
        return None
    cached = section.section("cached", ("ttl_s",))
    response = section.section("response", ("status", "headers", "body"))
    return FallbackConfig(
        cached_ttl_s=cached.number("ttl_s", 300.0) if section.has("cached") else None,
        response=_static_response(response) if section.has("response") else None,
        queue=section.boolean("queue", False),
    )


def _static_response(section: Section) -> StaticResponse:
    status = section.integer("status", 200, minimum=100)
    if status > 599:
        section.fail("status", "must be an HTTP status (100-599)")
    headers = section.string_map("headers")
    body = section.raw.get("body")
    if isinstance(body, dict | list):
        data = json.dumps(body, separators=(",", ":")).encode()
        content_type = "application/json"
    else:
        data = b"" if body is None else str(body).encode()
        content_type = "text/plain; charset=utf-8"
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = content_type
    return StaticResponse(status, tuple(headers.items()), data)
