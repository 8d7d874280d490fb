"""Group commit: the writes of concurrent requests go to the store together.

A write joins the pending batch and waits for its own answer. When no batch is in flight,
the pending one is sent on the next turn of the event loop; while one is in flight, new
writes gather and go as soon as it returns. So at low load a batch is one write and costs
one round trip, and at high load hundreds of writes share one round trip. Each caller is
answered only after the store answered the whole batch: a `202` still follows its own
acknowledged write.

One batch is in flight at a time, so a write may wait behind a batch the store is slow to
answer. With `timeout_s`, a write's wait counts from when it joined, not from when its
batch left: `deadline` is the loop time by which the batch being sent must be answered
(its oldest write's join time + `timeout_s`), and a write that has already waited
`timeout_s` behind a stalled batch fails at once, unsent (`StoreUnavailable`). A caller
therefore waits for the store at most `timeout_s` once, never one timeout per batch ahead
of it. (`clock` measures that wait; the Redis store's leaves out the time writes are held
on purpose while Sentinel fails the master over.) A write whose caller gave up (was
cancelled) before its batch left is not sent, and `given_up` tells the store which writes
of the batch being sent no caller waits for any more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from hookshield import tasks
from hookshield.queue.base import StoreUnavailable

Write = tuple[str, list[str], list[Any]]  # script name, keys, args
Send = Callable[[list[Write]], Awaitable[list[Any]]]  # one reply (or exception) per write
MAX_BATCH = 512
_Entry = tuple[Write, "asyncio.Future[Any]", float]  # the write, its answer, when it joined


class Batcher:
    def __init__(
        self,
        send: Send,
        max_batch: int = MAX_BATCH,
        timeout_s: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._send = send
        self._max = max_batch
        self._timeout_s = timeout_s
        self._clock = clock
        self._pending: list[_Entry] = []
        self._sending: list[_Entry] = []
        self._flusher: asyncio.Task[None] | None = None
        self.deadline = float("inf")  # while a batch is sent: when its oldest caller stops waiting

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def given_up(self, index: int) -> bool:
        """Whether no caller waits any more for write `index` of the batch being sent."""
        return self._sending[index][1].done()

    async def call(self, write: Write) -> Any:
        """`write`'s reply, once the batch holding it was answered (its error, if it failed)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((write, answer, self._now()))
        if self._flusher is None:
            self._flusher = tasks.spawn("queue-group-commit", self._flush())
        return await answer

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                batch = self._sendable(batch)
                if batch:
                    if self._timeout_s is not None:  # the oldest joined first
                        waited = self._now() - batch[0][2]
                        self.deadline = asyncio.get_running_loop().time() + self._timeout_s - waited
                    self._sending = batch
                    await self._answer(batch)
        finally:
            self._flusher = None
            self._sending = []
            self.deadline = float("inf")

    def _sendable(self, batch: list[_Entry]) -> list[_Entry]:
        """`batch` without the writes whose callers gave up, and without those that have
        waited `timeout_s` already (failed here, never sent)."""
        if self._timeout_s is not None:
            expired_at = self._now() - self._timeout_s
            for _, answer, joined in batch:
                if joined > expired_at:
                    break
                if not answer.done():
                    answer.set_exception(
                        StoreUnavailable(
                            f"the queue store did not answer within {self._timeout_s:g} s"
                            " (this write waited behind a batch it had not answered; not sent)"
                        )
                    )
        return [entry for entry in batch if not entry[1].done()]

    async def _answer(self, batch: list[_Entry]) -> None:
        try:
            replies = await self._send([write for write, _, _ in batch])
        except Exception as exc:
            replies = [exc] * len(batch)
        for (_, answer, _), reply in zip(batch, replies, strict=True):
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
