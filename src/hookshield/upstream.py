"""Sending one request to a target under a hard deadline (SPEC §4).

`Upstream` owns the HTTP client sessions: one shared, keep-alive pooled session for static
targets, and one per `allow_networks` set for dynamic targets whose sockets pass through
`netguard`. The deadline covers connect, send and the whole response body; on expiry
the request is cancelled and its connection dropped.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from hookshield.config.models import Network
from hookshield.errors import TargetForbidden, Timeout, UpstreamError, UpstreamUnreachable
from hookshield.netguard import ForbiddenAddress, guarded_socket_factory

DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
_READ_CHUNK = 64 * 1024
# The platform's own headers are forwarded as they are; the client adds none of its own.
_SKIP_AUTO = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def _session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # bodies pass through byte for byte, Content-Encoding kept
        cookie_jar=aiohttp.DummyCookieJar(),  # one target's cookies never reach another
        timeout=aiohttp.ClientTimeout(total=None),  # the deadline is ours, see `send`
        skip_auto_headers=_SKIP_AUTO,
    )


class Upstream:
    """The client sessions; started and closed by the app lifecycle, shared across reloads."""

    def __init__(self, pool_size: int = 0, keepalive_s: float = 30.0) -> None:
        self._pool_size, self._keepalive_s = pool_size, keepalive_s
        self._shared: aiohttp.ClientSession | None = None
        self._guarded: dict[tuple[Network, ...], aiohttp.ClientSession] = {}

    def _connector(self, allow: tuple[Network, ...] | None) -> aiohttp.TCPConnector:
        return aiohttp.TCPConnector(
            limit=self._pool_size,
            keepalive_timeout=self._keepalive_s,
            socket_factory=None if allow is None else guarded_socket_factory(allow),
        )

    def shared(self) -> aiohttp.ClientSession:
        if self._shared is None:
            self._shared = _session(self._connector(None))
        return self._shared

    def guarded(self, allow: tuple[Network, ...]) -> aiohttp.ClientSession:
        session = self._guarded.get(allow)
        if session is None:
            session = self._guarded[allow] = _session(self._connector(allow))
        return session

    async def close(self) -> None:
        sessions = [*self._guarded.values(), *([self._shared] if self._shared else [])]
        self._shared, self._guarded = None, {}
        await asyncio.gather(*(s.close() for s in sessions))


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: CIMultiDict[str],
    body: bytes,
    timeout_s: float,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> UpstreamResponse:
    """One request, redirects not followed; raises `Timeout`, `UpstreamUnreachable`, or
    `UpstreamError` for an answer larger than `max_response_bytes`."""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.request(
                method, url, headers=headers, data=body or None, allow_redirects=False
            ) as response:
                too_large = partial(
                    UpstreamError, f"the target's answer is larger than {max_response_bytes} bytes"
                )
                data = await read_limited(
                    response.content, response.content_length, max_response_bytes, too_large
                )
                return UpstreamResponse(response.status, response.headers, data)
    except TimeoutError as exc:
        raise Timeout(f"the target did not answer within {math.ceil(timeout_s * 1000)} ms") from exc
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, ForbiddenAddress):
            raise TargetForbidden(str(exc.os_error)) from exc
        raise UpstreamUnreachable(f"the target could not be reached: {_reason(exc)}") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise UpstreamUnreachable(f"the target could not be reached: {_reason(exc)}") from exc


async def read_limited(
    stream: aiohttp.StreamReader, length: int | None, limit: int, too_large: Callable[[], Exception]
) -> bytes:
    """A whole body (a request's or a response's), refused with `too_large()` as soon as it is
    known to exceed `limit` bytes: from its declared length, or while it streams in."""
    if length is not None and length > limit:
        raise too_large()
    chunks, size = [], 0
    async for chunk in stream.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
