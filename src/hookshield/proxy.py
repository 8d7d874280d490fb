"""The data plane handler: one platform request -> one target call -> one answer.

In order: route, read the body, rate limit, bulkhead, breaker, call the target (once more
on a connect error / 502 / 503 / 504 when the route allows a sync retry and the deadline
leaves time), classify the answer, and on failure the route's fallback or a SPEC error.
Every answer carries `X-Hookshield-Outcome` (SPEC §4) and produces one `request` log line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from hookshield import logs
from hookshield.attempt import attempt
from hookshield.breaker import Breaker
from hookshield.errors import (
    OUTCOME_HEADER,
    BadRequest,
    CircuitOpen,
    Overloaded,
    PayloadTooLarge,
    ProxyError,
    QueueUnavailable,
    RateLimited,
    UpstreamError,
    UpstreamUnreachable,
)
from hookshield.fallback import cache_key
from hookshield.headers import returned
from hookshield.queue.base import Delivery, StoreUnavailable
from hookshield.runtime import STATE, RoutePlan, State
from hookshield.upstream import UpstreamResponse, read_limited, send

_SYNC_RETRY_STATUSES = frozenset({502, 503, 504})
_SYNC_RETRY_JITTER_S = (0.025, 0.25)
_SYNC_RETRY_MIN_LEFT_S = 0.05  # a retry must still have this long after its jitter


@dataclass(slots=True)
class Call:
    """One platform request on its way through a route."""

    request: web.Request
    body: bytes
    remainder: str
    query: str
    request_id: str
    deadline: float  # loop time by which the platform gets its answer
    state: State
    target: str = "-"  # the target's metric label, once known

    def remaining_s(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()

    @property
    def retry_safe(self) -> bool:
        """The platform marked the call as safe to repeat (idempotency key or request id)."""
        headers = self.request.headers
        return "Idempotency-Key" in headers or "X-Request-ID" in headers


async def handle(request: web.Request) -> web.StreamResponse:
    started = asyncio.get_running_loop().time()
    request_id = request.headers.get("X-Request-ID") or str(uuid.uuid4())
    state = request.app[STATE]
    runtime = state.runtime
    assert runtime is not None, "the data plane serves only after startup installed a runtime"
    plan: RoutePlan | None = None
    call: Call | None = None
    try:
        path, _, query = request.raw_path.partition("?")
        plan, remainder = runtime.router.match(path, request.method)
        body = await read_body(request, runtime.config.max_body_bytes)
        deadline = started + deadline_s(plan, request)
        call = Call(request, body, remainder, query, request_id, deadline, state)
        response = await serve(plan, call)
    except ProxyError as exc:
        response = exc.to_response(request_id)
    if plan is not None and plan.bucket is not None:
        response.headers.update(plan.bucket.headers())
    _observe(state, plan, call, request, response, request_id, started)
    return response


async def serve(plan: RoutePlan, call: Call) -> web.Response:
    """The target's answer, or the route's fallback for a failure that has one."""
    try:
        return await limited(plan, call)
    except ProxyError as exc:
        answer = await _fallback(plan, call, exc)
        if answer is None:
            raise
        return answer


async def _fallback(plan: RoutePlan, call: Call, error: ProxyError) -> web.Response | None:
    """Cached, else static answer; with `queue: true` the call is also spooled (202 if no other)."""
    if plan.fallback is None or error.fallback_reason is None:
        return None
    key = cache_key(call.request.method, call.request.raw_path, call.body)
    answer = plan.fallback.answer(error.fallback_reason, key)
    if not plan.fallback.config.queue:
        return answer
    queued = await enqueue(plan, call)
    if answer is None:
        queued.headers[OUTCOME_HEADER] = f"fallback:{error.fallback_reason}"
        return queued
    return answer


async def enqueue(plan: RoutePlan, call: Call) -> web.Response:
    """Store the call for background delivery; 202 only once the store acknowledged it."""
    header = plan.resolver.header
    url, origin = plan.resolver.url(
        call.remainder, call.query, call.request.headers.get(header) if header else None
    )
    delivery = Delivery(
        id=uuid.uuid4().hex, route=plan.config.name, url=url, origin=origin, method=call.request.method,
        headers=tuple(plan.headers.outbound(call.request.headers, ()).items()), body=call.body,
        request_id=call.request_id, created_at=time.time(),
    )  # fmt: skip
    dedupe = call.request.headers.get("Idempotency-Key") or call.request.headers.get("X-Request-ID")
    if call.state.store is None:
        raise QueueUnavailable("the queue store is not open")
    try:
        delivery_id, duplicate = await call.state.store.enqueue(
            delivery, dedupe, delivery.created_at
        )
    except StoreUnavailable as exc:
        raise QueueUnavailable("the queue store is unavailable; nothing was queued") from exc
    call.state.wake_deliverer()
    body = {"success": True, "queued": True, "id": delivery_id, "requestId": call.request_id}
    if duplicate:
        body["duplicate"] = True
    response = web.json_response(body, status=202)
    response.headers[OUTCOME_HEADER] = "duplicate" if duplicate else "queued"
    return response


async def limited(plan: RoutePlan, call: Call) -> web.Response:
    """Apply the rate limit; then queue (async routes) or apply the bulkhead and forward."""
    if plan.bucket is not None and not plan.bucket.take():
        raise RateLimited(
            "the route's rate limit is reached", retry_after_s=plan.bucket.retry_after_s()
        )
    if plan.config.mode == "async":
        return await enqueue(plan, call)
    if plan.bulkhead is None:
        return await forward(plan, call)
    if not plan.bulkhead.enter():
        raise Overloaded(f"the route already has {plan.bulkhead.limit} calls in flight")
    try:
        return await forward(plan, call)
    finally:
        plan.bulkhead.leave()


async def forward(plan: RoutePlan, call: Call) -> web.Response:
    header = plan.resolver.header
    header_value = call.request.headers.get(header) if header else None
    url, origin = plan.resolver.url(call.remainder, call.query, header_value)
    call.target = plan.target_label(origin)
    answer = await attempts(plan, call, url, origin, plan.breakers.get(origin))
    if answer.status >= 500 and not plan.config.pass_errors:
        raise UpstreamError(f"the target answered {answer.status}")
    headers = returned(answer.headers)
    if plan.fallback is not None:
        key = cache_key(call.request.method, call.request.raw_path, call.body)
        plan.fallback.remember(key, answer.status, headers, answer.body)
    response = web.Response(status=answer.status, headers=headers, body=answer.body)
    response.headers[OUTCOME_HEADER] = "upstream"
    return response


async def attempts(
    plan: RoutePlan, call: Call, url: str, origin: str, breaker: Breaker
) -> UpstreamResponse:
    """One attempt, and more while `retry.sync_attempts` and the deadline allow."""
    attempt = 1
    while True:
        try:
            answer = await attempt_once(plan, call, url, origin, breaker)
        except UpstreamUnreachable:
            if not await _retry_pause(plan, call, attempt):
                raise
        else:
            if answer.status not in _SYNC_RETRY_STATUSES or not await _retry_pause(
                plan, call, attempt
            ):
                return answer
        attempt += 1


async def _retry_pause(plan: RoutePlan, call: Call, attempt: int) -> bool:
    """Sleep a jittered pause and answer True when another attempt is allowed."""
    if attempt >= plan.config.retry.sync_attempts or not call.retry_safe:
        return False
    pause = random.uniform(*_SYNC_RETRY_JITTER_S)
    if call.remaining_s() - pause < _SYNC_RETRY_MIN_LEFT_S:
        return False
    await asyncio.sleep(pause)
    return True


async def attempt_once(
    plan: RoutePlan, call: Call, url: str, origin: str, breaker: Breaker
) -> UpstreamResponse:
    """One call to the target under its breaker, or 503 `CIRCUIT_OPEN` at once."""
    ticket = breaker.acquire()
    if ticket is None:
        raise CircuitOpen("the target's circuit is open", retry_after_s=breaker.retry_after_s())
    return await attempt(call.state, plan, origin, breaker, ticket, _send(plan, call, url))


async def _send(plan: RoutePlan, call: Call, url: str) -> UpstreamResponse:
    remaining_s = call.remaining_s()
    extra = [
        ("X-Request-ID", call.request_id),
        ("X-Timeout-Ms", str(max(1, int(remaining_s * 1000)))),
    ]
    if plan.signer is not None:
        extra += plan.signer.sign(call.body, call.request_id, int(time.time()))
    headers = plan.headers.outbound(call.request.headers, extra)
    limit = call.state.config.max_response_bytes
    return await send(
        plan.session, call.request.method, url, headers, call.body, remaining_s, limit
    )


def deadline_s(plan: RoutePlan, request: web.Request) -> float:
    """The route's timeout, shortened by the platform's own `X-Timeout-Ms` if it sent one."""
    asked = request.headers.get("X-Timeout-Ms")
    if asked is None:
        return plan.timeout_s
    try:
        asked_s = float(asked) / 1000.0
    except ValueError:
        raise BadRequest("X-Timeout-Ms must be a number of milliseconds") from None
    if not asked_s > 0:
        raise BadRequest("X-Timeout-Ms must be > 0")
    return min(plan.timeout_s, asked_s)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit`."""
    too_large = partial(PayloadTooLarge, f"the body is larger than {limit} bytes")
    return await read_limited(request.content, request.content_length, limit, too_large)


_OUTCOME_METRIC = {"upstream": "success", "fallback": "fallback", "error": "error"}


def _observe(
    state: State,
    plan: RoutePlan | None,
    call: Call | None,
    request: web.Request,
    response: web.StreamResponse,
    request_id: str,
    started: float,
) -> None:
    """The request's metrics (outcome, fallback reason) and its one log line."""
    route = plan.config.name if plan else "-"
    outcome = response.headers.get(OUTCOME_HEADER, "")
    kind, _, reason = outcome.partition(":")
    state.metrics.request(route, _OUTCOME_METRIC.get(kind, kind))
    if kind == "fallback":
        state.metrics.fallback(route, reason)
    logs.event(
        "request",
        logging.INFO,
        route=route,
        target=call.target if call else "-",
        method=request.method,
        path=request.path,
        status=response.status,
        outcome=outcome,
        duration_ms=round((asyncio.get_running_loop().time() - started) * 1000, 2),
        request_id=request_id,
    )
