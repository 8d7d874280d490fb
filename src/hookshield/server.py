"""The lifecycle: build both apps, bind both listeners, run until a signal, drain, stop.

Everything long-lived (client sessions, the queue store, the runtime with its health
checks, the delivery workers, the config watcher) is started and stopped in one place:
the data app's `cleanup_ctx` (`_lifecycle`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from hookshield import logs
from hookshield.admin import build_admin_app
from hookshield.config.models import Address, Config
from hookshield.delivery import Deliverer
from hookshield.proxy import handle
from hookshield.queue import open_store
from hookshield.reload import Reloader
from hookshield.runtime import STATE, State

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Start everything long-lived in order, and stop it in reverse."""
    state = app[STATE]
    state.store = open_store(state.config.queue)
    runtime = state.install(state.config)
    logs.event("config_loaded", generation=runtime.generation, routes=len(state.config.routes))
    queue = state.config.queue
    deliverer = Deliverer(state.store, state, queue.workers, queue.lease_s)
    deliverer.start()
    state.wake_deliverer = deliverer.wake
    state.reloader = Reloader(state)
    watcher = asyncio.create_task(state.reloader.watch())
    yield
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await deliverer.stop(app[GRACE])
    if state.runtime is not None:
        await state.runtime.stop()
    state.runtime = None
    await state.store.close()
    await state.upstream.close()


GRACE = web.AppKey("hookshield.grace_s", float)


def build_apps(config: Config, grace_s: float = 30.0) -> tuple[web.Application, web.Application]:
    """The data plane and admin plane apps, sharing one `State`."""
    state = State(config)
    data = web.Application(client_max_size=config.max_body_bytes + 1)
    data[STATE] = state
    data[GRACE] = grace_s
    data.router.add_route("*", "/{tail:.*}", handle)
    data.cleanup_ctx.append(_lifecycle)
    return data, build_admin_app(state)


async def _bind(runner: web.AppRunner, address: Address, plane: str) -> web.TCPSite:
    site = web.TCPSite(runner, address.host, address.port)
    try:
        await site.start()
    except OSError as exc:
        raise BindError(
            f"cannot listen on {address.host}:{address.port} ({plane}): {exc.strerror}"
        ) from exc
    return site


class BindError(Exception):
    pass


async def serve(config: Config, grace_s: float = 30.0) -> int:
    """Serve until SIGTERM or SIGINT, then drain in-flight calls for up to `grace_s`."""
    data, admin = build_apps(config, grace_s)
    runners = [
        web.AppRunner(data, access_log=None, handle_signals=False, shutdown_timeout=grace_s),
        web.AppRunner(admin, access_log=None, handle_signals=False, shutdown_timeout=1.0),
    ]
    for runner in runners:
        await runner.setup()
    try:
        await _bind(runners[0], config.listen, "data plane")
        await _bind(runners[1], config.admin, "admin plane")
    except BindError as exc:
        logs.event("startup_failed", logging.ERROR, error=str(exc))
        await _cleanup(runners)
        return EXIT_USAGE
    logs.event("started", listen=_where(config.listen), admin=_where(config.admin))
    await _wait_for_signal(data[STATE])
    logs.event("stopping", grace_s=grace_s)
    await _cleanup(runners)
    logs.event("stopped")
    return EXIT_OK


def _where(address: Address) -> str:
    return f"{address.host}:{address.port}"


async def _wait_for_signal(state: State) -> None:
    """Until SIGTERM or SIGINT; SIGHUP reloads the config. After the first stop signal a
    second one ends the process at once, without draining."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[object]] = set()

    def reload() -> None:
        if state.reloader is not None:
            task: asyncio.Task[object] = asyncio.create_task(state.reloader.reload("SIGHUP"))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _exit_now)
    await asyncio.gather(*reloads, return_exceptions=True)


def _exit_now() -> None:
    logs.event("stopped_without_drain", logging.WARNING)
    os._exit(EXIT_INTERRUPTED)


async def _cleanup(runners: list[web.AppRunner]) -> None:
    for runner in reversed(runners):
        await runner.cleanup()
