"""The lifecycle's one owner: `App` starts every long-lived part in order and stops them in
reverse.

The parts, in start order: target connections (`Upstream`, made with the `State`), the
queue store, the runtime (with its health checks), metrics folding, the delivery loop
(worker 0), the config watcher, the admin plane's listener (worker 0) and the data plane's
listener. Each part's stop goes on one `AsyncExitStack` as soon as the part is up, so a
start that fails half-way (an address in use, say) closes exactly what was opened, in
reverse, and `stop` closes everything the same way: the data plane drains first, target
connections close last. A worker that serves no admin plane runs the same owner with
that part left out; background loops are started by `tasks.service`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from hookshield import logs
from hookshield.admin import build_admin_app
from hookshield.config.models import Address, Config
from hookshield.delivery import Deliverer
from hookshield.httpserver import Listener
from hookshield.proxy import handle
from hookshield.queue import open_store
from hookshield.reload import Reloader
from hookshield.runtime import State
from hookshield.supervisor import signal_supervisor
from hookshield.tasks import service


@dataclass(frozen=True)
class Role:
    """Which worker this process is (`supervisor`): worker 0 of 1 unless `--workers` > 1."""

    index: int = 0
    count: int = 1

    @property
    def primary(self) -> bool:
        """Worker 0 serves the admin plane and runs the delivery loop."""
        return self.index == 0


ALONE = Role()  # the only worker: `run` without `--workers`


class BindError(Exception):
    """A listener could not bind its address (the message says which and why)."""


class App:
    """One process's hookshield: the shared `State`, both planes, and their lifecycle."""

    def __init__(self, config: Config, grace_s: float = 30.0, role: Role = ALONE) -> None:
        self.state = State(config)
        self.grace_s, self.role = grace_s, role
        self.listener = Listener(partial(handle, self.state), lambda: self.state.config.limits)
        self.state.data_calls = lambda: self.listener.calls
        self.admin = build_admin_app(self.state)
        self.data_port = 0  # the data plane's port once bound (the config's, or a free one)
        self._stack = contextlib.AsyncExitStack()

    async def start(self, data: Address | None = None, admin: Address | None = None) -> None:
        """Start every part; listen on `data` (default: the config's) and, on worker 0, serve
        the admin plane on `admin` (default: the config's; the tests serve it themselves).
        A failure closes what was started and is raised (`BindError` for an address)."""
        try:
            self._start_parts()
            if self.role.primary and admin is not None:
                await self._serve_admin(admin)
            await self._listen(data or self.state.config.listen)
        except BaseException:
            await self._stack.aclose()
            raise

    async def stop(self) -> None:
        """Drain the data plane for up to the grace period, then stop the rest in reverse."""
        await self._stack.aclose()

    def _start_parts(self) -> None:
        state, stack = self.state, self._stack
        stack.push_async_callback(state.upstream.close)
        state.store = open_store(state.config.queue)
        stack.push_async_callback(state.store.close)
        runtime = state.install(state.config)
        logs.event("config_loaded", generation=runtime.generation, routes=len(state.config.routes))
        stack.push_async_callback(self._stop_runtime)
        _until_stopped(stack, service("metrics_fold", state.metrics.fold_every))
        if self.role.primary:
            self._start_deliveries()
        others = signal_supervisor_reload if self.role.count > 1 else None
        state.reloader = Reloader(state, others)
        _until_stopped(stack, service("config_watch", state.reloader.watch))

    def _start_deliveries(self) -> None:
        queue = self.state.config.queue
        assert self.state.store is not None
        deliverer = Deliverer(self.state.store, self.state, queue.workers, queue.lease_s)
        deliverer.start()
        self.state.deliverer, self.state.wake_deliverer = deliverer, deliverer.wake
        self._stack.push_async_callback(deliverer.stop, self.grace_s)

    async def _stop_runtime(self) -> None:
        if self.state.runtime is not None:
            await self.state.runtime.stop()
        self.state.runtime = None

    async def _serve_admin(self, address: Address) -> None:
        runner = web.AppRunner(
            self.admin, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, address.host, address.port)
        await _bound(site.start(), address, "admin plane")

    async def _listen(self, address: Address) -> None:
        reuse_port = self.role.count > 1
        started = self.listener.start(address.host, address.port, reuse_port)
        self._stack.push_async_callback(self.listener.stop, self.grace_s)
        self.data_port = await _bound(started, address, "data plane")


def signal_supervisor_reload() -> None:
    """Ask the supervisor to reload the other workers (SIGUSR1, see `supervisor`)."""
    signal_supervisor(signal.SIGUSR1)


def _until_stopped(stack: contextlib.AsyncExitStack, task: asyncio.Task[None]) -> None:
    """Cancel the background `task` when the stack closes, and wait for it to end."""

    async def cancel() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(cancel)


async def _bound(starting: Awaitable[int | None], address: Address, plane: str) -> int:
    try:
        return await starting or address.port
    except OSError as exc:
        message = f"cannot listen on {address.host}:{address.port} ({plane}): {exc.strerror}"
        logs.event("startup_failed", logging.ERROR, error=message)
        raise BindError(message) from exc
