"""One contract for every queue store: SQLite; Redis standalone, 3-node Cluster, and via Sentinel."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from hookshield.queue.base import Delivery, DeliveryStore, StoreUnavailable
from hookshield.queue.redis import RedisStore
from hookshield.queue.sqlite import SqliteStore
from tests.redis_servers import RedisCluster, RedisSentinel, RedisServer


@pytest.fixture(scope="session")
def redis_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    sentinel = RedisSentinel(tmp_path_factory.mktemp("sentinel")).start()
    yield sentinel
    sentinel.stop()


@pytest.fixture(params=["sqlite", "redis", "cluster", "sentinel"])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[DeliveryStore]:
    opened: DeliveryStore
    if request.param == "sqlite":
        opened = SqliteStore(tmp_path / "queue.db")
    elif request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_standalone")
        redis.Redis(port=server.port).flushall()
        opened = RedisStore(server.url)
    elif request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        opened = RedisStore(cluster.url)
    else:
        sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel")
        sentinel.flush()
        opened = RedisStore(sentinel.url)
    yield opened
    await opened.close()


def delivery(route: str = "analytics", body: bytes = b'{"n":1}\x00\xff', **extra: Any) -> Delivery:
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex, "route": route, "url": "http://t.example/hook?a=1",
        "origin": "http://t.example", "method": "POST",
        "headers": (("Content-Type", "application/json"), ("X-A", "1"), ("X-A", "2")),
        "body": body, "request_id": "req-" + uuid.uuid4().hex[:8], "created_at": time.time(),
    }  # fmt: skip
    fields.update(extra)
    return Delivery(**fields)


async def test_enqueue_then_lease_returns_the_exact_delivery(store: DeliveryStore) -> None:
    """What is leased is what was stored: body bytes, repeated headers, ids, url."""
    original = delivery()
    assert await store.enqueue(original, None, time.time()) == (original.id, False)
    [leased] = await store.lease(time.time(), 10, 30)
    assert leased == original
    assert leased.lease


async def test_not_due_is_not_leased(store: DeliveryStore) -> None:
    """A delivery due later is not handed out before its time."""
    now = time.time()
    await store.enqueue(delivery(), None, now + 60)
    assert await store.lease(now, 10, 30) == []
    assert len(await store.lease(now + 61, 10, 30)) == 1


async def test_lease_is_exclusive_until_it_expires(store: DeliveryStore) -> None:
    """Leased deliveries are not handed out again until the lease deadline passes."""
    now = time.time()
    await store.enqueue(delivery(), None, now)
    [first] = await store.lease(now, 10, 30)
    assert await store.lease(now + 29, 10, 30) == []
    [again] = await store.lease(now + 31, 10, 30)
    assert (again.id, again.lease != first.lease) == (first.id, True)
    assert not await store.complete(first)  # the old holder lost it
    assert await store.complete(again)


async def test_concurrent_leases_never_share_a_delivery(store: DeliveryStore) -> None:
    """Ten leasers at once over 50 deliveries: each delivery goes to exactly one."""
    now = time.time()
    for _ in range(50):
        await store.enqueue(delivery(), None, now)
    batches = await asyncio.gather(*(store.lease(now, 7, 30) for _ in range(10)))
    ids = [d.id for batch in batches for d in batch]
    assert len(ids) == len(set(ids)) == 50


async def test_complete_removes(store: DeliveryStore) -> None:
    """A completed delivery is gone from the queue and its depth."""
    now = time.time()
    await store.enqueue(delivery(), None, now)
    [leased] = await store.lease(now, 10, 30)
    assert await store.complete(leased)
    assert await store.lease(now + 100, 10, 30) == []
    assert (await store.sizes()).get("analytics", (0, 0)) == (0, 0)


async def test_reschedule_keeps_attempts_and_result(store: DeliveryStore) -> None:
    """Rescheduled deliveries come back at their new time with attempts and last result."""
    now = time.time()
    await store.enqueue(delivery(), None, now)
    [leased] = await store.lease(now, 10, 30)
    failed = leased.after(attempts=1, last_status=503, last_error="unavailable")
    assert await store.reschedule(failed, now + 5)
    assert await store.lease(now + 4, 10, 30) == []
    [back] = await store.lease(now + 5, 10, 30)
    assert (back.attempts, back.last_status, back.last_error) == (1, 503, "unavailable")


async def test_bury_list_show_replay_delete(store: DeliveryStore) -> None:
    """Dead letters: listed newest first with a route filter, shown, replayed, deleted."""
    now = time.time()
    first, second, other = delivery(), delivery(), delivery(route="quiz")
    for d in (first, second, other):
        await store.enqueue(d, None, now)
    for i, leased in enumerate(
        sorted(await store.lease(now, 10, 30), key=lambda d: d.id != first.id)
    ):
        dead = leased.after(attempts=3, last_status=500, reason="exhausted", failed_at=now + i)
        assert await store.bury(dead)
    listed = await store.dead_letters(None, 10)
    assert len(listed) == 3
    assert listed[-1].id == first.id  # oldest last
    assert {d.id for d in await store.dead_letters("analytics", 10)} == {first.id, second.id}
    assert len(await store.dead_letters(None, 2)) == 2
    shown = await store.dead_letter(first.id)
    assert shown is not None
    assert (shown.body, shown.reason, shown.attempts) == (first.body, "exhausted", 3)
    assert await store.sizes() == {"analytics": (0, 2), "quiz": (0, 1)}

    assert await store.replay(first.id, now)
    [again] = await store.lease(now, 10, 30)
    assert (again.id, again.request_id, again.attempts, again.reason) == (
        first.id,
        first.request_id,
        0,
        None,
    )
    assert await store.replay_route("analytics", now) == 1
    assert not await store.replay(first.id, now)  # not dead any more
    assert await store.delete(other.id)
    assert not await store.delete(other.id)
    assert await store.dead_letters(None, 10) == []


async def test_dedupe_key_answers_first_id_per_route(store: DeliveryStore) -> None:
    """A repeated key on one route returns the first id and stores nothing; other routes are separate."""
    now = time.time()
    a, b, c = delivery(), delivery(), delivery(route="quiz")
    assert await store.enqueue(a, "key-1", now) == (a.id, False)
    assert await store.enqueue(b, "key-1", now) == (a.id, True)
    assert await store.enqueue(c, "key-1", now) == (c.id, False)
    assert await store.sizes() == {"analytics": (1, 0), "quiz": (1, 0)}


async def test_release_makes_leases_due_at_once(store: DeliveryStore) -> None:
    """A stopping worker's leases are due again immediately, attempts unchanged."""
    now = time.time()
    await store.enqueue(delivery(attempts=2), None, now)
    leased = await store.lease(now, 10, 300)
    await store.release(leased, now)
    [back] = await store.lease(now, 10, 300)
    assert back.attempts == 2


async def test_stale_holder_cannot_bury_or_reschedule(store: DeliveryStore) -> None:
    """After a lease expired and was taken, the old holder's results change nothing."""
    now = time.time()
    await store.enqueue(delivery(), None, now)
    [old] = await store.lease(now, 10, 1)
    [new] = await store.lease(now + 2, 10, 30)
    assert not await store.bury(old.after(reason="x", failed_at=now))
    assert not await store.reschedule(old, now)
    assert await store.dead_letters(None, 10) == []
    assert await store.complete(new)


async def test_renew_extends_the_holders_lease(store: DeliveryStore) -> None:
    """A renewed lease runs on from the renewal: not leased again before its new deadline."""
    now = time.time()
    await store.enqueue(delivery(), None, now)
    [held] = await store.lease(now, 10, 1)
    assert await store.renew(held, 30)
    assert await store.lease(now + 5, 10, 30) == []  # past the first deadline: still held
    [again] = await store.lease(time.time() + 31, 10, 30)
    assert again.id == held.id


async def test_only_the_lease_holder_renews(store: DeliveryStore) -> None:
    """Only the holder renews: not a holder whose lease was taken, nor of a done or dead one."""
    now = time.time()
    first, second = delivery(), delivery()
    await store.enqueue(first, None, now)
    [old] = await store.lease(now, 10, 1)
    [new] = await store.lease(now + 2, 10, 5)
    assert not await store.renew(old, 300)
    assert await store.lease(now + 6, 10, 30) == []  # the new holder's deadline stood
    assert await store.lease(now + 8, 10, 30) != []
    assert not await store.renew(first, 30)  # no token: not a holder
    await store.enqueue(second, None, now)
    [leased] = await store.lease(now, 10, 30)
    assert await store.bury(leased.after(reason="x", failed_at=now))
    assert not await store.renew(leased, 30)
    assert not await store.renew(new, 30)  # its lease was taken at now + 8


async def test_an_expired_lease_nobody_took_is_renewed(store: DeliveryStore) -> None:
    """A lapsed lease nobody took yet is renewed by its holder, whose result still counts."""
    now = time.time()
    await store.enqueue(delivery(), None, now)
    [held] = await store.lease(now, 10, -1)  # lapsed at once
    assert await store.renew(held, 30)
    assert await store.lease(time.time(), 10, 30) == []
    assert await store.complete(held)


async def test_one_renewal_pass_renews_every_lease_in_flight(store: DeliveryStore) -> None:
    """200 renewals at once (one deliverer pass, group-committed): each answered and applied."""
    now = time.time()
    for _ in range(200):
        await store.enqueue(delivery(), None, now)
    held = await store.lease(now, 200, 1)
    assert len(held) == 200
    assert await asyncio.gather(*(store.renew(d, 30) for d in held)) == [True] * 200
    assert await store.lease(now + 5, 200, 30) == []
    assert await asyncio.gather(*(store.complete(d) for d in held)) == [True] * 200


async def test_concurrent_enqueues_each_get_their_own_answer(store: DeliveryStore) -> None:
    """300 enqueues at once (group-committed): each is stored once; per dedupe key the first wins."""
    now = time.time()
    items = [(delivery(), f"key-{i % 30}" if i % 2 else None) for i in range(300)]
    answers = await asyncio.gather(*(store.enqueue(d, key, now) for d, key in items))
    first: dict[str, str] = {}
    for (d, key), (found, duplicate) in zip(items, answers, strict=True):
        if key is None or key not in first:
            assert (found, duplicate) == (d.id, False)
            first.setdefault(key or d.id, d.id)
        else:
            assert (found, duplicate) == (first[key], True)
    leased = await store.lease(time.time(), 1000, 30)
    assert sorted(d.id for d in leased) == sorted(set(first.values()))


async def test_redis_enqueue_answers_only_after_redis_acknowledged(
    redis_standalone: RedisServer,
) -> None:
    """While Redis holds writes (CLIENT PAUSE WRITE), no enqueue of the batch is answered."""
    redis.Redis(port=redis_standalone.port).flushall()
    store = RedisStore(redis_standalone.url)
    admin = redis.Redis(port=redis_standalone.port)
    try:
        await store.ping()
        admin.execute_command("CLIENT", "PAUSE", 400, "WRITE")  # type: ignore[no-untyped-call]
        paused_at = time.monotonic()
        items = [delivery() for _ in range(50)]
        answers = await asyncio.gather(*(store.enqueue(d, None, time.time()) for d in items))
        assert time.monotonic() - paused_at >= 0.35  # held until Redis took the writes
        assert answers == [(d.id, False) for d in items]
        assert redis.Redis(port=redis_standalone.port).zcard("{hookshield}:q") == 50
    finally:
        admin.close()
        await store.close()


async def test_redis_refusing_a_write_is_store_unavailable(redis_standalone: RedisServer) -> None:
    """A write Redis refuses (OOM under maxmemory) is StoreUnavailable, not acknowledged."""
    admin = redis.Redis(port=redis_standalone.port)
    admin.flushall()
    store = RedisStore(redis_standalone.url)
    try:
        await store.ping()
        admin.config_set("maxmemory", 1)
        with pytest.raises(StoreUnavailable, match="maxmemory"):
            await store.enqueue(delivery(), None, time.time())
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
        await store.close()
    assert redis.Redis(port=redis_standalone.port).zcard("{hookshield}:q") == 0


async def test_redis_scripts_flushed_are_loaded_again(redis_standalone: RedisServer) -> None:
    """After SCRIPT FLUSH (as after a Redis restart) writes still succeed: scripts reloaded.
    (On a standalone Redis they go through the group commit's own connection, `pipe`.)"""
    admin = redis.Redis(port=redis_standalone.port)
    admin.flushall()
    store = RedisStore(redis_standalone.url)
    try:
        first, second = delivery(), delivery()
        assert await store.enqueue(first, None, time.time()) == (first.id, False)
        admin.script_flush()
        assert await store.enqueue(second, None, time.time()) == (second.id, False)
        assert admin.zcard("{hookshield}:q") == 2
        assert store._pipe is not None
        assert store._pipe._protocol is not None
    finally:
        admin.close()
        await store.close()
