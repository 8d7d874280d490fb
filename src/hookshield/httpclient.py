"""A small HTTP/1.1 client for target calls: an asyncio protocol on llhttp (`httptools`)
and a keep-alive pool per origin (SPEC §9, target side).

Built for one job: send a request whose body is already in memory, and read one whole
answer under size limits. No redirects, no cookies, no decompression: bytes pass through.
Each connection carries one request at a time, and all it knows of an exchange is reset
when the next one starts. An answer counts only once complete by its own framing
(`Content-Length`, the last chunk, or for an answer with neither, a clean close: a FIN,
over TLS a `close_notify`); a connection that ends before that fails the exchange, as
`ConnectionFailed` when no byte of the answer came, else `AnswerBroken`. A connection
goes back to its pool only after a complete answer that allows keep-alive; one that
received bytes while idle, was half-closed, or broke is closed, never reused. Trailers
are dropped; 1xx answers are skipped, but a 101 is refused. Addresses are resolved here
and, for a guarded client, each is checked by `netguard` before a socket is opened to it.
"""

from __future__ import annotations

import asyncio
import errno
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
_NO_BODY_STATUSES = frozenset({204, 304})
# Errors that say this process is short of a resource, not that the target failed.
_LOCAL_ERRNOS = {
    errno.EMFILE: "emfile", errno.ENFILE: "enfile", errno.ENOBUFS: "enobufs",
    errno.ENOMEM: "enomem",
}  # fmt: skip


class ConnectionFailed(Exception):
    """The target could not be reached, or the connection ended before any byte of the answer."""


class StaleConnection(ConnectionFailed):
    """A reused keep-alive connection ended before any byte of the answer: the target had
    closed it while it sat in the pool, so the request is worth one try on a new one."""


class AnswerBroken(Exception):
    """The answer started but is not a valid, complete answer (cut short, malformed,
    headers over the limits, a protocol switch)."""


class AnswerTooLarge(Exception):
    """The answer's body is larger than the caller's limit."""


class LocalExhausted(Exception):
    """This process ran out of a resource (file descriptors, buffers) while connecting."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class RawAnswer:
    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class AnswerLimits:
    body_bytes: int
    header_bytes: int  # status line and header block
    header_lines: int


class Connection(asyncio.Protocol):
    """One keep-alive connection to a target; one exchange at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[RawAnswer] | None = None
        self.closed = False
        self.reused = False  # taken from a pool (it carried an exchange before)
        self.idle_since = 0.0
        self.limits = AnswerLimits(0, 0, 0)
        self._begin(False)

    def _begin(self, head: bool) -> None:
        """Forget everything of the previous exchange."""
        self.head, self.complete = head, False
        self.received = 0  # bytes of this answer so far
        self.headers_done, self.in_head, self.size = False, 0, 0
        self.head_size = len(_STATUS_LINE)  # status line and header lines, as counted
        self.headers: Headers = []
        self.chunks: list[bytes] = []
        self.error: Exception | None = None  # raised by a callback, re-raised wrapped by llhttp

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        self.received += len(data)
        if not self.headers_done:
            self.in_head += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(AnswerBroken("the target switched protocols (101)"))
        except httptools.HttpParserError as exc:  # also wraps what a callback raised
            self._fail(self.error or AnswerBroken(f"the target's answer is not valid HTTP: {exc}"))
        else:
            if not self.headers_done and self.in_head > self.limits.header_bytes:
                self._fail(AnswerBroken(_HEADERS_TOO_LARGE % self.limits.header_bytes))

    def eof_received(self) -> bool:
        """A clean end: a FIN (over TLS, `close_notify`). It completes a close-delimited body."""
        if self.waiter is not None and self.headers_done and self._close_delimited():
            self._finish(reusable=False)
        self.closed = True
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is None or self.waiter.done():
            return
        if self.received:
            self._fail(AnswerBroken("the target's connection ended in the middle of its answer"))
        elif self.reused:
            self._fail(StaleConnection("the target closed its idle keep-alive connection"))
        else:
            self._fail(ConnectionFailed("the target closed the connection before answering"))

    # llhttp callbacks
    def on_message_begin(self) -> None:
        if self.waiter is None:  # a second answer behind the one just read: out of step
            self.complete = False
            self.close()

    def on_status(self, reason: bytes) -> None:
        self.head_size += len(reason)  # llhttp may hand the reason over in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer field: dropped (SPEC §9)
        self.headers.append((name, value))
        self.head_size += len(name) + len(value) + 4  # ": " and CRLF
        if len(self.headers) > self.limits.header_lines:
            self._raise(AnswerBroken(f"the target sent over {self.limits.header_lines} headers"))
        if self.head_size > self.limits.header_bytes:
            self._raise(AnswerBroken(_HEADERS_TOO_LARGE % self.limits.header_bytes))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if self.head_size > self.limits.header_bytes:  # a long status line, no headers
            self._raise(AnswerBroken(_HEADERS_TOO_LARGE % self.limits.header_bytes))
        if not 100 <= status <= 599 or self.parser.get_http_version() not in _VERSIONS:
            self._raise(AnswerBroken("the target's status line is not HTTP/1.x with a status"))
        if status // 100 == 1:
            return  # an interim answer: its headers are dropped at its end
        self.headers_done = True
        length = _content_length(self.headers)
        if length and length > self.limits.body_bytes:
            self._raise(AnswerTooLarge())
        if self.head:
            self._finish(reusable=False)  # llhttp would wait for a body a HEAD answer lacks

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.limits.body_bytes:
            self._raise(AnswerTooLarge())
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() // 100 == 1:  # 100 Continue, 103 Early Hints, ...
            self.headers, self.in_head, self.head_size = [], 0, len(_STATUS_LINE)
            return
        self._finish(reusable=self.parser.should_keep_alive())

    # the exchange
    def _raise(self, exc: Exception) -> None:
        """Stop parsing (llhttp re-raises this wrapped; `data_received` unwraps it)."""
        self.error = exc
        raise exc

    def _close_delimited(self) -> bool:
        """The answer's body runs to the end of the connection (RFC 9112 §6.3, rule 8)."""
        if self.parser.get_status_code() in _NO_BODY_STATUSES:
            return False
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def _finish(self, reusable: bool) -> None:
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
        limits: AnswerLimits,
        head: bool,
        deadline: float,
    ) -> RawAnswer:
        """Send `request`; the whole answer, or `TimeoutError` at loop time `deadline`.
        Any failure (cancellation too) closes the connection."""
        assert self.transport is not None
        assert self.waiter is None
        self._begin(head)
        self.limits = limits
        waiter: asyncio.Future[RawAnswer] = loop.create_future()
        self.waiter = waiter
        timer = loop.call_at(deadline, self._fail, TimeoutError())
        try:
            self.transport.write(request)
            return await waiter
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()


_HEADERS_TOO_LARGE = "the target's answer headers are larger than %d bytes"
_STATUS_LINE = b"HTTP/1.1 200 \r\n"  # a status line without its reason phrase
_VERSIONS = frozenset({"1.0", "1.1"})


def _content_length(headers: Headers) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


@dataclass(slots=True)
class Pool:
    """Idle connections to one origin, newest last, under the budget all pools share."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    host_header: str
    allow: tuple[Network, ...] | None
    budget: IdleBudget
    idle: list[Connection] = field(default_factory=list)
    last_used: float = 0.0

    def take(self, now: float) -> Connection | None:
        self.last_used = now
        while self.idle:
            connection = self.idle.pop()
            self.budget.forget(connection)
            if not connection.closed and now - connection.idle_since < self.budget.keepalive_s:
                connection.reused = True
                return connection
            connection.close()
        return None

    def give_back(self, connection: Connection, now: float) -> None:
        if connection.closed or not connection.complete:
            connection.close()
            return
        connection.idle_since = self.last_used = now
        self.idle.append(connection)
        self.budget.keep(connection, self)

    def drop(self, connection: Connection) -> None:
        """Close an idle connection the budget let go of."""
        if connection in self.idle:
            self.idle.remove(connection)
        connection.close()

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
                _raise_if_local(exc)
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
            self.budget.forget(connection)
            connection.close()


def _raise_if_local(exc: OSError) -> None:
    kind = _LOCAL_ERRNOS.get(exc.errno or 0)
    if kind is not None:
        raise LocalExhausted(kind, f"hookshield is out of resources: {exc.strerror}") from exc


class IdleBudget:
    """Every pool's idle connections in the order they went idle: at most `limit` kept
    (the oldest closed first), none past `keepalive_s` (`expire`, called by the owner)."""

    def __init__(self, limit: int, keepalive_s: float) -> None:
        self.limit, self.keepalive_s = limit, keepalive_s
        self.order: dict[Connection, Pool] = {}

    def keep(self, connection: Connection, pool: Pool) -> None:
        self.order[connection] = pool
        while len(self.order) > self.limit:
            oldest = next(iter(self.order))
            self.order.pop(oldest).drop(oldest)

    def forget(self, connection: Connection) -> None:
        self.order.pop(connection, None)

    def expire(self, now: float) -> None:
        """Close the idle connections past their keep-alive time."""
        while self.order:
            oldest = next(iter(self.order))
            if now - oldest.idle_since < self.keepalive_s and not oldest.closed:
                return
            self.order.pop(oldest).drop(oldest)


_TLS: list[ssl.SSLContext] = []


def _tls_context() -> ssl.SSLContext:
    """One verifying client context for every https target (built on first use)."""
    if not _TLS:
        _TLS.append(ssl.create_default_context())
    return _TLS[0]


def pool_for(origin: str, allow: tuple[Network, ...] | None, budget: IdleBudget) -> Pool:
    url = URL(origin)
    host, port, raw_host = url.host, url.port, url.raw_host
    assert host is not None, origin
    assert port is not None, origin
    assert raw_host is not None, origin
    tls = _tls_context() if url.scheme == "https" else None
    if ":" in raw_host:  # an IPv6 literal
        raw_host = f"[{raw_host}]"
    host_header = raw_host if port == (443 if tls else 80) else f"{raw_host}:{port}"
    return Pool(host, port, tls, host_header, allow, budget)
