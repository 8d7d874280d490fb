"""At-least-once under crashes and stalls: kill -9 of hookshield or Redis loses no
acknowledged call; a paused Redis holds no caller past one timeout, nor a lease past its call."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hookshield.queue.base import StoreUnavailable
from tests.conftest import Target, wait_for
from tests.processes import Hookshield
from tests.redis_servers import RedisServer
from tests.test_queue_contract import delivery

BURST = 1000


class Counting:
    """A target that counts deliveries per request id, a little slow so a backlog builds."""

    def __init__(self, delay_s: float = 0.005) -> None:
        self.delay_s = delay_s
        self.by_id: collections.Counter[str] = collections.Counter()

    async def __call__(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay_s)
        self.by_id[request.headers["X-Request-ID"]] += 1
        return web.Response(text="ok")


def config(target_url: str, queue: dict[str, Any]) -> dict[str, Any]:
    return {
        "log": {"level": "WARNING"},
        "queue": {"workers": 16, "lease_s": 2, **queue},
        "routes": [{"name": "events", "match": {"path_prefix": "/events"}, "target": target_url,
                    "mode": "async", "timeout_ms": 500, "retry": {"initial_delay_ms": 50}}],
    }  # fmt: skip


async def burst(urls: list[str], count: int, acked: list[str], concurrency: int = 32) -> None:
    """Send `count` async calls (round-robin over `urls`); note the request ids that got 202."""
    ids = iter(range(count))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def client() -> None:
            for n in ids:
                rid = f"req-{n}"
                try:
                    async with session.post(f"{urls[n % len(urls)]}/events", data=b'{"n":%d}' % n,
                                            headers={"X-Request-ID": rid}) as resp:  # fmt: skip
                        if resp.status == 202:
                            acked.append(rid)
                except (aiohttp.ClientError, TimeoutError):
                    pass  # not acknowledged: the platform would retry it

        await asyncio.gather(*(client() for _ in range(concurrency)))


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[RedisServer]:
    """AOF with `always`: under `everysec` a Redis crash may lose its last second or two of
    acknowledged writes by design (more when the disk stalls, as this shared one does)."""
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always").start()
    yield server
    server.stop()


@pytest.fixture
async def counting(target: Any) -> tuple[Target, Counting]:
    counter = Counting()
    return await target(counter), counter


@pytest.mark.timeout(120)
@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_kill_9_mid_burst_loses_no_acknowledged_call(
    store: str, tmp_path: Path, counting: tuple[Target, Counting], request: Any
) -> None:
    """kill -9 of hookshield during 1,000 async calls; after restart every 202 is delivered."""
    app, counter = counting
    queue = {"redis_url": request.getfixturevalue("redis_aof").url} if store == "redis" else {}
    hs = await Hookshield(tmp_path, config(app.url, queue)).start()
    acked: list[str] = []
    sending = asyncio.create_task(burst([hs.url], BURST, acked))
    await wait_for(lambda: len(acked) >= BURST // 3, timeout_s=30)
    hs.kill()
    await sending
    assert BURST // 3 <= len(acked) < BURST
    await hs.start()
    await wait_for(lambda: all(counter.by_id[rid] for rid in acked), timeout_s=60)
    assert [rid for rid in acked if counter.by_id[rid] == 0] == []
    await hs.stop()


@pytest.mark.timeout(120)
async def test_two_replicas_on_one_redis_deliver_exactly_once(
    tmp_path: Path, counting: tuple[Target, Counting], redis_aof: RedisServer
) -> None:
    """Two replicas sharing Redis, no faults: 1,000 calls -> exactly 1,000 deliveries."""
    app, counter = counting
    shared = config(app.url, {"redis_url": redis_aof.url})
    replicas = [await Hookshield(tmp_path, shared, name=f"r{i}").start() for i in range(2)]
    acked: list[str] = []
    await burst([r.url for r in replicas], BURST, acked)
    assert len(acked) == BURST
    await wait_for(lambda: sum(counter.by_id.values()) >= BURST, timeout_s=60)
    await asyncio.sleep(0.5)
    assert len(counter.by_id) == BURST
    assert set(counter.by_id.values()) == {1}
    for replica in replicas:
        assert await replica.stop() == 0


@pytest.mark.timeout(120)
async def test_kill_9_of_redis_mid_burst_loses_no_acknowledged_call(
    tmp_path: Path, counting: tuple[Target, Counting], redis_aof: RedisServer
) -> None:
    """Redis (AOF always) killed and restarted mid-burst: every 202 is still delivered."""
    app, counter = counting
    counter.delay_s = 0.02  # keep a backlog in Redis when it dies
    hs = await Hookshield(tmp_path, config(app.url, {"redis_url": redis_aof.url})).start()
    acked: list[str] = []
    sending = asyncio.create_task(burst([hs.url], BURST, acked))
    await wait_for(lambda: len(acked) >= BURST // 3, timeout_s=30)
    redis_aof.kill()
    await asyncio.sleep(0.3)
    redis_aof.start()
    await sending
    await wait_for(lambda: all(counter.by_id[rid] for rid in acked), timeout_s=60)
    assert len(acked) >= BURST // 3
    await hs.stop()


@pytest.mark.timeout(60)
async def test_idempotency_key_across_two_replicas(
    tmp_path: Path, counting: tuple[Target, Counting], redis_aof: RedisServer
) -> None:
    """The same Idempotency-Key sent to two replicas: one id, one delivery."""
    app, counter = counting
    shared = config(app.url, {"redis_url": redis_aof.url})
    replicas = [await Hookshield(tmp_path, shared, name=f"r{i}").start() for i in range(2)]
    answers = []
    async with aiohttp.ClientSession() as session:
        for replica in replicas:
            headers = {"Idempotency-Key": "order-77", "X-Request-ID": "rid-77"}
            async with session.post(f"{replica.url}/events", data=b"{}", headers=headers) as resp:
                answers.append(await resp.json())
    assert answers[0]["id"] == answers[1]["id"]
    assert (answers[0].get("duplicate"), answers[1]["duplicate"]) == (None, True)
    await wait_for(lambda: counter.by_id["rid-77"] == 1)
    await asyncio.sleep(0.5)
    assert counter.by_id["rid-77"] == 1
    for replica in replicas:
        await replica.stop()


@pytest.mark.timeout(60)
async def test_sigterm_releases_unfinished_deliveries_at_once(tmp_path: Path, target: Any) -> None:
    """SIGTERM with a delivery stuck past the grace period: exit 0, and after a restart it
    is delivered again at once, not after its (30 s) lease would have expired."""
    arrivals: list[float] = []

    async def slow_first(request: web.Request) -> web.Response:
        arrivals.append(asyncio.get_running_loop().time())
        if len(arrivals) == 1:
            await asyncio.sleep(10)
        return web.Response(text="ok")

    app = await target(slow_first)
    cfg = config(app.url, {"lease_s": 30})
    cfg["routes"][0]["timeout_ms"] = 20000
    hs = await Hookshield(tmp_path, cfg).start("--grace", "0.5")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{hs.url}/events", data=b"{}") as resp,
    ):
        assert resp.status == 202
    await wait_for(lambda: len(arrivals) == 1)
    assert await hs.stop(timeout_s=5) == 0
    await hs.start()
    await wait_for(lambda: len(arrivals) == 2, timeout_s=5)
    await hs.stop()


@pytest.fixture
def redis_plain(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.resume()  # in case a test failed while it was paused
    server.stop()


@pytest.mark.timeout(60)
async def test_a_paused_redis_fails_each_write_within_one_timeout(
    redis_plain: RedisServer,
) -> None:
    """SIGSTOPped Redis: each write fails within one pipe timeout of its own call, then recovers."""
    # Also the writes queued behind the stalled batch (they are not given 2 s more). Bound:
    # 2 s + 0.6 s of slack for a loaded machine, well under the 4 s two timeouts took.
    from hookshield.queue.redis import TIMEOUT_S, RedisStore

    store = RedisStore(redis_plain.url)
    loop = asyncio.get_running_loop()
    waits: list[float] = []

    async def timed_enqueue() -> None:
        called = loop.time()
        with pytest.raises(StoreUnavailable):
            await store.enqueue(delivery(), None, time.time())
        waits.append(loop.time() - called)

    try:
        await store.ping()
        assert await store.enqueue(delivery(), None, time.time())
        redis_plain.pause()
        first = asyncio.ensure_future(timed_enqueue())
        await asyncio.sleep(1.0)  # the first batch is stalled; these wait behind it
        await asyncio.gather(first, *(timed_enqueue() for _ in range(20)))
        assert len(waits) == 21
        assert max(waits) < TIMEOUT_S + 0.6, waits
        redis_plain.resume()
        async with asyncio.timeout(TIMEOUT_S + 1):
            found, _ = await store.enqueue(d := delivery(), None, time.time())
        assert found == d.id
    finally:
        redis_plain.resume()
        await store.close()


@pytest.mark.timeout(60)
async def test_a_lease_sent_to_a_paused_redis_does_not_hold_its_deliveries(
    redis_plain: RedisServer,
) -> None:
    """A lease timed out on a SIGSTOPped Redis is not applied after SIGCONT: leasable at once."""
    # The pipe resets the connection (RST), so the kernel drops the command Redis had not
    # read; without that the deliveries would sit leased for a lease after SIGCONT.
    from hookshield.queue.redis import RedisStore

    store = RedisStore(redis_plain.url)
    try:
        now = time.time()
        for _ in range(5):
            await store.enqueue(delivery(), None, now)
        redis_plain.pause()
        with pytest.raises(StoreUnavailable):
            await store.lease(time.time(), 10, 30)
        redis_plain.resume()
        assert len(await store.lease(time.time(), 10, 30)) == 5
    finally:
        redis_plain.resume()
        await store.close()
