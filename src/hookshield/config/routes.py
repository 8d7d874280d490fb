"""One `routes[i]` entry -> `RouteConfig`: name, match, target, and inherited policies."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from yarl import URL

from hookshield.config.models import (
    DynamicTarget,
    Network,
    RouteConfig,
    Secret,
    StaticTarget,
    Target,
)
from hookshield.config.policies import POLICY_KEYS, Policies, parse_policies
from hookshield.config.reader import Problems, Section

ROUTE_KEYS = ("name", "match", "target", *POLICY_KEYS)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def parse_route(
    path: str, raw: Any, defaults: Policies, secrets: dict[str, Secret], problems: Problems
) -> RouteConfig:
    section = Section(raw, path, problems, ROUTE_KEYS)
    name = section.required_string("name")
    match = section.section("match", ("path_prefix", "methods"))
    prefix = match.required_string("path_prefix")
    if prefix and not prefix.startswith("/"):
        match.fail("path_prefix", "must start with '/'")
    policies = parse_policies(section, defaults, secrets)
    if policies.health_check and isinstance(section.raw.get("target"), dict):
        section.problems.add(section.at("health_check"), "needs a static target (a URL)")
    return RouteConfig(
        name=name,
        path_prefix=prefix.rstrip("/") or "/",
        methods=_methods(match),
        target=_target(section),
        mode=policies.mode,
        timeout_ms=policies.timeout_ms,
        headers=policies.headers,
        signing=policies.signing,
        fallback=policies.fallback,
        rate_limit=policies.rate_limit,
        max_concurrent=policies.max_concurrent,
        breaker=policies.breaker,
        retry=policies.retry,
        pass_errors=policies.pass_errors,
        health_check=policies.health_check,
    )


def _methods(match: Section) -> frozenset[str] | None:
    methods = match.strings("methods")
    for method in methods:
        if not _TOKEN.match(method):
            match.fail("methods", "must be HTTP method names")
            return None
    return frozenset(m.upper() for m in methods) or None


def _target(section: Section) -> Target:
    raw = section.raw.get("target")
    if isinstance(raw, dict):
        return _dynamic(section.section("target", ("from_header", "allow_hosts", "allow_networks")))
    if raw is None:
        section.problems.add(
            section.at("target"), "is required (a URL or {from_header, allow_hosts})"
        )
    elif not isinstance(raw, str) or not is_http_url(raw):
        section.fail("target", "must be an absolute http:// or https:// URL")
    elif URL(raw).raw_user is not None:
        section.fail("target", "must not hold credentials (user:password@); use headers.add")
    return StaticTarget(
        URL(raw) if isinstance(raw, str) and is_http_url(raw) else URL("http://invalid")
    )


def is_http_url(text: str) -> bool:
    try:
        url = URL(text)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def _dynamic(section: Section) -> DynamicTarget:
    header = section.required_string("from_header")
    hosts = tuple(h.lower() for h in section.strings("allow_hosts"))
    if not hosts:
        section.problems.add(
            section.at("allow_hosts"), "is required (host globs like *.apps.example.com)"
        )
    return DynamicTarget(
        from_header=header,
        allow_hosts=hosts,
        host_pattern=compile_host_globs(hosts),
        allow_networks=_networks(section),
    )


def compile_host_globs(globs: Iterable[str]) -> re.Pattern[str]:
    """One anchored regex for all host globs (`*` matches any characters, dots included)."""
    parts = [fnmatch.translate(glob) for glob in globs] or ["(?!)"]
    return re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE)


def _networks(section: Section) -> tuple[Network, ...]:
    networks: list[Network] = []
    for cidr in section.strings("allow_networks"):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            section.problems.add(section.at("allow_networks"), f"not a CIDR network, got {cidr!r}")
    return tuple(networks)


def check_unique(routes: Iterable[RouteConfig], problems: Problems) -> None:
    """Route names are unique; two routes on one prefix must split its methods between them."""
    names: dict[str, int] = {}
    prefixes: dict[str, list[tuple[int, frozenset[str] | None]]] = {}
    for i, route in enumerate(routes):
        if route.name and route.name in names:
            problems.add(
                f"routes[{i}].name",
                f"duplicate route name '{route.name}' (also routes[{names[route.name]}])",
            )
        names.setdefault(route.name, i)
        for j, methods in prefixes.get(route.path_prefix, []):
            if methods is None or route.methods is None or methods & route.methods:
                problems.add(
                    f"routes[{i}].match.path_prefix",
                    f"duplicate path_prefix '{route.path_prefix}' (also routes[{j}])",
                )
        prefixes.setdefault(route.path_prefix, []).append((i, route.methods))
