"""A small HTTP/1.1 client for target calls: an asyncio protocol on llhttp (`httptools`)
and a keep-alive pool per origin.

Built for one job: send a request whose body is already in memory, and read one whole
answer under a size limit. No redirects, no cookies, no decompression: bytes pass through.
Each connection carries one request at a time. A connection goes back to its pool only
after a complete answer that allows keep-alive; a connection the target half-closed
(EOF while idle) or left idle longer than `keepalive_s` is dropped, never reused. A
cancelled or failed exchange closes its connection. Addresses are resolved here and, for
a guarded client, each is checked by `netguard` before a socket is opened to it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import cast

import httptools
from yarl import URL

from hookshield.config.models import Network
from hookshield.netguard import ForbiddenAddress, is_allowed

Headers = list[tuple[bytes, bytes]]
_MAX_IDLE_PER_ORIGIN = 256


class ConnectionFailed(Exception):
    """The target could not be connected to, or the connection broke before a whole answer."""


class AnswerTooLarge(Exception):
    """The answer's body is larger than the caller's limit."""


@dataclass(slots=True)
class RawAnswer:
    status: int
    headers: Headers
    body: bytes


class Connection(asyncio.Protocol):
    """One keep-alive connection to a target; one exchange at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[RawAnswer] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset(0, False)

    def _reset(self, limit: int, head: bool) -> None:
        self.limit, self.head, self.size, self.complete = limit, head, 0, False
        self.too_large = False
        self.headers: Headers = []
        self.chunks: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:  # also wraps what a callback raised
            if self.too_large:
                self._fail(AnswerTooLarge())
            else:
                self._fail(ConnectionFailed(f"the target's answer is not valid HTTP: {exc}"))

    def eof_received(self) -> bool:
        self.closed = True
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headers_done and not self._framed():
            self._finish()  # a body delimited by the end of the connection
        else:
            self._fail(ConnectionFailed("the target closed the connection before answering"))

    # llhttp callbacks
    headers_done = False

    def on_message_begin(self) -> None:
        self.headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        length = self.parser.get_status_code() // 100 != 1 and _content_length(self.headers)
        if length and length > self.limit:
            self._refuse()
        if self.head:
            self._finish(reusable=False)  # llhttp would wait for a body a HEAD answer lacks

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.limit:
            self._refuse()
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() // 100 == 1:  # 100 Continue and friends: not the answer
            self.headers, self.headers_done = [], False
            return
        self._finish(reusable=self.parser.should_keep_alive())

    # the exchange
    def _refuse(self) -> None:
        """Stop parsing an answer over the size limit (the parser re-raises this wrapped)."""
        self.too_large = True
        raise AnswerTooLarge()

    def _framed(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" in names or b"transfer-encoding" in names

    def _finish(self, reusable: bool = False) -> None:
        waiter, self.waiter = self.waiter, None
        self.complete = reusable
        if waiter is not None and not waiter.done():
            status = self.parser.get_status_code()
            waiter.set_result(RawAnswer(status, self.headers, b"".join(self.chunks)))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        request: bytes,
        limit: int,
        head: bool,
        deadline: float,
    ) -> RawAnswer:
        """Send `request`; the whole answer, or `TimeoutError` at loop time `deadline`."""
        assert self.transport is not None
        assert self.waiter is None
        self._reset(limit, head)
        waiter: asyncio.Future[RawAnswer] = loop.create_future()
        self.waiter = waiter
        timer = loop.call_at(deadline, self._fail, TimeoutError())
        self.transport.write(request)
        try:
            return await waiter
        finally:
            timer.cancel()


def _content_length(headers: Headers) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


@dataclass(slots=True)
class Pool:
    """Idle connections to one origin, newest last."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    host_header: str
    allow: tuple[Network, ...] | None
    keepalive_s: float
    idle: list[Connection] = field(default_factory=list)

    def take(self, now: float) -> Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_s:
                return connection
            connection.close()
        return None

    def give_back(self, connection: Connection, now: float) -> None:
        if connection.closed or not connection.complete or len(self.idle) >= _MAX_IDLE_PER_ORIGIN:
            connection.close()
            return
        connection.idle_since = now
        self.idle.append(connection)

    async def connect(self) -> Connection:
        """A new connection to the first address of the host that is allowed and answers."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectionFailed(f"cannot resolve {self.host}: {exc.strerror or exc}") from exc
        errors: list[OSError] = []
        for family, _, _, _, sockaddr in infos:
            address = str(sockaddr[0]).split("%", 1)[0]
            if self.allow is not None and not is_allowed(ip_address(address), self.allow):
                errors.append(ForbiddenAddress())
                continue
            try:
                return await self._open(loop, family, sockaddr)
            except OSError as exc:
                errors.append(exc)
        if errors and all(isinstance(e, ForbiddenAddress) for e in errors):
            raise ForbiddenAddress()
        reason = errors[-1].strerror or str(errors[-1]) if errors else "no address"
        raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {reason}")

    async def _open(
        self, loop: asyncio.AbstractEventLoop, family: int, sockaddr: tuple[object, ...]
    ) -> Connection:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, sockaddr)
            hostname = self.host if self.tls else None
            _, connection = await loop.create_connection(
                Connection, sock=sock, ssl=self.tls, server_hostname=hostname
            )
        except BaseException:
            sock.close()
            raise
        return connection

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for connection in idle:
            connection.close()


_TLS: list[ssl.SSLContext] = []


def _tls_context() -> ssl.SSLContext:
    """One verifying client context for every https target (built on first use)."""
    if not _TLS:
        _TLS.append(ssl.create_default_context())
    return _TLS[0]


def pool_for(origin: str, allow: tuple[Network, ...] | None, keepalive_s: float) -> Pool:
    url = URL(origin)
    host, port, raw_host = url.host, url.port, url.raw_host
    assert host is not None, origin
    assert port is not None, origin
    assert raw_host is not None, origin
    tls = _tls_context() if url.scheme == "https" else None
    if ":" in raw_host:  # an IPv6 literal
        raw_host = f"[{raw_host}]"
    host_header = raw_host if port == (443 if tls else 80) else f"{raw_host}:{port}"
    return Pool(host, port, tls, host_header, allow, keepalive_s)
