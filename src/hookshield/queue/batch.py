"""Group commit: the writes of concurrent requests go to the store together.

A write joins the pending batch and waits for its own answer. When no batch is in flight,
the pending one is sent on the next turn of the event loop; while one is in flight, new
writes gather and go as soon as it returns. So at low load a batch is one write and costs
one round trip, and at high load hundreds of writes share one round trip. Each caller is
answered only after the store answered the whole batch: a `202` still follows its own
acknowledged write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

Write = tuple[str, list[str], list[Any]]  # script name, keys, args
Send = Callable[[list[Write]], Awaitable[list[Any]]]  # one reply (or exception) per write
MAX_BATCH = 512


class Batcher:
    def __init__(self, send: Send, max_batch: int = MAX_BATCH) -> None:
        self._send = send
        self._max = max_batch
        self._pending: list[tuple[Write, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, write: Write) -> Any:
        """`write`'s reply, once the batch holding it was answered (its error, if it failed)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((write, answer))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await answer

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                await self._answer(batch)
        finally:
            self._flusher = None

    async def _answer(self, batch: list[tuple[Write, asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._send([write for write, _ in batch])
        except Exception as exc:
            replies = [exc] * len(batch)
        for (_, answer), reply in zip(batch, replies, strict=True):
            if answer.done():  # its caller was cancelled; the write happened all the same
                continue
            if isinstance(reply, BaseException):
                answer.set_exception(reply)
            else:
                answer.set_result(reply)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait for the batch in flight (and those pending) to be answered."""
        if self._flusher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._flusher), timeout_s)
