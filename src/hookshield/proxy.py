"""The data plane handler: one platform request -> one target call -> one answer.

In order: route, read the body, rate limit, bulkhead, breaker, call the target (once more
on a connect error / 502 / 503 / 504 when the route allows a sync retry and the deadline
leaves time), classify the answer, and on failure the route's fallback or a SPEC error.
Every answer carries `X-Hookshield-Outcome` (SPEC §4) and produces one `request` log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from functools import partial

from multidict import CIMultiDict

from hookshield import logs
from hookshield.attempt import attempt
from hookshield.breaker import Breaker
from hookshield.errors import (
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
from hookshield.headers import RawPairs
from hookshield.limits import Bulkhead
from hookshield.message import Answer, Request
from hookshield.queue.base import Delivery, StoreUnavailable
from hookshield.queue.guard import StoreTimeout, enqueue_within
from hookshield.runtime import RoutePlan, State
from hookshield.upstream import UpstreamResponse, send

_SYNC_RETRY_STATUSES = frozenset({502, 503, 504})
_SYNC_RETRY_JITTER_S = (0.025, 0.25)
_SYNC_RETRY_MIN_LEFT_S = 0.05  # a retry must still have this long after its jitter


@dataclass(slots=True)
class Call:
    """One platform request on its way through a route."""

    request: Request
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


async def handle(state: State, request: Request) -> Answer:
    """The answer to one platform request (never raises: every failure is an answer)."""
    started = request.started
    request_id = request.headers.get("X-Request-ID") or new_request_id()
    runtime = state.runtime
    assert runtime is not None, "the data plane serves only after startup installed a runtime"
    plan: RoutePlan | None = None
    call: Call | None = None
    try:
        path, _, query = request.raw_path.partition("?")
        plan, remainder = runtime.router.match(path, request.method)
        if request.too_large:
            limit = runtime.config.max_body_bytes
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        deadline = started + deadline_s(plan, request)
        call = Call(request, request.body, remainder, query, request_id, deadline, state)
        response = await serve(plan, call)
    except ProxyError as exc:
        response = exc.to_answer(request_id)
    except Exception as exc:
        logs.event("internal_error", logging.ERROR, error=repr(exc), request_id=request_id)
        response = ProxyError("hookshield failed to handle the request").to_answer(request_id)
    if plan is not None and plan.bucket is not None:
        response.headers.update(plan.bucket.headers())
    _observe(state, plan, call, request, response, request_id, started)
    return response


def new_request_id() -> str:
    """A random version-4 UUID, from `random` (no system call, unlike `uuid.uuid4`)."""
    bits = random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
    digits = f"{bits:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))  # the version nibble and the variant's two bits
_UUID4_SET = (0x4 << 76) | (0x2 << 62)  # version 4, variant RFC 4122 (binary 10)


async def serve(plan: RoutePlan, call: Call) -> Answer:
    """Within the route's limits: queued (async) or the target's answer (sync); on a failure
    that has one, the route's fallback."""
    try:
        bulkhead = admit(plan)
        if plan.config.mode == "async":
            return await enqueue(plan, call)
        try:
            return await forward(plan, call)
        finally:
            if bulkhead is not None:
                bulkhead.leave()
    except ProxyError as exc:
        answer = await _fallback(plan, call, exc)
        if answer is None:
            raise
        return answer


async def _fallback(plan: RoutePlan, call: Call, error: ProxyError) -> Answer | None:
    """Cached, else static answer; with `queue: true` the call is also spooled (202 if no other)."""
    if plan.fallback is None or error.fallback_reason is None:
        return None
    key = cache_key(call.request.method, call.request.raw_path, call.body)
    answer = plan.fallback.answer(error.fallback_reason, key)
    if not plan.fallback.config.queue:
        return answer
    queued = await enqueue(plan, call)
    if answer is None:
        queued.outcome = f"fallback:{error.fallback_reason}"
        return queued
    return answer


async def enqueue(plan: RoutePlan, call: Call) -> Answer:
    """Store the call for background delivery; 202 only once the store acknowledged it."""
    header = plan.resolver.header
    url, origin = plan.resolver.url(
        call.remainder, call.query, call.request.headers.get(header) if header else None
    )
    delivery = Delivery(
        id=uuid.uuid4().hex, route=plan.config.name, url=url, origin=origin, method=call.request.method,
        headers=tuple(plan.headers.outbound(call.request.headers, [])), body=call.body,
        request_id=call.request_id, created_at=time.time(),
    )  # fmt: skip
    dedupe = call.request.headers.get("Idempotency-Key") or call.request.headers.get("X-Request-ID")
    if call.state.store is None:
        raise QueueUnavailable("the queue store is not open")
    try:  # within the route's time left, whatever the store does (SPEC §4)
        delivery_id, duplicate = await enqueue_within(
            call.state.store, delivery, dedupe, delivery.created_at, call.remaining_s()
        )
    except StoreTimeout as exc:
        raise QueueUnavailable(
            "the queue store did not answer in time; the call may still be delivered "
            "(a retry with the same Idempotency-Key or X-Request-ID is deduplicated)"
        ) from exc
    except StoreUnavailable as exc:
        raise QueueUnavailable("the queue store is unavailable; nothing was queued") from exc
    call.state.wake_deliverer()
    body = {"success": True, "queued": True, "id": delivery_id, "requestId": call.request_id}
    if duplicate:
        body["duplicate"] = True
    headers = CIMultiDict({"Content-Type": "application/json"})
    outcome = "duplicate" if duplicate else "queued"
    return Answer(202, headers, json.dumps(body).encode(), outcome=outcome)


def admit(plan: RoutePlan) -> Bulkhead | None:
    """Take a rate-limit token and, for a sync call, a bulkhead slot (returned, to be left)."""
    if plan.bucket is not None and not plan.bucket.take():
        raise RateLimited(
            "the route's rate limit is reached", retry_after_s=plan.bucket.retry_after_s()
        )
    if plan.bulkhead is None or plan.config.mode == "async":
        return None
    if not plan.bulkhead.enter():
        raise Overloaded(f"the route already has {plan.bulkhead.limit} calls in flight")
    return plan.bulkhead


async def forward(plan: RoutePlan, call: Call) -> Answer:
    header = plan.resolver.header
    header_value = call.request.headers.get(header) if header else None
    url, origin = plan.resolver.url(call.remainder, call.query, header_value)
    call.target = plan.target_label(origin)
    answer = await attempts(plan, call, url, origin, plan.breakers.get(origin))
    if answer.status >= 500 and not plan.config.pass_errors:
        raise UpstreamError(f"the target answered {answer.status}")
    if plan.fallback is not None:
        key = cache_key(call.request.method, call.request.raw_path, call.body)
        returned = plan.headers.returned(answer.headers)
        plan.fallback.remember(key, answer.status, returned, answer.body)
    passed = plan.headers.returned_lines(answer.raw_headers)
    result = Answer(answer.status, CIMultiDict(), answer.body, passed, "upstream")
    if call.request.method == "HEAD":  # the length a GET would have, as the target said (SPEC §9)
        result.length = declared_length(answer.raw_headers)
    return result


def declared_length(raw: RawPairs) -> int:
    """The `Content-Length` among a target's raw header lines; -1 when it sent none."""
    for name, value in raw:
        if len(name) == 14 and name.lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return -1


async def attempts(
    plan: RoutePlan, call: Call, url: str, origin: str, breaker: Breaker
) -> UpstreamResponse:
    """One attempt under the breaker (503 `CIRCUIT_OPEN` at once when it is open), and more
    while `retry.sync_attempts` and the deadline allow."""
    number = 1
    while True:
        ticket = breaker.acquire()
        if ticket is None:
            raise CircuitOpen("the target's circuit is open", retry_after_s=breaker.retry_after_s())
        try:
            sending = partial(_send, plan, call, url, origin)
            answer = await attempt(call.state, plan, origin, breaker, ticket, sending)
        except UpstreamUnreachable:
            if not await _retry_pause(plan, call, number):
                raise
        else:
            if answer.status not in _SYNC_RETRY_STATUSES or not await _retry_pause(
                plan, call, number
            ):
                return answer
        number += 1


async def _retry_pause(plan: RoutePlan, call: Call, attempt: int) -> bool:
    """Sleep a jittered pause and answer True when another attempt is allowed."""
    if attempt >= plan.config.retry.sync_attempts or not call.retry_safe:
        return False
    pause = random.uniform(*_SYNC_RETRY_JITTER_S)
    if call.remaining_s() - pause < _SYNC_RETRY_MIN_LEFT_S:
        return False
    await asyncio.sleep(pause)
    return True


def _send(plan: RoutePlan, call: Call, url: str, origin: str) -> Awaitable[UpstreamResponse]:
    """One attempt's sending: the platform's headers as the route's rules make them, with
    request id, remaining time and signature added."""
    remaining_s = call.remaining_s()
    extra = [
        ("X-Request-ID", call.request_id),
        ("X-Timeout-Ms", str(max(1, int(remaining_s * 1000)))),
    ]
    if plan.signer is not None:
        extra += plan.signer.sign(call.body, call.request_id, int(time.time()))
    headers = plan.headers.outbound(call.request.headers, extra)
    return send(plan.client, call.request.method, url, origin, headers, call.body, remaining_s)


def deadline_s(plan: RoutePlan, request: Request) -> float:
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


_OUTCOME_METRIC = {"upstream": "success", "fallback": "fallback", "error": "error"}


def _observe(
    state: State,
    plan: RoutePlan | None,
    call: Call | None,
    request: Request,
    response: Answer,
    request_id: str,
    started: float,
) -> None:
    """The request's metrics (outcome, fallback reason) and its one log line."""
    route = plan.config.name if plan else "-"
    outcome = response.outcome
    kind, _, reason = outcome.partition(":")
    state.metrics.request(route, _OUTCOME_METRIC.get(kind, kind))
    if kind == "fallback":
        state.metrics.fallback(route, reason)
    duration_ms = round((asyncio.get_running_loop().time() - started) * 1000, 2)
    target = call.target if call else "-"
    logs.requests.add(route, target, request.method, request.path, response.status, outcome,
                      duration_ms, request_id)  # fmt: skip
