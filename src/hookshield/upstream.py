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

from multidict import CIMultiDict

from hookshield.config.models import Network
from hookshield.errors import TargetForbidden, Timeout, UpstreamError, UpstreamUnreachable
from hookshield.headers import Pairs, RawPairs
from hookshield.httpclient import AnswerTooLarge, Connection, ConnectionFailed, Pool, pool_for
from hookshield.netguard import ForbiddenAddress

DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
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

    def __init__(self, allow: tuple[Network, ...] | None, keepalive_s: float) -> None:
        self.allow, self.keepalive_s = allow, keepalive_s
        self.pools: dict[str, Pool] = {}

    def pool(self, origin: str) -> Pool:
        pool = self.pools.get(origin)
        if pool is None:
            pool = self.pools[origin] = pool_for(origin, self.allow, self.keepalive_s)
        return pool

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


class Upstream:
    """The clients; started and closed by the app lifecycle, shared across reloads."""

    def __init__(self, keepalive_s: float = 30.0) -> None:
        self._keepalive_s = keepalive_s
        self._clients: dict[tuple[Network, ...] | None, Client] = {}

    def client(self, allow: tuple[Network, ...] | None = None) -> Client:
        """The client for static targets (`allow` None), or for one `allow_networks` set."""
        client = self._clients.get(allow)
        if client is None:
            client = self._clients[allow] = Client(allow, self._keepalive_s)
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def encode_request(method: str, path: str, host: str, headers: Pairs, body: bytes) -> bytes:
    """The request's bytes: request line, `Host`, the given headers, `Content-Length`, body."""
    lines = [f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    if body or method not in _NO_BODY_METHODS:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1", "replace") + body


def _path(url: str, origin: str) -> str:
    path = url[len(origin) :] if url.startswith(origin) else url
    return path if path.startswith("/") else "/" + path


async def send(
    client: Client,
    method: str,
    url: str,
    origin: str,
    headers: Pairs,
    body: bytes,
    timeout_s: float,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> UpstreamResponse:
    """One request, redirects not followed; raises `Timeout`, `UpstreamUnreachable`,
    `TargetForbidden`, or `UpstreamError` for an answer larger than `max_response_bytes`."""
    pool = client.pool(origin)
    request = encode_request(method, _path(url, origin), pool.host_header, headers, body)
    loop = asyncio.get_running_loop()
    connection: Connection | None = None
    now = loop.time()
    deadline = now + timeout_s
    try:
        connection = pool.take(now)
        if connection is None:
            async with asyncio.timeout_at(deadline):
                connection = await pool.connect()
        head = method == "HEAD"
        raw = await connection.exchange(loop, request, max_response_bytes, head, deadline)
    except BaseException as exc:
        if connection is not None:
            connection.close()
        error = _translated(exc, timeout_s, max_response_bytes)
        if error is exc:
            raise
        raise error from exc
    pool.give_back(connection, loop.time())
    return UpstreamResponse(raw.status, raw.headers, raw.body)


def _translated(exc: BaseException, timeout_s: float, limit: int) -> BaseException:
    """The SPEC error for a failed exchange; anything else (cancellation) as it is."""
    if isinstance(exc, TimeoutError):
        return Timeout(f"the target did not answer within {math.ceil(timeout_s * 1000)} ms")
    if isinstance(exc, ForbiddenAddress):
        return TargetForbidden(str(exc))
    if isinstance(exc, AnswerTooLarge):
        return UpstreamError(f"the target's answer is larger than {limit} bytes")
    if isinstance(exc, ConnectionFailed | OSError):
        return UpstreamUnreachable(f"the target could not be reached: {exc}")
    return exc
