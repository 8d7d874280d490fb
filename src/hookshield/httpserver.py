"""The data plane's HTTP/1.1 listener: an asyncio protocol on llhttp (`httptools`).

The platform's requests arrive here. A request is read whole (its body refused as soon
as it is known to exceed the limit) and handed to the handler as a `Request`; the
handler's `Answer` is written back with `Content-Length`. Keep-alive and pipelining
follow HTTP/1.1: answers leave in request order, one handler call at a time per
connection. `Expect: 100-continue` is answered. `stop` refuses new connections, lets
in-flight calls finish for up to a grace period and closes idle keep-alive connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

import httptools
from multidict import CIMultiDict

from hookshield.message import Answer, Request

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
OUTCOME_HEADER = "X-Hookshield-Outcome"  # on every data-plane answer (SPEC §4)
_MAX_PIPELINED = 32  # queued requests on one connection before it stops reading


Handler = Callable[[Request], Awaitable[Answer]]


def encode_answer(answer: Answer, keep_alive: bool, head: bool = False) -> bytes:
    """Status line, the passed and own headers, the outcome, `Content-Length` (none for
    1xx/204/304), body."""
    status = answer.status
    own = "".join([f"{name}: {value}\r\n" for name, value in answer.headers.items()])
    if answer.outcome:
        own += f"{OUTCOME_HEADER}: {answer.outcome}\r\n"
    parts = [
        _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status,
        answer.passed,
        own.encode("latin-1", "replace"),
    ]
    body = answer.body
    if status < 200 or status in (204, 304):
        body = b""
    else:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)


class HttpConnection(asyncio.Protocol):
    """One platform connection: parses requests, queues them, writes their answers in order."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[Request, bool]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.last_active = self.loop.time()
        self._writable: asyncio.Future[None] | None = None
        self._begin()

    def _begin(self) -> None:
        self.url: list[bytes] = []
        self.header_list: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.request: Request | None = None
        self.dispatched = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.listener.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse("protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(f"the request is not valid HTTP/1.1: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        self.queue.clear()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self._begin()

    def on_url(self, url: bytes) -> None:
        self.url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        headers = CIMultiDict(self.header_list)
        method = self.parser.get_method().decode("ascii", "replace")
        path = b"".join(self.url).decode("latin-1")
        self.request = Request(method, path, headers, b"", self.loop.time())
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.listener.body_limit():
            self._dispatch_too_large()
        elif headers.get("Expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.dispatched:
            return
        self.size += len(body)
        if self.size > self.listener.body_limit():
            self._dispatch_too_large()
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.dispatched or self.request is None:
            return
        self.request.body = b"".join(self.chunks)
        self._dispatch(self.request, self.parser.should_keep_alive())

    # answering
    def _dispatch_too_large(self) -> None:
        assert self.request is not None
        self.request.too_large, self.chunks = True, []
        self._dispatch(self.request, keep_alive=False)  # the unread body makes the stream unusable

    def _dispatch(self, request: Request, keep_alive: bool) -> None:
        self.dispatched = True
        self.listener.calls += 1
        self.queue.append((request, keep_alive))
        if len(self.queue) > _MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        if self.task is None:
            self.task = self.loop.create_task(self._serve())

    async def _serve(self) -> None:
        try:
            while self.queue:
                request, keep_alive = self.queue.popleft()
                answer = await self.listener.handler(request)
                keep_alive = keep_alive and not self.listener.closing
                await self._write(encode_answer(answer, keep_alive, request.method == "HEAD"))
                if not keep_alive:
                    self.close()
                    return
        finally:
            self.task = None
            self.last_active = self.loop.time()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    async def _write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if self._writable is not None:
            await self._writable

    def _refuse(self, message: str) -> None:
        if self.task is None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_answer(self.listener.bad_request(message), False))
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def idle(self) -> bool:
        return self.task is None and not self.queue


class Listener:
    """The data plane's server socket and its connections."""

    def __init__(
        self,
        handler: Handler,
        body_limit: Callable[[], int],
        bad_request: Callable[[str], Answer],
        keepalive_s: float = 75.0,
    ) -> None:
        self.handler, self.body_limit, self.bad_request = handler, body_limit, bad_request
        self.keepalive_s = keepalive_s
        self.connections: set[HttpConnection] = set()
        self.calls = 0  # requests received so far (read by `pressure`)
        self.closing = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen on `host:port` (port 0: any free port); answers the port bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_port=reuse_port or None, backlog=4096
        )
        self._sweeper = loop.create_task(self._sweep())
        # uvloop's `sockets` is a list where typeshed says tuple, which the compiled build checks
        server: Any = self._server
        return int(server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        """Close keep-alive connections idle for longer than `keepalive_s`."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, self.keepalive_s / 2))
            now = loop.time()
            for connection in list(self.connections):
                if connection.idle and now - connection.last_active > self.keepalive_s:
                    connection.close()

    async def stop(self, grace_s: float) -> None:
        """Refuse new connections; let in-flight calls finish for up to `grace_s`; close all."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for connection in [c for c in self.connections if c.idle]:
            connection.close()
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*busy, return_exceptions=True), grace_s)
        for connection in list(self.connections):
            connection.close()
