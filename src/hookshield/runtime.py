"""A `Runtime`: everything the hot path needs, built once from a `Config`.

Each route becomes a `RoutePlan` with its target resolver, header policy, signer and
client session ready. A reload builds a whole new `Runtime` and swaps the one reference
held by `State`; a request keeps the runtime it started with.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from hookshield.config.models import Config, DynamicTarget, RouteConfig
from hookshield.headers import HeaderPolicy
from hookshield.routing import Router
from hookshield.signing import Signer, build_signer
from hookshield.targets import Resolver, resolver_for
from hookshield.upstream import Upstream


@dataclass(frozen=True, slots=True)
class RoutePlan:
    config: RouteConfig
    resolver: Resolver
    headers: HeaderPolicy
    signer: Signer | None
    session: aiohttp.ClientSession
    timeout_s: float

    @property
    def path_prefix(self) -> str:
        return self.config.path_prefix

    @property
    def methods(self) -> frozenset[str] | None:
        return self.config.methods


def build_plan(route: RouteConfig, upstream: Upstream) -> RoutePlan:
    target = route.target
    session = (
        upstream.guarded(target.allow_networks)
        if isinstance(target, DynamicTarget)
        else upstream.shared()
    )
    return RoutePlan(
        config=route,
        resolver=resolver_for(target),
        headers=HeaderPolicy(route.headers),
        signer=build_signer(route.signing) if route.signing else None,
        session=session,
        timeout_s=route.timeout_ms / 1000.0,
    )


@dataclass(frozen=True, slots=True)
class Runtime:
    generation: int
    config: Config
    router: Router[RoutePlan]


def build_runtime(config: Config, upstream: Upstream, generation: int) -> Runtime:
    plans = [build_plan(route, upstream) for route in config.routes]
    return Runtime(generation=generation, config=config, router=Router(plans))


class State:
    """The process-wide holder: the current runtime and the shared client sessions."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.upstream = Upstream()
        self.runtime: Runtime | None = None

    def install(self, config: Config) -> Runtime:
        generation = self.runtime.generation + 1 if self.runtime else 1
        self.runtime = build_runtime(config, self.upstream, generation)
        self.config = config
        return self.runtime


STATE = web.AppKey("hookshield.state", State)
