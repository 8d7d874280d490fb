"""`Guarded` stores and the SQLite store's failure paths, against real stores: every call
answers in time, and fails only as `StoreUnavailable`."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import pytest
import redis

from hookshield.config.models import QueueConfig
from hookshield.queue import Guarded, StoreTimeout, StoreUnavailable, open_store
from hookshield.queue.base import Delivery
from hookshield.queue.guard import enqueue_within
from hookshield.queue.redis import RedisStore
from hookshield.queue.sqlite import SqliteStore
from tests.conftest import wait_for
from tests.redis_servers import RedisServer

DEADLINE_S = 0.3
SLACK_S = 0.7  # a loaded 2-core machine: the deadline plus this is still far below any hang


def delivery(route: str = "events") -> Delivery:
    return Delivery(
        id=uuid.uuid4().hex, route=route, url="http://t.example/h", origin="http://t.example",
        method="POST", headers=(("X-A", "1"),), body=b"{}", request_id=uuid.uuid4().hex,
        created_at=time.time(),
    )  # fmt: skip


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


@pytest.fixture
async def paused(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """A RedisStore that has talked to its Redis, which is then SIGSTOPped."""
    store = RedisStore(redis_server.url)
    await store.ping()
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    yield store
    os.kill(redis_server.process.pid, signal.SIGCONT)
    await store.close()


async def elapsed(call: Awaitable[object]) -> tuple[BaseException, float]:
    """The exception the awaitable `call` raised, and how long it took."""
    started = time.monotonic()
    try:
        await call
    except BaseException as exc:
        return exc, time.monotonic() - started
    raise AssertionError("the call answered")


async def test_open_store_answers_a_guarded_store(tmp_path: Path) -> None:
    """open_store wraps both stores in Guarded."""
    sqlite = open_store(QueueConfig(None, tmp_path / "q.db", 4))
    redis_store = open_store(QueueConfig("redis://127.0.0.1:9/0", tmp_path / "q.db", 4))
    assert isinstance(sqlite, Guarded)
    assert isinstance(sqlite.store, SqliteStore)
    assert isinstance(redis_store, Guarded)
    assert isinstance(redis_store.store, RedisStore)
    await sqlite.close()
    await redis_store.close()


async def test_every_call_to_a_paused_redis_times_out(paused: RedisStore) -> None:
    """A SIGSTOPped Redis: each call raises StoreTimeout after the deadline, not a socket's."""
    store = Guarded(paused, DEADLINE_S)
    calls = {
        "enqueue": store.enqueue(delivery(), None, time.time()),
        "lease": store.lease(time.time(), 10, 30),
        "ping": store.ping(),
        "sizes": store.sizes(),
        "dead_letters": store.dead_letters(None, 10),
    }
    for name, call in calls.items():
        exc, took = await elapsed(call)
        assert isinstance(exc, StoreTimeout), (name, exc)
        assert f"did not answer {name} within 0.3 s" in str(exc)
        assert DEADLINE_S * 0.9 <= took < DEADLINE_S + SLACK_S


async def test_enqueue_within_bounds_an_unguarded_store(paused: RedisStore) -> None:
    """enqueue_within gives even a bare store the caller's deadline."""
    exc, took = await elapsed(enqueue_within(paused, delivery(), None, time.time(), 0.2))
    assert isinstance(exc, StoreTimeout)
    assert took < 0.2 + SLACK_S


async def test_a_cancellation_from_outside_stays_a_cancellation(paused: RedisStore) -> None:
    """Cancelling a caller waiting on a hung store raises CancelledError, not StoreUnavailable."""
    task = asyncio.ensure_future(Guarded(paused, 30).lease(time.time(), 10, 30))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_error_of_any_type_becomes_store_unavailable(redis_server: RedisServer) -> None:
    """A Redis holding a value the store cannot read: StoreUnavailable naming the call."""
    redis.Redis(port=redis_server.port).hset("{hookshield}:depth", "events", "not-a-number")
    store = Guarded(RedisStore(redis_server.url))
    with pytest.raises(StoreUnavailable, match="sizes failed: ValueError"):
        await store.sizes()
    await store.close()


async def test_no_time_left_stores_nothing(tmp_path: Path) -> None:
    """An enqueue with no time left fails at once and sends nothing to the store."""
    store = Guarded(SqliteStore(tmp_path / "q.db"))
    with pytest.raises(StoreTimeout):
        await store.enqueue(delivery(), None, time.time(), timeout_s=0.0)
    assert await store.sizes() == {}
    await store.close()


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection in a write transaction: the store's next commit waits for it."""
    other = sqlite3.connect(path, isolation_level=None, timeout=5)
    other.execute("BEGIN IMMEDIATE")
    return other


async def test_a_write_given_up_before_its_commit_is_left_out(tmp_path: Path) -> None:
    """A write whose caller gave up (its deadline) before its commit began is not applied;
    the writes around it are answered."""
    path = tmp_path / "q.db"
    store = SqliteStore(path)
    await store.ping()
    other = hold_write_lock(path)
    first, second = delivery(), delivery()
    late = asyncio.ensure_future(store.enqueue(second, None, time.time()))
    await asyncio.sleep(0)  # `late` joins the pending writes...
    await wait_for(lambda: not store._pending)  # ...which its commit takes, then waits
    exc, took = await elapsed(Guarded(store, DEADLINE_S).enqueue(first, None, time.time()))
    assert isinstance(exc, StoreTimeout)
    assert took < DEADLINE_S + SLACK_S
    other.execute("COMMIT")
    assert await asyncio.wait_for(late, 5) == (second.id, False)
    leased = await store.lease(time.time(), 10, 30)
    assert [d.id for d in leased] == [second.id]
    await store.close()


async def test_a_lease_and_an_enqueue_beside_an_unloadable_row_are_answered(
    tmp_path: Path,
) -> None:
    """One commit holding a lease that meets a bad row and an enqueue: both answered."""
    path = tmp_path / "q.db"
    store = SqliteStore(path)
    queued, fresh = delivery(), delivery()
    await store.enqueue(queued, None, time.time() - 1)
    other = hold_write_lock(path)
    other.execute(
        "INSERT INTO deliveries (id, route, meta, body, due_at) VALUES ('bad', 'events', '{', x'00', 0)"
    )
    waiting = asyncio.ensure_future(store.ping())  # this commit waits for the lock...
    await asyncio.sleep(0)
    await wait_for(lambda: not store._pending)
    lease = asyncio.ensure_future(store.lease(time.time(), 10, 30))  # ...these two share the next
    enqueue = asyncio.ensure_future(store.enqueue(fresh, None, time.time() + 60))
    await wait_for(lambda: len(store._pending) == 2)
    other.execute("COMMIT")
    await asyncio.wait_for(waiting, 5)
    assert [d.id for d in await asyncio.wait_for(lease, 5)] == [queued.id]
    assert await asyncio.wait_for(enqueue, 5) == (fresh.id, False)
    [dead] = await store.dead_letters("events", 10)
    assert (dead.id, dead.reason) == ("bad", "corrupt")
    await store.close()


async def test_an_unopenable_file_fails_each_batch_then_opens_once_fixed(tmp_path: Path) -> None:
    """A parent that is a file: every write of a batch fails at once; fixed, the same store works."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    store = Guarded(SqliteStore(blocker / "q.db"))
    calls = [store.enqueue(delivery(), None, time.time()), store.lease(time.time(), 1, 30)]
    results = await asyncio.gather(*calls, store.ping(), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert "the queue store cannot open its file" in str(results[0])
    blocker.unlink()
    await store.ping()
    assert (await store.enqueue(delivery(), None, time.time()))[1] is False
    await store.close()


async def test_a_closed_sqlite_store_fails_calls_instead_of_hanging(tmp_path: Path) -> None:
    """After close, writes and reads raise StoreUnavailable at once."""
    store = SqliteStore(tmp_path / "q.db")
    await store.ping()
    await store.close()
    for call in (store.enqueue(delivery(), None, time.time()), store.sizes()):
        exc, took = await elapsed(call)
        assert isinstance(exc, StoreUnavailable)
        assert took < SLACK_S


async def test_renew_is_guarded_too(tmp_path: Path) -> None:
    """Guarded.renew delegates to the store's renew within the deadline."""
    store = Guarded(SqliteStore(tmp_path / "q.db"))
    await store.enqueue(delivery(), None, time.time())
    [leased] = await store.lease(time.time(), 1, 30)
    assert await store.renew(leased, 30) is True
    await store.close()
