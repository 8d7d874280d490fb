"""The `/status` document (SPEC §6): per route and target, over the recent window.

A target's `health` sums it up for people: `failing` when its circuit is open or fewer
than 80 % of recent calls succeeded, `degraded` when half-open or under 95 %, else
`healthy` (`idle` with no recent calls and a closed circuit).
"""

from __future__ import annotations

from typing import Any

from hookshield.breaker import CircuitState
from hookshield.runtime import RoutePlan, State
from hookshield.stats import Summary
from hookshield.targets import StaticResolver

HEALTHY_RATE, FAILING_RATE = 0.95, 0.80


def health(circuit: CircuitState, summary: Summary) -> str:
    rate = summary.success_rate
    if circuit is CircuitState.OPEN or (rate is not None and rate < FAILING_RATE):
        return "failing"
    if circuit is CircuitState.HALF_OPEN or (rate is not None and rate < HEALTHY_RATE):
        return "degraded"
    return "idle" if summary.requests == 0 else "healthy"


def _circuits(plan: RoutePlan) -> dict[str, CircuitState]:
    """The worst breaker state per target label (a dynamic label may cover several origins)."""
    worst: dict[str, CircuitState] = {}
    if isinstance(plan.resolver, StaticResolver):
        worst[plan.target_label(plan.resolver.origin)] = CircuitState.CLOSED
    for origin, breaker in plan.breakers.items():
        label = plan.target_label(origin)
        worst[label] = max(worst.get(label, CircuitState.CLOSED), breaker.state)
    return worst


def _target(state: State, route: str, label: str, circuit: CircuitState) -> dict[str, Any]:
    summary = state.stats.summary(route, label)
    return {
        "target": label, "circuit": circuit.name.lower(), "health": health(circuit, summary),
        "requests": summary.requests, "success_rate": summary.success_rate,
        "timeout_rate": summary.timeout_rate, "p50_ms": summary.p50_ms,
        "p95_ms": summary.p95_ms, "p99_ms": summary.p99_ms,
    }  # fmt: skip


def document(state: State, sizes: dict[str, tuple[int, int]] | None) -> dict[str, Any]:
    """The status of every route; `sizes` from the queue store, None when it did not answer."""
    runtime = state.runtime
    if runtime is None:
        return {"config_generation": 0, "routes": []}
    routes = []
    for plan in runtime.plans:
        name = plan.config.name
        circuits = _circuits(plan)
        for label in state.stats.targets(name):
            circuits.setdefault(label, CircuitState.CLOSED)
        depth, dead = sizes.get(name, (0, 0)) if sizes is not None else (None, None)
        routes.append({
            "name": name, "mode": plan.config.mode, "timeout_ms": plan.config.timeout_ms,
            "queue_depth": depth, "dlq_size": dead,
            "targets": [_target(state, name, label, c) for label, c in sorted(circuits.items())],
        })  # fmt: skip
    return {
        "config_generation": runtime.generation,
        "window_s": state.stats.window_s,
        "routes": routes,
    }
