"""The lifecycle: build both planes, bind both listeners, run until a signal, drain, stop.

Everything long-lived (target connections, the queue store, the runtime with its health
checks, the delivery workers, the config watcher) is started and stopped in one place:
the admin app's `cleanup_ctx` (`_lifecycle`). The data plane's listener (`httpserver`)
is bound after it has started and drained before it stops.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from hookshield import logs
from hookshield.admin import build_admin_app
from hookshield.config.models import Address, Config
from hookshield.delivery import Deliverer
from hookshield.errors import BadRequest
from hookshield.httpserver import Listener
from hookshield.message import Answer
from hookshield.proxy import handle
from hookshield.queue import open_store
from hookshield.reload import Reloader
from hookshield.runtime import STATE, State
from hookshield.supervisor import signal_supervisor

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


@dataclass(frozen=True)
class Role:
    """Which worker this process is (`supervisor`): worker 0 of 1 unless `--workers` > 1."""

    index: int = 0
    count: int = 1

    @property
    def primary(self) -> bool:
        """Worker 0 serves the admin plane and runs the delivery loop."""
        return self.index == 0


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Start everything long-lived in order, and stop it in reverse."""
    state = app[STATE]
    state.store = open_store(state.config.queue)
    runtime = state.install(state.config)
    logs.event("config_loaded", generation=runtime.generation, routes=len(state.config.routes))
    queue = state.config.queue
    deliverer = Deliverer(state.store, state, queue.workers, queue.lease_s)
    if app[ROLE].primary:
        deliverer.start()
        state.deliverer, state.wake_deliverer = deliverer, deliverer.wake
    state.reloader = Reloader(state, _reload_others if app[ROLE].count > 1 else None)
    watcher = asyncio.create_task(state.reloader.watch())
    folder = asyncio.create_task(state.metrics.fold_every())
    yield
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await deliverer.stop(app[GRACE])
    folder.cancel()  # after the deliveries: their last counts are folded too
    await asyncio.gather(folder, return_exceptions=True)
    if state.runtime is not None:
        await state.runtime.stop()
    state.runtime = None
    await state.store.close()
    await state.upstream.close()


def _reload_others() -> None:
    """Ask the supervisor to reload the other workers (see `supervisor`)."""
    signal_supervisor(signal.SIGUSR1)


GRACE = web.AppKey("hookshield.grace_s", float)
ROLE = web.AppKey("hookshield.role", Role)


def _bad_request(message: str) -> Answer:
    return BadRequest(message).to_answer("-")


def build_apps(
    config: Config, grace_s: float = 30.0, role: Role = Role()
) -> tuple[Listener, web.Application]:
    """The data plane's listener and the admin plane's app, sharing one `State`; the admin
    app owns the lifecycle, so it starts first and stops last."""
    state = State(config)
    data = Listener(partial(handle, state), lambda: state.config.max_body_bytes, _bad_request)
    state.data_calls = lambda: data.calls
    admin = build_admin_app(state)
    admin[GRACE] = grace_s
    admin[ROLE] = role
    admin.cleanup_ctx.append(_lifecycle)
    return data, admin


async def _bind(runner: web.AppRunner, address: Address, plane: str) -> web.TCPSite:
    site = web.TCPSite(runner, address.host, address.port)
    try:
        await site.start()
    except OSError as exc:
        raise BindError(_bind_error(address, plane, exc)) from exc
    return site


async def _listen(data: Listener, address: Address, reuse_port: bool) -> None:
    try:
        await data.start(address.host, address.port, reuse_port)
    except OSError as exc:
        raise BindError(_bind_error(address, "data plane", exc)) from exc


def _bind_error(address: Address, plane: str, exc: OSError) -> str:
    return f"cannot listen on {address.host}:{address.port} ({plane}): {exc.strerror}"


class BindError(Exception):
    pass


async def serve(config: Config, grace_s: float = 30.0, role: Role = Role()) -> int:
    """Serve until SIGTERM or SIGINT, then drain in-flight calls for up to `grace_s`.

    Every worker runs the lifecycle; only worker 0 binds the admin plane."""
    data, admin = build_apps(config, grace_s, role)
    runner = web.AppRunner(admin, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await _listen(data, config.listen, reuse_port=role.count > 1)
        if role.primary:
            await _bind(runner, config.admin, "admin plane")
    except BindError as exc:
        logs.event("startup_failed", logging.ERROR, error=str(exc))
        await data.stop(0)
        await runner.cleanup()
        return EXIT_USAGE
    _settle_heap()
    admin_at = _where(config.admin) if role.primary else None
    logs.event("started", listen=_where(config.listen), admin=admin_at, worker=role.index)
    await _wait_for_signal(admin[STATE])
    logs.event("stopping", grace_s=grace_s)
    await data.stop(grace_s)
    logs.requests.flush()
    await runner.cleanup()
    logs.event("stopped")
    return EXIT_OK


def _settle_heap() -> None:
    """Move what startup built (modules, config, runtime) out of the garbage collector's
    way, and collect the young generation less often: the data plane allocates many
    short-lived objects and few cycles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


GC_THRESHOLD = 20_000  # allocations between young-generation collections (Python's default: 700)


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
