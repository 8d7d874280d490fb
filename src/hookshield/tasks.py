"""Background work, started one way: named, kept, and never dying silently.

`spawn(name, coro)` is the only place hookshield creates an asyncio task (a lint rule bans
`asyncio.create_task` and `ensure_future` elsewhere). It keeps a strong reference until
the task ends (the event loop keeps only a weak one), names it, and logs any exception
the task ends with as `task_failed` with the task's name.

The rule for a crash: a one-shot task (a connection's answers, one delivery, a reload) is
logged and done; its owner has already answered or will retry. A long-lived loop (the
delivery loop, health checks, the config watcher, metrics folding) is started with
`service`, which logs the crash and starts the loop again after `RESTART_S`, so a
background service is never silently gone. Cancellation is a stop, never a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hookshield import logs

T = TypeVar("T")
RESTART_S = 1.0  # a crashed service starts again after this pause
_RUNNING: set[asyncio.Task[Any]] = set()


def spawn(name: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run `coro` as a task named `name`, kept until it ends; its crash is logged."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _RUNNING.add(task)
    task.add_done_callback(_finished)
    return task


def service(
    name: str, run: Callable[[], Coroutine[Any, Any, None]], restart_s: float = RESTART_S
) -> asyncio.Task[None]:
    """Run the loop `run()` as a task; if it crashes, log it and start it again."""
    return spawn(name, _restarting(name, run, restart_s))


async def _restarting(
    name: str, run: Callable[[], Coroutine[Any, Any, None]], restart_s: float
) -> None:
    while True:
        try:
            await run()
            return
        except Exception as exc:  # a crash: logged, and the service goes on after a pause
            _log(name, exc, restart_in_s=restart_s)
        await asyncio.sleep(restart_s)


def _finished(task: asyncio.Task[Any]) -> None:
    _RUNNING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        _log(task.get_name(), task.exception())


def _log(name: str, exc: BaseException | None, **fields: object) -> None:
    logs.event("task_failed", logging.ERROR, task=name, error=repr(exc), **fields)


def running() -> list[str]:
    """The names of the tasks running now (for tests and diagnostics)."""
    return sorted(task.get_name() for task in _RUNNING)
