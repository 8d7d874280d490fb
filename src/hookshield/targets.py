"""Where a request goes: the target URL for a route, the path remainder and query appended.

Static targets are fixed at load time. Dynamic targets come from a request header and
must name an allowed host; the address they connect to is checked by `netguard` at
connect time, so this module only decides the URL.
"""

from __future__ import annotations

from yarl import URL

from hookshield.config.models import DynamicTarget, StaticTarget, Target
from hookshield.errors import BadRequest, TargetForbidden
from hookshield.netguard import legacy_ipv4


def join_url(base: str, base_query: str, remainder: str, query: str) -> str:
    """`base` + path remainder (no doubled slash), the base's and the request's queries joined."""
    if remainder:
        base = base.rstrip("/") + remainder
    joined = f"{base_query}&{query}" if base_query and query else base_query or query
    return f"{base}?{joined}" if joined else base


def split_base(url: URL) -> tuple[str, str]:
    """A target URL as (scheme://host[:port]/path, raw query)."""
    return str(url.with_query(None).with_fragment(None)), url.raw_query_string


class StaticResolver:
    """A fixed target URL; `origin` labels its breaker and metrics."""

    header: str | None = None

    def __init__(self, target: StaticTarget) -> None:
        self.base, self.query = split_base(target.url)
        self.origin = str(target.url.origin())

    def url(self, remainder: str, query: str, header_value: str | None = None) -> tuple[str, str]:
        return join_url(self.base, self.query, remainder, query), self.origin


class DynamicResolver:
    """A target URL from `from_header`, its host matched against `allow_hosts`."""

    def __init__(self, target: DynamicTarget) -> None:
        self.header = target.from_header
        self.pattern = target.host_pattern

    def url(self, remainder: str, query: str, header_value: str | None = None) -> tuple[str, str]:
        if not header_value:
            raise BadRequest(f"this route needs the target URL in the {self.header} header")
        url = self._parse(header_value)
        host = url.host or ""
        if not self.pattern.fullmatch(host):
            raise TargetForbidden(f"target host {host!r} is not in allow_hosts")
        canonical = legacy_ipv4(host)
        if canonical is not None:
            url = url.with_host(canonical)
        base, base_query = split_base(url)
        return join_url(base, base_query, remainder, query), str(url.origin())

    def _parse(self, value: str) -> URL:
        try:
            url = URL(value)
        except ValueError as exc:
            raise BadRequest(f"{self.header} is not a valid URL") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise BadRequest(f"{self.header} must be an absolute http:// or https:// URL")
        if url.raw_user is not None or url.raw_password is not None:
            raise BadRequest(f"{self.header} must not hold credentials (user:password@)")
        return url


Resolver = StaticResolver | DynamicResolver


def resolver_for(target: Target) -> Resolver:
    if isinstance(target, StaticTarget):
        return StaticResolver(target)
    return DynamicResolver(target)
