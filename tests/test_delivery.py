"""Async routes end to end: 202 after storing, delivery with retries, DLQ, replay, dedupe."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.conftest import Stack, Target, wait_for
from tests.redis_servers import RedisServer

SECRET = "whsec_" + base64.b64encode(b"delivery-test-key-0123456789").decode()


class Script:
    """A target answering from a list of statuses (then 200), noting when each call came."""

    def __init__(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        self.statuses, self.headers = list(statuses), headers or {}
        self.times: list[float] = []

    async def __call__(self, request: web.Request) -> web.Response:
        self.times.append(time.monotonic())
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, headers=self.headers if status != 200 else {})


def async_route(url: str, **extra: Any) -> dict[str, Any]:
    retry = {"max_attempts": 3, "initial_delay_ms": 200, "multiplier": 2, "jitter": False}
    return {
        "queue": {"workers": 4},
        "routes": [{"name": "events", "match": {"path_prefix": "/events"}, "target": url,
                    "mode": "async", "timeout_ms": 1000, "retry": retry, **extra}],
    }  # fmt: skip


async def test_async_call_is_acknowledged_then_delivered(stack: Any, target: Any) -> None:
    """202 with id and requestId, outcome queued; the target gets the body and attempt headers."""
    app: Target = await target()
    hs: Stack = await stack(async_route(app.url + "/in"))
    resp = await hs.data.post("/events/e?x=1", data=b'{"e":1}', headers={"X-Request-ID": "r-1"})
    body = await resp.json()
    assert (resp.status, resp.headers["X-Hookshield-Outcome"]) == (202, "queued")
    assert body == {"success": True, "queued": True, "id": body["id"], "requestId": "r-1"}
    await wait_for(lambda: len(app.seen) == 1)
    seen = app.seen[0]
    assert (seen.path_qs, seen.body) == ("/in/e?x=1", b'{"e":1}')
    assert (seen.headers["X-Request-ID"], seen.headers["X-Retry-Attempt"], seen.headers["X-Max-Attempts"]) == (
        "r-1", "1", "3",
    )  # fmt: skip


async def test_retries_with_configured_gaps_and_one_request_id(stack: Any, target: Any) -> None:
    """Failing twice then succeeding: attempts 1, 2, 3, ~200 ms then ~400 ms apart, same id and body."""
    script = Script(500, 503)
    app = await target(script)
    hs = await stack(async_route(app.url))
    await hs.data.post("/events", data=b"payload", headers={"X-Request-ID": "r-2"})
    await wait_for(lambda: len(app.seen) == 3)
    assert [s.headers["X-Retry-Attempt"] for s in app.seen] == ["1", "2", "3"]
    assert {s.headers["X-Request-ID"] for s in app.seen} == {"r-2"}
    assert {s.body for s in app.seen} == {b"payload"}
    gaps = [b - a for a, b in zip(script.times, script.times[1:], strict=False)]
    assert 0.2 <= gaps[0] < 0.35
    assert 0.4 <= gaps[1] < 0.55


async def test_each_attempt_is_signed_afresh(stack: Any, target: Any) -> None:
    """Every attempt carries a standard-webhooks signature that verifies."""
    app = await target(Script(500))
    signing = {"scheme": "standard-webhooks", "secret": "s"}
    hs = await stack(
        {**async_route(app.url, signing=signing), "secrets": {"s": {"env": "S"}}}, env={"S": SECRET}
    )
    await hs.data.post("/events", data=b'{"n":2}')
    await wait_for(lambda: len(app.seen) == 2)
    for seen in app.seen:
        Webhook(SECRET).verify(seen.body, {k.lower(): v for k, v in seen.headers.items()})


async def test_exhausted_attempts_go_to_dlq_and_replay_delivers_once(
    stack: Any, target: Any
) -> None:
    """3 failures: dead-lettered with attempts and last_status; replay delivers with the same id."""
    script = Script(500, 500, 500)
    app = await target(script)
    hs = await stack(async_route(app.url))
    queued = await (
        await hs.data.post("/events", data=b"x", headers={"X-Request-ID": "r-3"})
    ).json()
    items: list[dict[str, Any]] = []

    async def dead() -> list[dict[str, Any]]:
        return list((await (await hs.admin.get("/admin/dlq?route=events")).json())["items"])

    async with asyncio.timeout(5):
        while not items:
            items = await dead()
            await asyncio.sleep(0.05)
    [item] = items
    assert (item["id"], item["attempts"], item["last_status"], item["reason"]) == (
        queued["id"],
        3,
        500,
        "exhausted",
    )
    assert item["request_id"] == "r-3"
    shown = await (await hs.admin.get(f"/admin/dlq/{item['id']}")).json()
    assert shown["request"]["body"] == "x"
    replayed = await hs.admin.post(f"/admin/dlq/{item['id']}/replay")
    assert (await replayed.json())["replayed"] == 1
    await wait_for(lambda: len(app.seen) == 4)
    await asyncio.sleep(0.2)
    assert len(app.seen) == 4
    assert app.seen[-1].headers["X-Request-ID"] == "r-3"
    assert app.seen[-1].headers["X-Retry-Attempt"] == "1"
    assert await dead() == []


async def test_client_error_is_dead_lettered_after_one_attempt(stack: Any, target: Any) -> None:
    """A 400 is not retried: exactly one attempt, then the DLQ with reason rejected."""
    app = await target(Script(400))
    hs = await stack(async_route(app.url))
    await hs.data.post("/events", data=b"x")
    items: list[Any] = []
    async with asyncio.timeout(5):
        while not items:
            items = (await (await hs.admin.get("/admin/dlq")).json())["items"]
            await asyncio.sleep(0.05)
    assert (items[0]["attempts"], items[0]["last_status"], items[0]["reason"]) == (
        1,
        400,
        "rejected",
    )
    assert len(app.seen) == 1


async def test_duplicate_idempotency_key_queues_once(stack: Any, target: Any) -> None:
    """The same Idempotency-Key answers the first id with duplicate: true; one delivery."""
    app = await target()
    hs = await stack(async_route(app.url))
    first = await (
        await hs.data.post("/events", data=b"1", headers={"Idempotency-Key": "k"})
    ).json()
    again = await hs.data.post("/events", data=b"1", headers={"Idempotency-Key": "k"})
    body = await again.json()
    assert (again.status, again.headers["X-Hookshield-Outcome"]) == (202, "duplicate")
    assert (body["id"], body["duplicate"]) == (first["id"], True)
    await wait_for(lambda: len(app.seen) == 1)
    await asyncio.sleep(0.2)
    assert len(app.seen) == 1


async def test_retry_after_delays_the_next_attempt(stack: Any, target: Any) -> None:
    """A 503 with Retry-After: 1 is tried again no sooner than 1 s later."""
    script = Script(503, headers={"Retry-After": "1"})
    app = await target(script)
    hs = await stack(async_route(app.url))
    await hs.data.post("/events", data=b"x")
    await wait_for(lambda: len(app.seen) == 2)
    assert script.times[1] - script.times[0] >= 1.0


async def test_open_breaker_defers_without_using_attempts(stack: Any, target: Any) -> None:
    """While the target's breaker is open, deliveries wait and no attempt is counted for it."""
    script = Script(500)
    app = await target(script)
    breaker = {"failure_threshold": 1, "recovery_timeout_s": 0.5, "success_threshold": 1}
    retry = {"max_attempts": 2, "initial_delay_ms": 10, "jitter": False}
    hs = await stack(async_route(app.url, breaker=breaker, retry=retry))
    await hs.data.post("/events", data=b"a")  # attempt 1 fails: the breaker opens for 0.5 s
    await wait_for(lambda: len(app.seen) == 1)
    await hs.data.post("/events", data=b"b")  # deferred while open, again and again
    await wait_for(lambda: len(app.seen) == 3, timeout_s=5)
    attempts = {
        body: [s.headers["X-Retry-Attempt"] for s in app.seen if s.body == body]
        for body in (b"a", b"b")
    }
    assert attempts == {b"a": ["1", "2"], b"b": ["1"]}
    assert (
        min(t for t in script.times[1:]) - script.times[0] >= 0.5
    )  # nothing went through while open


async def test_sync_fallback_queue_spools_the_call(stack: Any, target: Any) -> None:
    """fallback.queue on a sync route: a failure answers 202 and the call is delivered later."""
    script = Script(503)
    app = await target(script)
    config = {"routes": [{"name": "win", "match": {"path_prefix": "/win"}, "target": app.url,
                          "fallback": {"queue": True}, "retry": {"initial_delay_ms": 10}}]}  # fmt: skip
    hs = await stack(config)
    resp = await hs.data.post("/win", data=b"w", headers={"X-Request-ID": "r-9"})
    assert (resp.status, resp.headers["X-Hookshield-Outcome"]) == (202, "fallback:upstream_error")
    await wait_for(lambda: len(app.seen) == 2)
    assert app.seen[1].headers["X-Request-ID"] == "r-9"


async def test_admin_token_guards_admin_endpoints_only(stack: Any, target: Any) -> None:
    """With admin.token_env set, /admin/* needs the bearer token; probes stay open."""
    app = await target()
    config = {**async_route(app.url), "admin": {"token_env": "ADMIN_TOKEN_FOR_TEST"}}
    import os

    os.environ["ADMIN_TOKEN_FOR_TEST"] = "t0ken"
    try:
        hs = await stack(config)
        assert (await hs.admin.get("/admin/dlq")).status == 401
        assert (
            await hs.admin.get("/admin/dlq", headers={"Authorization": "Bearer nope"})
        ).status == 401
        assert (
            await hs.admin.get("/admin/dlq", headers={"Authorization": "Bearer t0ken"})
        ).status == 200
        assert (await hs.admin.get("/readyz")).status == 200
    finally:
        del os.environ["ADMIN_TOKEN_FOR_TEST"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "everysec").start()
    yield server
    server.stop()


async def test_redis_down_means_503_and_not_ready_then_recovers(
    stack: Any, target: Any, redis_server: RedisServer
) -> None:
    """Redis stopped: 503 QUEUE_UNAVAILABLE (never 202) and /readyz 503; both recover."""
    app = await target()
    hs = await stack({**async_route(app.url), "queue": {"redis_url": redis_server.url}})
    assert (await hs.data.post("/events", data=b"1")).status == 202
    await wait_for(lambda: [s.body for s in app.seen] == [b"1"])  # not leased as Redis dies
    redis_server.kill()
    down = await hs.data.post("/events", data=b"2")
    assert (down.status, (await down.json())["code"]) == (503, "QUEUE_UNAVAILABLE")
    assert (await hs.admin.get("/readyz")).status == 503
    redis_server.start()
    assert (await hs.data.post("/events", data=b"3")).status == 202
    assert (await hs.admin.get("/readyz")).status == 200
    await wait_for(lambda: b"3" in {s.body for s in app.seen}, timeout_s=10)


async def test_redis_without_aof_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that keeps nothing on disk, or evicts keys, is named in a warning at first use."""
    from hookshield.queue.redis import RedisStore

    server = RedisServer(tmp_path, "--maxmemory-policy", "allkeys-lru").start()
    try:
        store = RedisStore(server.url)
        await store.ping()
        await store.close()
    finally:
        server.stop()
    events = [r.getMessage() for r in caplog.records]
    assert "redis_not_durable" in events
    assert "redis_evicts" in events


class PeakCounting:
    """A target handler answering after `delay_s` that records the most calls it held at once."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s, self.in_flight, self.peak = delay_s, 0, 0

    async def __call__(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(self.delay_s)
        self.in_flight -= 1
        return web.Response(text="ok")


async def test_one_slow_target_gets_at_most_its_share_of_workers(stack: Any, target: Any) -> None:
    """With 4 workers a single target never has more than 2 deliveries in flight."""
    slow = PeakCounting(0.2)
    app = await target(slow)
    hs = await stack(async_route(app.url))
    for n in range(6):
        await hs.data.post("/events", data=b"%d" % n)
    await wait_for(lambda: len(app.seen) == 6, timeout_s=10)
    assert slow.peak == 2


async def test_one_target_gets_at_most_half_the_workers(stack: Any, target: Any) -> None:
    """8 calls to one slow target with 4 workers: never more than 2 at once, all delivered
    on their first attempt (waiting for a slot uses no attempt)."""
    slow = PeakCounting(0.1)
    app = await target(slow)
    hs = await stack(async_route(app.url))
    for n in range(8):
        assert (
            await hs.data.post("/events", data=b"x", headers={"X-Request-ID": f"c-{n}"})
        ).status == 202
    await wait_for(lambda: len(app.seen) == 8, timeout_s=10)
    assert slow.peak == 2
    assert {s.headers["X-Retry-Attempt"] for s in app.seen} == {"1"}


async def test_deliveries_halve_under_pressure_down_to_one_and_grow_back(stack: Any) -> None:
    """Each busy sample halves the deliveries at once (16, 8, 4, 2, 1, 1); from the third
    calm sample in a row, each adds an eighth of the workers back, up to all of them; a
    single calm sample amid busy ones changes nothing."""
    hs: Stack = await stack({**async_route("http://127.0.0.1:9/"), "queue": {"workers": 16}})
    deliverer = hs.state.deliverer
    assert deliverer is not None
    deliverer.pressure.stop()  # driven by hand here
    limits = []
    for busy in [True] * 5 + [False, True] + [False] * 11:
        deliverer._adjust(busy)
        limits.append(deliverer.limit)
    assert limits == [8, 4, 2, 1, 1, 1, 1, 1, 1, 3, 5, 7, 9, 11, 13, 15, 16, 16]


def _spin_until(stop: threading.Event) -> None:
    """Keep a CPU busy without holding the GIL (hashlib lets go of it for large inputs), so
    the process is runnable all the time while its event loop still runs freely."""
    block = b"x" * 4_000_000
    while not stop.is_set():
        hashlib.sha256(block).digest()


async def test_deliveries_give_way_while_the_process_is_short_of_cpu(
    stack: Any, target: Any
) -> None:
    """With the process runnable all the time (a hashing thread) while calls keep arriving,
    a slow target gets one delivery at a time instead of its share of 2; all are delivered."""
    slow = PeakCounting(0.1)
    app = await target(slow)
    hs: Stack = await stack(async_route(app.url, timeout_ms=5000))  # no retry on a slow turn
    deliverer = hs.state.deliverer
    assert deliverer is not None
    limits: list[int] = []  # for the failure message
    adjust = deliverer.pressure.on_sample

    def noted(busy: bool) -> None:
        adjust(busy)
        limits.append(deliverer.limit)

    deliverer.pressure.on_sample = noted
    stop = threading.Event()
    burner = threading.Thread(target=_spin_until, args=(stop,))

    async def knock() -> None:  # calls arriving at the data plane, in every 50 ms window
        while not stop.is_set():
            await hs.data.get("/nowhere")

    burner.start()
    knocking = asyncio.gather(*(knock() for _ in range(4)))
    try:
        await wait_for(lambda: deliverer.limit == 1, timeout_s=10)
        for n in range(6):
            assert (await hs.data.post("/events", data=b"%d" % n)).status == 202
        await wait_for(lambda: len(app.seen) == 6, timeout_s=20)
    finally:
        stop.set()
        burner.join()
        await knocking
    attempts = [seen.headers["X-Retry-Attempt"] for seen in app.seen]
    assert slow.peak == 1, f"limits per 50 ms sample: {limits}; attempts: {attempts}"


async def test_an_origin_no_delivery_uses_is_forgotten(stack: Any, target: Any) -> None:
    """The per-origin slots live only while deliveries hold or wait for them, so a stream of
    new origins (dynamic targets) does not grow the deliverer."""
    first, second = await target(), await target()
    config = async_route(first.url)
    config["routes"].append({**config["routes"][0], "name": "other",
                             "match": {"path_prefix": "/other"}, "target": second.url})  # fmt: skip
    hs: Stack = await stack(config)
    for n in range(4):
        await hs.data.post("/events" if n % 2 else "/other", data=b"%d" % n)
    await wait_for(lambda: len(first.seen) + len(second.seen) == 4)
    deliverer = hs.state.deliverer
    assert deliverer is not None
    await wait_for(lambda: len(deliverer.slots) == 0)


async def test_an_idle_deliverer_stops_sampling_and_looks_ever_less_often(
    stack: Any, target: Any
) -> None:
    """Once all is delivered and no call arrives: no pressure samples, a few looks at the
    empty queue a second (not 20); a local enqueue is still delivered at once."""
    app: Target = await target()
    hs: Stack = await stack(async_route(app.url))
    deliverer = hs.state.deliverer
    assert deliverer is not None
    assert hs.state.store is not None
    assert (await hs.data.post("/events", data=b"first")).status == 202
    await wait_for(lambda: len(app.seen) == 1)
    await wait_for(lambda: not deliverer.pressure.running, timeout_s=5)
    looks: list[float] = []
    lease = hs.state.store.lease

    async def counted(now: float, limit: int, lease_s: float) -> Any:
        looks.append(now)
        return await lease(now, limit, lease_s)

    hs.state.store.lease = counted  # type: ignore[method-assign]
    await asyncio.sleep(3.0)  # the pauses grow to 1 s within the first two
    assert len(looks) <= 6, looks
    assert not deliverer.pressure.running
    started = time.monotonic()
    assert (await hs.data.post("/events", data=b"second")).status == 202
    await wait_for(lambda: len(app.seen) == 2)
    assert time.monotonic() - started < 0.5  # woken, not found at the next look (1 s)
