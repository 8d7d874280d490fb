"""The admin plane on its own listener (SPEC §6): probes now, more endpoints later."""

from __future__ import annotations

from aiohttp import web

from hookshield.runtime import STATE, State


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: a config is loaded and in force."""
    runtime = request.app[STATE].runtime
    if runtime is None:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ready", "config_generation": runtime.generation})


def build_admin_app(state: State) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
