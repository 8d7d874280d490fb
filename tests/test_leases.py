"""Short leases renewed while their attempts run: a dead sidecar's deliveries are taken again
within seconds, an attempt may outlast its lease, and a lapsed lease is acknowledged once.

Real processes throughout: `hookshield run` (tests/processes.py), real `redis-server`s and
SQLite files, real HTTP targets counting what they receive per request id.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Stack, Target, wait_for
from tests.processes import Hookshield
from tests.redis_servers import RedisServer
from tests.test_durability import Counting

LEASE_S = 4.0  # the lease these tests run with (the product default, queue.lease_s, is 10)
WORKERS = 8


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always").start()
    yield server
    server.stop()


def route(target_url: str, timeout_ms: int = 1000) -> dict[str, Any]:
    return {"name": "events", "match": {"path_prefix": "/events"}, "target": target_url,
            "mode": "async", "timeout_ms": timeout_ms, "retry": {"initial_delay_ms": 50}}  # fmt: skip


def queue_for(kind: str, request: Any, **extra: Any) -> dict[str, Any]:
    queue: dict[str, Any] = {"workers": WORKERS, "lease_s": LEASE_S, **extra}
    if kind == "redis":
        queue["redis_url"] = request.getfixturevalue("redis_server").url
    return queue


def duplicates(counts: collections.Counter[str]) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


async def paced_burst(url: str, count: int, per_s: float, acked: list[str]) -> None:
    """`count` async calls at about `per_s` a second (the deliverer keeps up: little
    backlog, so what a restart waits for is the dead process's leases); 202s noted."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def one(n: int) -> None:
            rid = f"req-{n}"
            try:
                headers = {"X-Request-ID": rid}
                async with session.post(f"{url}/events", data=b"{}", headers=headers) as resp:
                    if resp.status == 202:
                        acked.append(rid)
            except (aiohttp.ClientError, TimeoutError):
                pass  # not acknowledged: the platform would retry it

        calls = []
        for n in range(count):
            await asyncio.sleep(max(0.0, started + n / per_s - loop.time()))
            calls.append(asyncio.ensure_future(one(n)))
        await asyncio.gather(*calls)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_a_killed_sidecars_deliveries_are_delivered_within_10_s_of_its_restart(
    kind: str, tmp_path: Path, target: Any, request: Any
) -> None:
    """kill -9 mid-burst: every 202 delivered within 10 s of the restart, dups <= in flight."""
    # The dead process's leases lapse at most lease_s = 4 s after their last renewal;
    # it had at most `workers` deliveries leased, so at most that many are sent twice.
    counter = Counting(delay_s=0.05)  # ~8 deliveries in flight at any time
    app: Target = await target(counter)
    config = {"log": {"level": "WARNING"}, "queue": queue_for(kind, request),
              "routes": [route(app.url)]}  # fmt: skip
    hs = await Hookshield(tmp_path, config).start()
    acked: list[str] = []
    sending = asyncio.create_task(paced_burst(hs.url, 600, 100, acked))
    await wait_for(lambda: len(acked) >= 200, timeout_s=30)
    hs.kill()
    killed_at = time.monotonic()
    sending.cancel()  # the rest could not be acknowledged: restart at once
    await asyncio.gather(sending, return_exceptions=True)
    assert 200 <= len(acked) < 600
    restarted_at = time.monotonic()
    await hs.start()
    await wait_for(lambda: all(counter.by_id[rid] for rid in acked), timeout_s=30)
    done_at = time.monotonic()
    assert [rid for rid in acked if counter.by_id[rid] == 0] == []
    assert done_at - restarted_at < 10.0, f"{done_at - restarted_at:.1f} s after the restart"
    assert duplicates(counter.by_id) <= WORKERS
    print(f"{kind}: all {len(acked)} delivered {done_at - killed_at:.2f} s after the kill "
          f"({done_at - restarted_at:.2f} s after the restart), "
          f"{duplicates(counter.by_id)} duplicates")  # fmt: skip
    assert await hs.stop() == 0


@pytest.fixture(params=["sqlite", "redis"])
def kind(request: Any) -> str:
    return str(request.param)


async def test_an_attempt_longer_than_its_lease_is_renewed_not_taken_over(
    kind: str, stack: Any, target: Any, request: Any
) -> None:
    """An attempt of 5 s under a 2 s lease is renewed, not leased again: one call."""
    # Renewed every 2/3 s: two passes in a row may come 0.6 s late before it would lapse.

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5.0)
        return web.Response(text="ok")

    app: Target = await target(slow)
    queue = queue_for(kind, request, lease_s=2)
    hs: Stack = await stack({"queue": queue, "routes": [route(app.url, timeout_ms=8000)]})
    resp = await hs.data.post("/events", data=b"{}")
    assert resp.status == 202
    store = hs.state.store
    assert store is not None
    await wait_for(lambda: len(app.seen) == 1)

    async def empty() -> bool:
        return (await store.sizes()).get("events", (0, 0)) == (0, 0)

    async with asyncio.timeout(15):
        while not await empty():  # noqa: ASYNC110 - the store is polled, no event to wait on
            await asyncio.sleep(0.05)
    assert len(app.seen) == 1


@pytest.mark.timeout(90)
async def test_a_paused_replicas_lapsed_lease_is_taken_over_and_counted_once(
    tmp_path: Path, target: Any, redis_server: RedisServer
) -> None:
    """A paused replica's lapsed lease is taken over; its late result is refused, counted once."""
    # Replica A is SIGSTOPped (a long GC pause, a starved CPU) while its attempt runs, so
    # it cannot renew: its 1 s lease lapses and replica B delivers the call. Once A runs
    # again the store refuses its result (`lease_lost`): one `delivered`, two calls (a
    # duplicate for the one delivery in flight), an empty queue.
    first_call = asyncio.Event()
    calls: list[float] = []

    async def hold_first(_: web.Request) -> web.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            first_call.set()
            await asyncio.sleep(4.0)  # answered while A is still paused
        return web.Response(text="ok")

    app: Target = await target(hold_first)
    config = {"log": {"level": "INFO"}, "routes": [route(app.url, timeout_ms=15000)],
              "queue": {"workers": 2, "lease_s": 1, "redis_url": redis_server.url}}  # fmt: skip
    a = await Hookshield(tmp_path, config, name="a").start()
    async with aiohttp.ClientSession() as session:
        headers = {"X-Request-ID": "rid-lapsed"}
        async with session.post(f"{a.url}/events", data=b"{}", headers=headers) as resp:
            assert resp.status == 202
    await asyncio.wait_for(first_call.wait(), 10)
    assert a.process is not None
    os.kill(a.process.pid, signal.SIGSTOP)
    try:
        b = await Hookshield(tmp_path, config, name="b").start()
        await wait_for(lambda: len(calls) == 2, timeout_s=15)  # B took the lapsed lease
        await wait_for(lambda: _events(b, "delivered") == 1, timeout_s=10)
    finally:
        os.kill(a.process.pid, signal.SIGCONT)
    await wait_for(lambda: _events(a, "lease_lost") >= 1, timeout_s=15)
    await asyncio.sleep(0.5)  # anything A might still (wrongly) count
    assert (_events(a, "delivered"), _events(b, "delivered")) == (0, 1)
    assert len(calls) == 2
    with redis_server.client() as client:
        assert client.zcard("{hookshield}:q") == 0
    assert await a.stop() == 0
    assert await b.stop() == 0


def _events(hs: Hookshield, name: str) -> int:
    """How many log lines of event `name` the process wrote."""
    count = 0
    for line in hs.log().splitlines():
        try:
            count += json.loads(line).get("event") == name
        except (ValueError, AttributeError):
            continue
    return count
