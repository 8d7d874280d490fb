"""Running one hookshield process: start the `App`, run until a signal, drain, stop.

`App` (`app`) owns every long-lived part and their order; this module adds what belongs
to a process: the signals (SIGTERM/SIGINT stop with a drain, a second one exits at once,
SIGHUP reloads), the exit codes, and settling the heap once start-up is done.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal

from hookshield import logs
from hookshield.app import ALONE, App, BindError, Role
from hookshield.config.models import Address, Config
from hookshield.runtime import State
from hookshield.tasks import spawn

__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "Role", "serve"]
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


async def serve(config: Config, grace_s: float = 30.0, role: Role = ALONE) -> int:
    """Serve until SIGTERM or SIGINT, then drain in-flight calls for up to `grace_s`.

    Every worker runs the same `App`; only worker 0 serves the admin plane."""
    app = App(config, grace_s, role)
    try:
        await app.start(config.listen, config.admin)
    except BindError:  # logged; whatever had started is stopped again
        return EXIT_USAGE
    _settle_heap()
    admin_at = _where(config.admin) if role.primary else None
    logs.event("started", listen=_where(config.listen), admin=admin_at, worker=role.index)
    await _wait_for_signal(app.state)
    logs.event("stopping", grace_s=grace_s)
    await app.stop()
    logs.requests.flush()
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
            task: asyncio.Task[object] = spawn("reload", state.reloader.reload("SIGHUP"))
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
