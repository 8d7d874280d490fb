"""Redis under Sentinel failing over while hookshield writes: no acknowledged call is lost.

Real processes: a master and a replica (`appendonly yes`), three sentinels (quorum 2), a
`hookshield run` on `redis+sentinel://`, and a target counting deliveries per request id.
A planned `SENTINEL FAILOVER` leaves the old master running and answering as a master for
~10 s after the promotion, until Sentinel demotes it and its resync wipes what it took
meanwhile: hookshield must write nothing to it from the promotion on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hookshield.queue.redis import RedisStore
from tests.conftest import Target, wait_for
from tests.processes import Hookshield
from tests.redis_servers import RedisServer, SentinelSet
from tests.test_durability import Counting, burst
from tests.test_leases import paced_burst
from tests.test_queue_contract import delivery

BURST = 800


def config(target_url: str, redis_url: str) -> dict[str, Any]:
    return {
        "log": {"level": "WARNING"},
        "queue": {"workers": 4, "lease_s": 2, "redis_url": redis_url},
        "routes": [{"name": "events", "match": {"path_prefix": "/events"}, "target": target_url,
                    "mode": "async", "timeout_ms": 4000, "retry": {"initial_delay_ms": 50}}],
    }  # fmt: skip


def script_calls(server: RedisServer) -> int:
    """How many script calls (every queue write is one) the server has run."""
    with server.client() as client:
        stats = client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


class Promotion:
    """Watches the replica from a thread: at the moment it reports itself master, notes how
    many script calls the old master had run, and again when told to `finish`."""

    def __init__(self, old: RedisServer, new: RedisServer) -> None:
        self.old, self.new = old, new
        self.at_promotion: int | None = None
        self.at_finish: int | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._finish = threading.Event()

    def start(self) -> Promotion:
        self._thread.start()
        return self

    def _watch(self) -> None:
        with self.new.client() as new:
            while not self._finish.is_set() and new.execute_command("ROLE")[0] != b"master":
                time.sleep(0.001)
        self.at_promotion = script_calls(self.old)
        self._finish.wait()
        self.at_finish = script_calls(self.old)

    def finish(self) -> int:
        """Script calls the old master ran since the promotion."""
        self._finish.set()
        self._thread.join(10)
        assert self.at_promotion is not None, "the replica was never promoted"
        assert self.at_finish is not None
        return self.at_finish - self.at_promotion


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    started = SentinelSet(tmp_path).start()
    yield started
    started.stop()


@pytest.fixture
async def counting(target: Any) -> tuple[Target, Counting]:
    counter = Counting(delay_s=0.01)  # 4 workers: a backlog builds while the burst runs
    return await target(counter), counter


@pytest.mark.timeout(90)
@pytest.mark.parametrize("run", range(1, 6))
async def test_planned_failover_during_a_burst_loses_no_acknowledged_call(
    run: int, tmp_path: Path, sentinels: SentinelSet, counting: tuple[Target, Counting]
) -> None:
    """SENTINEL FAILOVER mid-burst with a backlog: no 202 lost, no write to the old master."""
    # The old master goes on answering as a master for ~10 s after the promotion: its
    # script calls are counted from the promotion until 2 s after every sentinel named the
    # new master (and the backlog was delivered from it).
    app, counter = counting
    hs = await Hookshield(tmp_path, config(app.url, sentinels.url)).start()
    old = sentinels.current_master()
    new = sentinels.replica if old is sentinels.master else sentinels.master
    acked: list[str] = []
    sending = asyncio.create_task(burst([hs.url], BURST, acked))
    await wait_for(lambda: len(acked) >= BURST // 4, timeout_s=30)
    backlog = len(acked) - len(counter.by_id)
    promotion = Promotion(old, new).start()
    sentinels.failover()
    await sending
    assert backlog >= 50, backlog
    await asyncio.to_thread(sentinels.wait_switched, ("127.0.0.1", old.port))
    switched_at = time.monotonic()
    await wait_for(lambda: all(counter.by_id[rid] for rid in acked), timeout_s=30)
    await asyncio.sleep(max(0.0, switched_at + 2.0 - time.monotonic()))
    assert promotion.finish() == 0
    assert len(acked) >= BURST // 2  # most calls were taken, during the failover too
    assert script_calls(new) > 0
    assert [rid for rid in acked if counter.by_id[rid] == 0] == []
    assert await hs.stop() == 0


@pytest.fixture
def sentinels_fsync_always(tmp_path: Path) -> Iterator[SentinelSet]:
    started = SentinelSet(tmp_path, "--appendfsync", "always").start()
    yield started
    started.stop()


@pytest.mark.timeout(90)
async def test_killed_master_loses_no_acknowledged_call(
    tmp_path: Path, sentinels_fsync_always: SentinelSet, counting: tuple[Target, Counting]
) -> None:
    """A SIGKILLed master (appendfsync always): after the promotion, every 202 is delivered."""
    sentinels = sentinels_fsync_always
    app, counter = counting
    hs = await Hookshield(tmp_path, config(app.url, sentinels.url)).start()
    old = sentinels.current_master()
    acked: list[str] = []
    sending = asyncio.create_task(paced_burst(hs.url, BURST, 100, acked))  # 8 s of calls
    await wait_for(lambda: len(acked) >= 100, timeout_s=30)
    old.kill()
    acked_before = len(acked)
    await asyncio.to_thread(sentinels.wait_switched, ("127.0.0.1", old.port))
    await sending
    await wait_for(lambda: all(counter.by_id[rid] for rid in acked), timeout_s=30)
    assert [rid for rid in acked if counter.by_id[rid] == 0] == []
    assert len(acked) > acked_before  # calls were taken again on the new master
    assert await hs.stop() == 0


async def _enqueue_all(store: RedisStore, count: int) -> list[str | BaseException]:
    """`count` enqueues at once: each one's id, or its exception."""
    items = [delivery() for _ in range(count)]
    answers = await asyncio.gather(
        *(store.enqueue(d, None, time.time()) for d in items), return_exceptions=True
    )
    return [a if isinstance(a, BaseException) else a[0] for a in answers]


@pytest.mark.timeout(60)
async def test_a_replica_leaving_does_not_stop_writes(sentinels: SentinelSet) -> None:
    """A replica leaving (killed) is confirmed by every sentinel: writes go on, none fails."""
    # The master's ROLE no longer lists the replica after a batch: a promotion looks the
    # same, so the store asks every sentinel before it acknowledges that batch.
    store = RedisStore(sentinels.url)
    try:
        assert all(isinstance(a, str) for a in await _enqueue_all(store, 50))
        sentinels.replica.kill()
        for _ in range(20):
            assert all(isinstance(a, str) for a in await _enqueue_all(store, 20))
            await asyncio.sleep(0.02)
        with sentinels.master.client() as client:
            assert client.zcard("{hookshield}:q") == 50 + 20 * 20
    finally:
        await store.close()


@pytest.mark.timeout(60)
async def test_a_write_refused_as_readonly_is_written_to_the_master(
    sentinels: SentinelSet,
) -> None:
    """Writes refused READONLY (by a replica) are never acknowledged, and go to the master."""
    # The role check is turned off (as for an ACL without ROLE) and the watch pointed at
    # the replica, so the next connection reaches it and its writes are refused READONLY.
    store = RedisStore(sentinels.url)
    try:
        assert all(isinstance(a, str) for a in await _enqueue_all(store, 5))
        watch, pipe = store._watch, store._pipe
        assert watch is not None
        assert pipe is not None
        pipe.close()
        pipe.role = False
        watch.master = ("127.0.0.1", sentinels.replica.port)  # stale: the next connection
        watch._verified_at = asyncio.get_running_loop().time()  # goes to the replica
        started = time.monotonic()
        answers = await _enqueue_all(store, 30)
        assert all(isinstance(a, str) for a in answers), answers
        assert time.monotonic() - started < 2.0
        assert pipe.peer == ("127.0.0.1", sentinels.master.port)
        with sentinels.master.client() as client:
            assert client.zcard("{hookshield}:q") == 35
    finally:
        await store.close()


@pytest.mark.timeout(60)
async def test_a_connection_to_a_replica_is_refused_before_any_write(
    sentinels: SentinelSet,
) -> None:
    """A connection to a replica is refused by ROLE before any write; writes go to the master."""
    store = RedisStore(sentinels.url)
    try:
        assert all(isinstance(a, str) for a in await _enqueue_all(store, 5))
        watch, pipe = store._watch, store._pipe
        assert watch is not None
        assert pipe is not None
        pipe.close()
        watch.master = ("127.0.0.1", sentinels.replica.port)
        watch._verified_at = asyncio.get_running_loop().time()
        before = script_calls(sentinels.replica)
        answers = await _enqueue_all(store, 30)
        assert all(isinstance(a, str) for a in answers), answers
        assert script_calls(sentinels.replica) == before  # (replicated writes are not calls)
        assert pipe.peer == ("127.0.0.1", sentinels.master.port)
    finally:
        await store.close()


@pytest.mark.timeout(60)
async def test_a_master_that_refuses_role_is_still_written_to(sentinels: SentinelSet) -> None:
    """An ACL denying ROLE (`-role`): role checks are skipped, writes still reach the master."""
    for server in sentinels.servers:
        with server.client() as client:
            client.execute_command("ACL", "SETUSER", "default", "-role")
    store = RedisStore(sentinels.url)
    try:
        assert all(isinstance(a, str) for a in await _enqueue_all(store, 20))
        assert store._pipe is not None
        assert store._pipe.role is False
        assert store._pipe.peer == ("127.0.0.1", sentinels.master.port)
    finally:
        await store.close()
