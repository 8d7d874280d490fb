"""The data plane handler: one platform request -> one target call -> one answer.

Every answer carries `X-Hookshield-Outcome` (SPEC §4) and produces one `request` log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from aiohttp import web

from hookshield import logs
from hookshield.errors import (
    OUTCOME_HEADER,
    BadRequest,
    PayloadTooLarge,
    ProxyError,
    QueueUnavailable,
    UpstreamError,
)
from hookshield.headers import returned
from hookshield.runtime import STATE, RoutePlan
from hookshield.upstream import send

_READ_CHUNK = 64 * 1024


async def handle(request: web.Request) -> web.StreamResponse:
    started = asyncio.get_running_loop().time()
    request_id = request.headers.get("X-Request-ID") or str(uuid.uuid4())
    runtime = request.app[STATE].runtime
    assert runtime is not None, "the data plane serves only after startup installed a runtime"
    route = "-"
    try:
        path, _, query = request.raw_path.partition("?")
        plan, remainder = runtime.router.match(path, request.method)
        route = plan.config.name
        body = await read_body(request, runtime.config.max_body_bytes)
        response = await forward(plan, request, body, remainder, query, request_id, started)
    except ProxyError as exc:
        response = exc.to_response(request_id)
    _log(request, route, response, request_id, started)
    return response


async def forward(
    plan: RoutePlan,
    request: web.Request,
    body: bytes,
    remainder: str,
    query: str,
    request_id: str,
    started: float,
) -> web.Response:
    if plan.config.mode == "async":
        raise QueueUnavailable("async delivery is not available in this version of hookshield")
    budget_s = deadline_s(plan, request)
    header_value = request.headers.get(plan.resolver.header) if plan.resolver.header else None
    url, _origin = plan.resolver.url(remainder, query, header_value)
    remaining_s = budget_s - (asyncio.get_running_loop().time() - started)
    extra = [("X-Request-ID", request_id), ("X-Timeout-Ms", str(max(1, int(remaining_s * 1000))))]
    if plan.signer is not None:
        extra += plan.signer.sign(body, request_id, int(time.time()))
    headers = plan.headers.outbound(request.headers, extra)
    answer = await send(plan.session, request.method, url, headers, body, remaining_s)
    if answer.status >= 500 and not plan.config.pass_errors:
        raise UpstreamError(f"the target answered {answer.status}")
    response = web.Response(
        status=answer.status, headers=returned(answer.headers), body=answer.body
    )
    response.headers[OUTCOME_HEADER] = "upstream"
    return response


def deadline_s(plan: RoutePlan, request: web.Request) -> float:
    """The route's timeout, shortened by the platform's own `X-Timeout-Ms` if it sent one."""
    asked = request.headers.get("X-Timeout-Ms")
    if asked is None:
        return plan.timeout_s
    try:
        asked_s = float(asked) / 1000.0
    except ValueError:
        raise BadRequest(f"X-Timeout-Ms must be a number of milliseconds, got {asked!r}") from None
    if not asked_s > 0:
        raise BadRequest(f"X-Timeout-Ms must be > 0, got {asked!r}")
    return min(plan.timeout_s, asked_s)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit`."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _log(
    request: web.Request, route: str, response: web.StreamResponse, request_id: str, started: float
) -> None:
    logs.event(
        "request",
        logging.INFO,
        route=route,
        method=request.method,
        path=request.path,
        status=response.status,
        outcome=response.headers.get(OUTCOME_HEADER),
        duration_ms=round((asyncio.get_running_loop().time() - started) * 1000, 2),
        request_id=request_id,
    )
