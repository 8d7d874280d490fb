"""The admin plane on its own listener (SPEC §6): probes, metrics, status, dead letters,
breaker reset, reload.

`/admin/*` needs `Authorization: Bearer <token>` when `admin.token_env` names a set
variable (401 otherwise, constant-time compare); `/healthz` and `/readyz` stay open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from hookshield.metrics import CONTENT_TYPE
from hookshield.queue.base import Delivery, DeliveryStore, StoreUnavailable
from hookshield.runtime import STATE, State
from hookshield.status import document

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
READY_PING_TIMEOUT_S = 1.0
STATUS_PAGE = (resources.files("hookshield") / "status_page.html").read_bytes()


def _problem(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"success": False, "error": message, "code": code}, status=status)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def _sizes(state: State) -> dict[str, tuple[int, int]] | None:
    """Queue depth and DLQ size per route (also pushed into the gauges); None if the store is down."""
    if state.store is None:
        return None
    try:
        async with asyncio.timeout(READY_PING_TIMEOUT_S):
            sizes = await state.store.sizes()
    except Exception:  # unavailable, too slow, or failing otherwise: no sizes, never a 500
        return None
    state.metrics.sizes(sizes, [route.name for route in state.config.routes])
    return sizes


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _sizes(state)
    return web.Response(body=state.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(document(state, await _sizes(state)))


async def status_page(request: web.Request) -> web.Response:
    return web.Response(body=STATUS_PAGE, content_type="text/html", charset="utf-8")


async def readyz(request: web.Request) -> web.Response:
    """Readiness: a config is in force and the queue store answers (SQLite: commits a write);
    else 503 with the reason in `error`."""
    state = request.app[STATE]
    if state.runtime is None or state.store is None:
        return web.json_response({"status": "starting"}, status=503)
    try:
        async with asyncio.timeout(READY_PING_TIMEOUT_S):
            await state.store.ping()
    except TimeoutError:
        error = f"the queue store did not answer within {READY_PING_TIMEOUT_S:g} s"
    except Exception as exc:  # StoreUnavailable from a guarded store; anything, from another
        error = str(exc) or repr(exc)
    else:
        return web.json_response({"status": "ready", "config_generation": state.runtime.generation})
    return web.json_response({"status": "queue_unavailable", "error": error}, status=503)


def _summary(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id, "route": delivery.route, "target": delivery.url,
        "attempts": delivery.attempts, "last_status": delivery.last_status,
        "last_error": delivery.last_error, "reason": delivery.reason,
        "failed_at": delivery.failed_at, "request_id": delivery.request_id,
    }  # fmt: skip


def _with_request(delivery: Delivery) -> dict[str, Any]:
    request: dict[str, Any] = {
        "method": delivery.method,
        "url": delivery.url,
        "headers": [list(pair) for pair in delivery.headers],
        "body_base64": base64.b64encode(delivery.body).decode(),
    }
    with contextlib.suppress(UnicodeDecodeError):
        request["body"] = delivery.body.decode("utf-8")
    return {**_summary(delivery), "created_at": delivery.created_at, "request": request}


def _store(request: web.Request) -> DeliveryStore:
    store = request.app[STATE].store
    if store is None:
        raise StoreUnavailable("the queue store is not open")
    return store


async def dlq_list(request: web.Request) -> web.Response:
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        return _problem(400, "BAD_REQUEST", "limit must be a whole number")
    items = await _store(request).dead_letters(request.query.get("route") or None, limit)
    return web.json_response({"items": [_summary(d) for d in items]})


async def dlq_show(request: web.Request) -> web.Response:
    delivery = await _store(request).dead_letter(request.match_info["id"])
    if delivery is None:
        return _problem(404, "NOT_FOUND", "no such dead-lettered delivery")
    return web.json_response(_with_request(delivery))


async def dlq_replay(request: web.Request) -> web.Response:
    if not await _store(request).replay(request.match_info["id"], time.time()):
        return _problem(404, "NOT_FOUND", "no such dead-lettered delivery")
    request.app[STATE].wake_deliverer()
    return web.json_response({"success": True, "replayed": 1})


async def dlq_replay_route(request: web.Request) -> web.Response:
    route = request.query.get("route")
    if not route:
        return _problem(400, "BAD_REQUEST", "bulk replay needs ?route=")
    count = await _store(request).replay_route(route, time.time())
    request.app[STATE].wake_deliverer()
    return web.json_response({"success": True, "replayed": count})


async def dlq_delete(request: web.Request) -> web.Response:
    if not await _store(request).delete(request.match_info["id"]):
        return _problem(404, "NOT_FOUND", "no such dead-lettered delivery")
    return web.json_response({"success": True, "deleted": 1})


async def breaker_reset(request: web.Request) -> web.Response:
    runtime = request.app[STATE].runtime
    plan = runtime.plan(request.match_info["route"]) if runtime else None
    if plan is None:
        return _problem(404, "NO_ROUTE", "no such route")
    for _, breaker in plan.breakers.items():
        breaker.reset()
    return web.json_response({"success": True, "reset": len(plan.breakers.items())})


async def reload(request: web.Request) -> web.Response:
    reloader = request.app[STATE].reloader
    if reloader is None:
        return _problem(503, "STARTING", "hookshield is starting")
    result = await reloader.reload("admin")
    if not result.ok:
        body = {"success": False, "code": "INVALID_CONFIG", "config_generation": result.generation,
                "errors": list(result.problems)}  # fmt: skip
        return web.json_response(body, status=422)
    return web.json_response({"success": True, "config_generation": result.generation})


def _token_guard(token_env: str | None) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/admin/"):
            token = os.environ.get(token_env or "", "") if token_env else ""
            given = request.headers.get("Authorization", "")
            if token and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _problem(
                    401, "UNAUTHORIZED", "this endpoint needs Authorization: Bearer <token>"
                )
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            return _problem(503, "QUEUE_UNAVAILABLE", str(exc))

    return guard


def build_admin_app(state: State) -> web.Application:
    app = web.Application(middlewares=[_token_guard(state.config.admin.token_env)])
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_get("/", status_page)
    app.router.add_get("/admin/dlq", dlq_list)
    app.router.add_post("/admin/dlq/replay", dlq_replay_route)
    app.router.add_get("/admin/dlq/{id}", dlq_show)
    app.router.add_post("/admin/dlq/{id}/replay", dlq_replay)
    app.router.add_delete("/admin/dlq/{id}", dlq_delete)
    app.router.add_post("/admin/breakers/{route}/reset", breaker_reset)
    app.router.add_post("/admin/reload", reload)
    return app
