"""The validated configuration: frozen, typed, built once by `config.parse`.

Nothing here reads files or environment; the hot path never sees raw YAML.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from yarl import URL

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Mode = Literal["sync", "async"]
Scheme = Literal["hmac-sha256", "standard-webhooks", "stripe"]
SCHEMES: tuple[Scheme, ...] = ("hmac-sha256", "standard-webhooks", "stripe")


@dataclass(frozen=True)
class Secret:
    """A named signing secret. Its value never appears in `repr` (and so in no log)."""

    name: str
    value: bytes = field(repr=False)


@dataclass(frozen=True)
class Address:
    host: str
    port: int


@dataclass(frozen=True)
class AdminConfig(Address):
    token_env: str | None = None


@dataclass(frozen=True)
class QueueConfig:
    redis_url: str | None
    sqlite_path: Path
    workers: int
    lease_s: float = 10.0  # how long a lease lasts between renewals (SPEC §12)


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    recovery_timeout_s: float = 60.0
    success_threshold: int = 3
    half_open_max_calls: int = 1
    max_recovery_timeout_s: float = 600.0
    failure_rate: float = 0.0  # 0 = rate mode off; else open at this failure share...
    window_s: float = 60.0  # ...over this rolling window...
    min_requests: int = 20  # ...once it holds at least this many calls
    trip_on_429: bool = True  # a 429 from the target counts as a failure


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = 3
    initial_delay_ms: float = 1000.0
    multiplier: float = 2.0
    max_delay_ms: float = 30000.0
    jitter: bool = True
    schedule_s: tuple[float, ...] = ()
    sync_attempts: int = 1  # sync routes: 2 = one retry of a connect error / 502 / 503 / 504


@dataclass(frozen=True)
class HealthCheckConfig:
    path: str
    interval_s: float = 10.0
    timeout_ms: float = 2000.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2


@dataclass(frozen=True)
class HeadersConfig:
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    allow_underscores: bool = False  # forward header names spelled with `_` (SPEC §9)


@dataclass(frozen=True)
class Limits:
    """`limits`: the data plane's sizes and timeouts on both sides (SPEC §4, §9)."""

    max_body_bytes: int = 1024 * 1024
    max_response_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 65536  # request line + header block
    max_headers: int = 100
    max_url_bytes: int = 8192
    header_timeout_ms: float = 10000.0  # the whole header block
    body_timeout_ms: float = 10000.0  # the longest gap between body bytes
    idle_timeout_s: float = 75.0  # an idle keep-alive connection of the platform's
    max_response_header_bytes: int = 65536  # a target's status line + header block
    max_response_headers: int = 100
    max_idle_connections: int = 256  # idle pooled target connections, all origins together
    upstream_keepalive_s: float = 30.0  # how long a pooled target connection may stay idle


@dataclass(frozen=True)
class SigningConfig:
    scheme: Scheme
    secrets: tuple[Secret, ...]
    header: str


@dataclass(frozen=True)
class RateLimitConfig:
    per_second: float
    burst: int


@dataclass(frozen=True)
class StaticResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class FallbackConfig:
    cached_ttl_s: float | None = None
    response: StaticResponse | None = None
    queue: bool = False


@dataclass(frozen=True)
class StaticTarget:
    url: URL


@dataclass(frozen=True)
class DynamicTarget:
    """A target URL taken per request from a header, checked against allow-lists."""

    from_header: str
    allow_hosts: tuple[str, ...]
    host_pattern: re.Pattern[str]
    allow_networks: tuple[Network, ...]


Target = StaticTarget | DynamicTarget


@dataclass(frozen=True)
class RouteConfig:
    name: str
    path_prefix: str
    methods: frozenset[str] | None
    target: Target
    mode: Mode
    timeout_ms: float
    headers: HeadersConfig
    signing: SigningConfig | None
    fallback: FallbackConfig | None
    rate_limit: RateLimitConfig | None
    max_concurrent: int | None
    breaker: BreakerConfig
    retry: RetryConfig
    pass_errors: bool
    health_check: HealthCheckConfig | None


@dataclass(frozen=True)
class Config:
    listen: Address
    admin: AdminConfig
    queue: QueueConfig
    log_level: str
    routes: tuple[RouteConfig, ...]
    source: Path | None = None
    secret_files: tuple[Path, ...] = ()  # re-read on reload; a change to one triggers a reload
    reload_poll_s: float = 1.0
    metrics_enabled: bool = True
    limits: Limits = field(default_factory=Limits)

    @property
    def max_body_bytes(self) -> int:
        return self.limits.max_body_bytes

    @property
    def max_response_bytes(self) -> int:
        return self.limits.max_response_bytes
