"""Sending one request to a target under a hard deadline (SPEC §4).

`Upstream` owns the target connections: one `Client` for static targets, and one per
`allow_networks` set for dynamic targets, whose every address is checked by `netguard`
before a socket is opened. A client keeps a keep-alive pool per origin (`httpclient`).
The deadline covers connect, send and the whole answer; on expiry the exchange is
cancelled and its connection closed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from multidict import CIMultiDict

from hookshield.config.models import Limits, Network
from hookshield.errors import (
    LocalResourceError,
    TargetForbidden,
    Timeout,
    UpstreamError,
    UpstreamUnreachable,
)
from hookshield.headers import Pairs, RawPairs
from hookshield.httpclient import (
    AnswerBroken,
    AnswerLimits,
    AnswerTooLarge,
    Connection,
    ConnectionFailed,
    IdleBudget,
    LocalExhausted,
    Pool,
    RawAnswer,
    StaleConnection,
    pool_for,
)
from hookshield.netguard import ForbiddenAddress

_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


class UpstreamResponse:
    """A target's answer. Its header lines stay as received (`raw_headers`); `headers`
    decodes them on first use (the sync data plane passes them back without that)."""

    __slots__ = ("_headers", "body", "raw_headers", "status")

    def __init__(self, status: int, raw_headers: RawPairs, body: bytes) -> None:
        self.status, self.raw_headers, self.body = status, raw_headers, body
        self._headers: CIMultiDict[str] | None = None

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._headers is None:
            self._headers = CIMultiDict(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in self.raw_headers
            )
        return self._headers


class Client:
    """Keep-alive pools per origin, all under one address policy (None: any address)."""

    def __init__(self, allow: tuple[Network, ...] | None, owner: Upstream) -> None:
        self.allow, self.budget, self.watch = allow, owner.budget, owner.arm
        self.on_stale = owner.on_stale  # a stale pooled connection was replaced
        self.limits = _answer_limits(Limits())  # set by `Upstream.configure`
        self.pools: dict[str, Pool] = {}

    def pool(self, origin: str) -> Pool:
        pool = self.pools.get(origin)
        if pool is None:
            pool = self.pools[origin] = pool_for(origin, self.allow, self.budget)
            self.watch()  # the owner looks after idle pools from now on
        return pool

    def forget_idle(self, now: float, keepalive_s: float) -> None:
        """Drop the pools of origins unused for longer than `keepalive_s`."""
        for origin, pool in list(self.pools.items()):
            if not pool.idle and now - pool.last_used > keepalive_s:
                del self.pools[origin]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


class Upstream:
    """The clients; started and closed by the app lifecycle, shared across reloads. One
    budget of idle connections spans them all; a timer, armed while any pool exists,
    closes idle connections past their keep-alive time and drops pools of idle origins."""

    def __init__(
        self, limits: Limits | None = None, on_stale: Callable[[], None] = lambda: None
    ) -> None:
        self.budget, self.on_stale = IdleBudget(0, 0.0), on_stale
        self._clients: dict[tuple[Network, ...] | None, Client] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.configure(limits or Limits())

    def configure(self, limits: Limits) -> None:
        """The limits of a config in force: for every exchange and idle connection from now on."""
        self.limits = limits
        self.budget.limit = limits.max_idle_connections
        self.budget.keepalive_s = limits.upstream_keepalive_s
        for client in self._clients.values():
            client.limits = _answer_limits(limits)

    def client(self, allow: tuple[Network, ...] | None = None) -> Client:
        """The client for static targets (`allow` None), or for one `allow_networks` set."""
        client = self._clients.get(allow)
        if client is None:
            client = self._clients[allow] = Client(allow, self)
            client.limits = _answer_limits(self.limits)
        return client

    def arm(self) -> None:
        """Have the sweep look after the pools (a new pool calls this)."""
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._sweep_every_s(), self._sweep)

    def _sweep_every_s(self) -> float:
        return min(_SWEEP_S, self.budget.keepalive_s / 2)

    def _sweep(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        self.budget.expire(now)
        for client in self._clients.values():
            client.forget_idle(now, self.budget.keepalive_s)
        if any(client.pools for client in self._clients.values()):
            self.arm()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


_SWEEP_S = 1.0  # how often idle connections and pools are looked at, at most


def _answer_limits(limits: Limits) -> AnswerLimits:
    return AnswerLimits(
        limits.max_response_bytes, limits.max_response_header_bytes, limits.max_response_headers
    )


def encode_request(method: str, path: str, host: str, headers: Pairs, body: bytes) -> bytes:
    """The request's bytes: request line, `Host`, the given headers, `Content-Length`, body."""
    lines = [f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    if body or method not in _NO_BODY_METHODS:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1", "replace") + body


def _path(url: str, origin: str) -> str:
    """The origin-form request-target (RFC 9112 §3.2.1): path and query of `url`."""
    if not url.startswith(origin):
        raise ValueError(f"{url!r} is not under {origin!r}")  # resolvers build it so
    path = url[len(origin) :]
    return path if path.startswith("/") else "/" + path


async def send(
    client: Client,
    method: str,
    url: str,
    origin: str,
    headers: Pairs,
    body: bytes,
    timeout_s: float,
) -> UpstreamResponse:
    """One request, redirects not followed; raises `Timeout`, `UpstreamUnreachable`,
    `TargetForbidden`, `LocalResourceError`, or `UpstreamError` for an answer that broke
    off, was malformed or larger than the limits."""
    pool = client.pool(origin)
    request = encode_request(method, _path(url, origin), pool.host_header, headers, body)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        connection, raw = await _exchange(loop, client, pool, request, method, deadline)
    except BaseException as exc:
        error = _translated(exc, timeout_s, client.limits)
        if error is exc:
            raise
        raise error from exc
    pool.give_back(connection, loop.time())
    return UpstreamResponse(raw.status, raw.headers, raw.body)


async def _exchange(
    loop: asyncio.AbstractEventLoop,
    client: Client,
    pool: Pool,
    request: bytes,
    method: str,
    deadline: float,
) -> tuple[Connection, RawAnswer]:
    """On a pooled connection, or a new one; a pooled connection the target had closed
    before it answered a byte is replaced once, at once (SPEC §9)."""
    head, limits = method == "HEAD", client.limits
    connection = pool.take(loop.time())
    if connection is not None:
        try:
            return connection, await connection.exchange(loop, request, limits, head, deadline)
        except StaleConnection:
            client.on_stale()
    async with asyncio.timeout_at(deadline):
        connection = await pool.connect()
    return connection, await connection.exchange(loop, request, limits, head, deadline)


def _translated(exc: BaseException, timeout_s: float, limits: AnswerLimits) -> BaseException:
    """The SPEC error for a failed exchange; anything else (cancellation) as it is."""
    if isinstance(exc, TimeoutError):
        return Timeout(f"the target did not answer within {math.ceil(timeout_s * 1000)} ms")
    if isinstance(exc, ForbiddenAddress):
        return TargetForbidden(str(exc))
    if isinstance(exc, AnswerTooLarge):
        return UpstreamError(f"the target's answer is larger than {limits.body_bytes} bytes")
    if isinstance(exc, AnswerBroken):
        return UpstreamError(str(exc))
    if isinstance(exc, LocalExhausted):
        return LocalResourceError(str(exc), kind=exc.kind)
    if isinstance(exc, ConnectionFailed | OSError):
        return UpstreamUnreachable(f"the target could not be reached: {exc}")
    return exc
