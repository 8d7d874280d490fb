"""Group commit (`queue.batch`): who shares a round trip, and who gets which answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hookshield.queue.batch import Batcher, Write


class Recorder:
    """A store stand-in that answers each write with its args, or raises when told to."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[Write]] = []
        self.delay_s = delay_s
        self.fail: Exception | None = None

    async def send(self, writes: list[Write]) -> list[Any]:
        self.batches.append(writes)
        await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        return [ValueError(name) if name == "bad" else args for name, _, args in writes]


def write(name: str, n: int) -> Write:
    return (name, ["k"], [n])


async def test_concurrent_writes_share_one_send() -> None:
    """Writes made in the same turn of the loop go in one batch; each gets its own reply."""
    store = Recorder()
    batcher = Batcher(store.send)
    replies = await asyncio.gather(*(batcher.call(write("w", n)) for n in range(100)))
    assert replies == [[n] for n in range(100)]
    assert len(store.batches) == 1


async def test_writes_arriving_during_a_send_go_in_the_next_batch() -> None:
    """While one batch is in flight, later writes gather and go together as soon as it returns."""
    store = Recorder(delay_s=0.05)
    batcher = Batcher(store.send)
    first = asyncio.ensure_future(batcher.call(write("w", 0)))
    await asyncio.sleep(0.01)  # the first batch is in flight
    later = await asyncio.gather(*(batcher.call(write("w", n)) for n in range(1, 11)))
    assert (await first, later) == ([0], [[n] for n in range(1, 11)])
    assert [len(b) for b in store.batches] == [1, 10]


async def test_one_failing_write_fails_only_its_caller() -> None:
    """A write the store refused raises for its caller; the others of the batch succeed."""
    batcher = Batcher(Recorder().send)
    replies: tuple[Any, ...] = await asyncio.gather(
        batcher.call(write("w", 1)), batcher.call(write("bad", 2)), return_exceptions=True
    )
    good, bad = replies
    assert good == [1]
    assert isinstance(bad, ValueError)


async def test_a_failed_send_fails_the_whole_batch_and_the_next_batch_still_goes() -> None:
    """A lost connection fails every write of that batch; a later batch is sent afresh."""
    store = Recorder()
    batcher = Batcher(store.send)
    store.fail = ConnectionError("gone")
    with pytest.raises(ConnectionError):
        await asyncio.gather(batcher.call(write("w", 1)), batcher.call(write("w", 2)))
    store.fail = None
    assert await batcher.call(write("w", 3)) == [3]


async def test_batches_are_capped() -> None:
    """No batch holds more than `max_batch` writes."""
    store = Recorder()
    batcher = Batcher(store.send, max_batch=8)
    await asyncio.gather(*(batcher.call(write("w", n)) for n in range(20)))
    assert [len(b) for b in store.batches] == [8, 8, 4]
