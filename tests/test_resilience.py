"""Breakers, fallbacks, limits and health checks end to end, with real short timeouts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from tests.conftest import Target, wait_for


class Switch:
    """A target whose answer the test changes: a status, and an optional delay."""

    def __init__(self, status: int = 200, delay_s: float = 0.0) -> None:
        self.status, self.delay_s = status, delay_s

    async def __call__(self, request: web.Request) -> web.Response:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.json_response({"status": self.status}, status=self.status)


def route(url: str, name: str = "hook", **extra: Any) -> dict[str, Any]:
    return {"name": name, "match": {"path_prefix": f"/{name}"}, "target": url, **extra}


BREAKER = {"failure_threshold": 5, "recovery_timeout_s": 0.3, "success_threshold": 3}


async def post(client: Any, path: str = "/hook", **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    resp = await client.post(path, data=b"{}", **kwargs)
    return resp.status, await resp.json(), resp.headers


async def test_breaker_opens_answers_fast_recovers_and_backs_off(proxy: Any, target: Any) -> None:
    """5 x 500 open it; the 6th is 503 CIRCUIT_OPEN fast with Retry-After and no target call;
    3 probes close it; a failed probe re-opens it for longer than before."""
    switch = Switch(500)
    app: Target = await target(switch)
    client = await proxy({"routes": [route(app.url, breaker=BREAKER)]})
    for _ in range(5):
        assert (await post(client))[0] == 502
    started = time.monotonic()
    status, body, headers = await post(client)
    assert (status, body["code"]) == (503, "CIRCUIT_OPEN")
    assert time.monotonic() - started < 0.1
    assert headers["Retry-After"] == "1"
    assert headers["X-Hookshield-Outcome"] == "error:CIRCUIT_OPEN"
    assert len(app.seen) == 5

    await asyncio.sleep(0.32)
    switch.status = 200
    for _ in range(3):
        assert (await post(client))[0] == 200
    assert len(app.seen) == 8  # closed again: every call reaches the target
    for _ in range(5):
        await post(client)
    switch.status = 500
    for _ in range(5):
        await post(client)
    await asyncio.sleep(0.32)
    assert (await post(client))[0] == 502  # the half-open probe fails: re-opened
    await asyncio.sleep(0.32)  # the base recovery time has passed...
    seen = len(app.seen)
    assert (await post(client))[1]["code"] == "CIRCUIT_OPEN"  # ...but this recovery is longer
    assert len(app.seen) == seen


async def test_half_open_admits_exactly_one_of_twenty(proxy: Any, target: Any) -> None:
    """20 concurrent calls in HALF_OPEN: exactly 1 reaches the target, 19 are answered open."""
    switch = Switch(500)
    app: Target = await target(switch)
    config = {**BREAKER, "failure_threshold": 2}
    client = await proxy({"routes": [route(app.url, breaker=config)]})
    for _ in range(2):
        await post(client)
    await asyncio.sleep(0.32)
    switch.status, switch.delay_s = 200, 0.2
    results = await asyncio.gather(*(post(client) for _ in range(20)))
    codes = sorted(status for status, _, _ in results)
    assert codes == [200] + [503] * 19
    assert len(app.seen) == 3


async def test_breakers_are_independent_per_target(proxy: Any, target: Any) -> None:
    """One route's failing target opens its breaker; another route's target is unaffected."""
    bad, good = await target(Switch(500)), await target(Switch(200))
    client = await proxy(
        {
            "routes": [
                route(bad.url, "bad", breaker=BREAKER),
                route(good.url, "good", breaker=BREAKER),
            ]
        }
    )
    for _ in range(6):
        await post(client, "/bad")
    assert (await post(client, "/bad"))[1]["code"] == "CIRCUIT_OPEN"
    assert (await post(client, "/good"))[0] == 200


async def test_static_fallback_on_timeout_and_on_open_circuit(proxy: Any, target: Any) -> None:
    """A timeout and then an open circuit both get the static fallback with their reason."""
    app = await target(Switch(200, delay_s=1.0))
    fallback = {"response": {"status": 200, "body": {"success": False, "fallback": "random"}}}
    breaker = {**BREAKER, "failure_threshold": 1}
    client = await proxy(
        {"routes": [route(app.url, timeout_ms=100, fallback=fallback, breaker=breaker)]}
    )
    status, body, headers = await post(client)
    assert (status, body) == (200, {"success": False, "fallback": "random"})
    assert headers["X-Hookshield-Outcome"] == "fallback:timeout"
    status, body, headers = await post(client)
    assert headers["X-Hookshield-Outcome"] == "fallback:circuit_open"
    assert len(app.seen) == 1


async def test_cached_fallback_serves_last_success_for_same_key(proxy: Any, target: Any) -> None:
    """After a success for one request, a failure serves it again; another key gets static."""

    async def echo(request: web.Request) -> web.Response:
        if switch.status != 200:
            return web.Response(status=switch.status)
        return web.json_response({"valid": True, "q": request.query.get("q")})

    switch = Switch(200)
    app = await target(echo)
    fallback = {"cached": {"ttl_s": 60}, "response": {"status": 200, "body": {"valid": False}}}
    client = await proxy({"routes": [route(app.url, fallback=fallback)]})
    assert (await post(client, "/hook?q=1"))[1] == {"valid": True, "q": "1"}
    switch.status = 503
    _status, body, headers = await post(client, "/hook?q=1")
    assert (body, headers["X-Hookshield-Outcome"]) == (
        {"valid": True, "q": "1"},
        "fallback:upstream_error",
    )
    assert (await post(client, "/hook?q=2"))[1] == {"valid": False}


async def test_rate_limit_passes_burst_and_answers_429(proxy: Any, target: Any) -> None:
    """{per_second: 5, burst: 5}: of 20 simultaneous calls at most 6 pass, the rest 429."""
    app = await target(Switch(200))
    client = await proxy({"routes": [route(app.url, rate_limit={"per_second": 5, "burst": 5})]})
    results = await asyncio.gather(*(post(client) for _ in range(20)))
    passed = [r for r in results if r[0] == 200]
    limited = [r for r in results if r[0] == 429]
    assert 5 <= len(passed) <= 6
    assert len(passed) + len(limited) == 20
    for _, body, headers in limited:
        assert body["code"] == "RATE_LIMITED"
        assert int(headers["Retry-After"]) >= 1
    for _, _, headers in results:
        assert headers["X-RateLimit-Limit"] == "5"
        assert "X-RateLimit-Remaining" in headers
        assert "X-RateLimit-Reset" in headers


async def test_bulkhead_sheds_overflow_at_once(proxy: Any, target: Any) -> None:
    """max_concurrent 4, 12 calls to a 500 ms target: 4 reach it, 8 get 503 OVERLOADED fast."""
    app = await target(Switch(200, delay_s=0.5))
    client = await proxy({"routes": [route(app.url, max_concurrent=4)]})

    async def timed() -> tuple[int, str, float]:
        started = time.monotonic()
        status, body, _ = await post(client)
        return status, body.get("code", ""), time.monotonic() - started

    results = await asyncio.gather(*(timed() for _ in range(12)))
    overloaded = [r for r in results if r[1] == "OVERLOADED"]
    assert len(overloaded) == 8
    assert all(status == 503 and elapsed < 0.25 for status, _, elapsed in overloaded)
    assert sum(r[0] == 200 for r in results) == 4
    assert len(app.seen) == 4


async def test_client_errors_pass_through_and_never_trip(proxy: Any, target: Any) -> None:
    """404s and 400s are the target's answer: passed back, breaker stays closed."""
    switch = Switch(404)
    app = await target(switch)
    client = await proxy({"routes": [route(app.url, breaker={**BREAKER, "failure_threshold": 2})]})
    for status in (404, 400, 404, 400, 404):
        switch.status = status
        resp = await client.post("/hook", data=b"{}")
        assert (resp.status, resp.headers["X-Hookshield-Outcome"]) == (status, "upstream")
    switch.status = 200
    assert (await post(client))[0] == 200
    assert len(app.seen) == 6


async def test_health_check_opens_breaker_without_traffic(proxy: Any, target: Any) -> None:
    """A target whose /health fails 3 times has its breaker opened before any platform call."""
    health_calls: list[str] = []

    async def sick(request: web.Request) -> web.Response:
        if request.path == "/health":
            health_calls.append(request.path)
            return web.Response(status=503)
        return web.Response(text="ok")

    app = await target(sick)
    check = {"path": "/health", "interval_s": 0.05, "unhealthy_threshold": 3}
    client = await proxy(
        {
            "routes": [
                route(app.url, breaker={**BREAKER, "recovery_timeout_s": 30}, health_check=check)
            ]
        }
    )
    await wait_for(lambda: len(health_calls) >= 4)  # the 3rd failure has been judged
    status, body, _ = await post(client)
    assert (status, body["code"]) == (503, "CIRCUIT_OPEN")
    assert [s.path_qs for s in app.seen if s.path_qs != "/health"] == []


async def test_sync_retry_only_with_request_id_and_time_left(proxy: Any, target: Any) -> None:
    """sync_attempts 2: a 503 then 200 succeeds when the platform sent X-Request-ID."""
    answers = [503, 200, 503, 200]

    async def flaky(request: web.Request) -> web.Response:
        return web.Response(status=answers.pop(0))

    app = await target(flaky)
    client = await proxy({"routes": [route(app.url, retry={"sync_attempts": 2}, timeout_ms=2000)]})
    resp = await client.post("/hook", headers={"X-Request-ID": "r-1"})
    assert resp.status == 200
    assert [s.headers["X-Request-ID"] for s in app.seen] == ["r-1", "r-1"]
    resp = await client.post("/hook")  # no idempotency key, no request id: not retried
    assert resp.status == 502
    assert len(app.seen) == 3


async def test_fallback_reasons_for_limits_and_unreachable(proxy: Any, target: Any) -> None:
    """Rate-limited and unreachable calls get the static fallback, each with its reason."""
    from tests.conftest import free_port

    app = await target(Switch(200))
    fallback = {"response": {"status": 202, "body": "later"}}
    client = await proxy(
        {
            "routes": [
                route(
                    app.url, "limited", rate_limit={"per_second": 1, "burst": 1}, fallback=fallback
                ),
                route(f"http://127.0.0.1:{free_port()}", "down", fallback=fallback),
            ]
        }
    )
    outcomes = [(await client.post("/limited")).headers["X-Hookshield-Outcome"] for _ in range(2)]
    assert outcomes == ["upstream", "fallback:rate_limited"]
    down = await client.post("/down")
    assert (down.status, await down.text()) == (202, "later")
    assert down.headers["X-Hookshield-Outcome"] == "fallback:upstream_unreachable"


async def test_admin_breaker_reset_closes_the_route_breakers(stack: Any, target: Any) -> None:
    """POST /admin/breakers/{route}/reset closes an open breaker; unknown routes are 404."""
    switch = Switch(500)
    app = await target(switch)
    hs = await stack(
        {"routes": [route(app.url, breaker={"failure_threshold": 1, "recovery_timeout_s": 60})]}
    )
    await post(hs.data)
    assert (await post(hs.data))[1]["code"] == "CIRCUIT_OPEN"
    resp = await hs.admin.post("/admin/breakers/hook/reset")
    assert (resp.status, (await resp.json())["reset"]) == (200, 1)
    switch.status = 200
    assert (await post(hs.data))[0] == 200
    assert (await hs.admin.post("/admin/breakers/nope/reset")).status == 404
