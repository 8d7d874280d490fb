"""The data plane's HTTP/1.1 listener: asyncio protocols on llhttp (`httptools`).

The platform's requests arrive here, are read by a `RequestReader` (the limits and HTTP
rules of SPEC §9) and handed to the handler; the handler's `Answer` is written back with
`Content-Length`. Answers leave in request order, one handler call at a time per
connection; a refused request is answered after the answers due before it, and then the
connection closes. A closing connection is shut down for writing and drained for a moment
first, so that unread bytes never reset it under its last answer.

Each connection has one deadline (its header block, the gap between body bytes, idle
keep-alive, or the final drain), enforced by one loop timer (`httpreader.Deadline`),
re-created only when a deadline comes before the one the timer waits for. A head or body
deadline is set only when the bytes fed end inside one: a request that arrives whole
costs the keep-alive deadline set after its answer, and no timer of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

from hookshield import logs
from hookshield.config.models import Limits
from hookshield.errors import RequestTimeout
from hookshield.httpreader import BODY, HEAD, IDLE, LINGER, Deadline, RequestReader
from hookshield.httprules import CLOSE, CONTINUE, encode_answer
from hookshield.message import Answer, Request
from hookshield.tasks import spawn

_MAX_PIPELINED: Final = 32  # queued requests on one connection before it stops reading
_LINGER_S: Final = 2.0  # how long a closing connection drains what the platform still sends

Handler = Callable[[Request], Awaitable[Answer]]


class HttpConnection(asyncio.Protocol):
    """One platform connection: reads requests, queues them, writes their answers in order."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.deadline = Deadline(self.loop, self._expired)
        self.reader = RequestReader(self, listener.limits, self.deadline)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[Request, bytes] | Answer] = deque()
        self.task: asyncio.Task[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self.paused = False
        self.peer_done = False  # the platform shut down its sending side
        self.wants_continue = False  # a `100 Continue` waits for the answers due before it

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.listener.connections.add(self)
        self.deadline.arm(IDLE, self.loop.time() + self.reader.bounds.idle_s)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data, self.loop.time())

    def eof_received(self) -> bool | None:
        self.peer_done = True
        if self.deadline.phase == LINGER or self.idle:
            return None  # close now
        self.reader.reading, self.deadline.phase = False, 0  # answer what is due, then close
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        self.queue.clear()
        self.reader.reading = False
        self.deadline.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # what the reader tells (`httpreader.Events`)
    def dispatch(self, request: Request, connection: bytes) -> None:
        self.listener.calls += 1
        self.queue.append((request, connection))
        self.deadline.phase = 0  # no deadline while its answer is due
        if connection == CLOSE or len(self.queue) > _MAX_PIPELINED:
            self._pause()
        if self.task is None:
            self.task = spawn("connection", self._serve())

    def refuse(self, answer: Answer) -> None:
        """No further request is read; `answer` goes after the answers due, then close."""
        self.reader.reading, self.deadline.phase = False, 0
        self._pause()
        logs.requests.add("-", "-", "-", "-", answer.status, answer.outcome, 0.0, "-")
        self.queue.append(answer)
        if self.task is None:
            self.task = spawn("connection", self._serve())

    def expect_continue(self) -> None:
        """`100 Continue` now, or once the answers due before it are written."""
        if self.idle and self.transport is not None:
            self.transport.write(CONTINUE)
        else:
            self.wants_continue = True

    def _expired(self, phase: int) -> None:
        """The deadline passed: 408 for a request being read, else close."""
        if phase in (HEAD, BODY):
            if self.paused:  # not reading by its own choice (answers due): no fault of the platform
                bounds = self.reader.bounds
                wait_s = bounds.header_s if phase == HEAD else bounds.body_s
                self.deadline.arm(phase, self.loop.time() + wait_s)
                return
            part = "header block" if phase == HEAD else "body"
            self.refuse(
                RequestTimeout(f"the request's {part} did not arrive in time").to_answer("-")
            )
        elif phase == LINGER or self.idle:
            self.close()

    def _pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def _resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self.paused = False

    # answering
    async def _serve(self) -> None:
        try:
            while self.queue:
                item = self.queue.popleft()
                if isinstance(item, Answer):  # a refusal: the connection's last answer
                    await self._write(encode_answer(item, CLOSE))
                    self._finish()
                    return
                request, connection = item
                answer = await self.listener.handler(request)
                if self.listener.closing:
                    connection = CLOSE
                await self._write(encode_answer(answer, connection, request.method == "HEAD"))
                if connection == CLOSE:
                    self._finish()
                    return
        finally:
            self.task = None
        self._idle_again()

    def _idle_again(self) -> None:
        """Every due answer is written: read on (the next request, or idle)."""
        if not self.reader.reading:
            self._finish()
            return
        if self.wants_continue and self.transport is not None:
            self.wants_continue = False
            self.transport.write(CONTINUE)
        if self.paused:
            self._resume()
        if not self.deadline.phase:  # else a request is being read, under its own deadline
            self.deadline.arm(IDLE, self.loop.time() + self.reader.bounds.idle_s)

    async def _write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if self._writable is not None:
            await self._writable

    def _finish(self) -> None:
        """After the last answer: shut down writing and drain what the platform still
        sends for up to `_LINGER_S` (closing on unread bytes would reset the connection
        and could lose that answer), then close."""
        self.reader.reading = False
        self.queue.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.peer_done or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._resume()
        self.deadline.arm(LINGER, self.loop.time() + _LINGER_S)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def idle(self) -> bool:
        return self.task is None and not self.queue


class Listener:
    """The data plane's server socket and its connections. `limits` answers the `Limits`
    of the config in force (a reload swaps it; each request reads it when it begins)."""

    def __init__(self, handler: Handler, limits: Callable[[], Limits]) -> None:
        self.handler, self.limits = handler, limits
        self.connections: set[HttpConnection] = set()
        self.calls = 0  # requests received so far (read by `pressure`)
        self.closing = False
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen on `host:port` (port 0: any free port); answers the port bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, reuse_port=reuse_port or None, backlog=4096
        )
        # uvloop's `sockets` is a list where typeshed says tuple, which the compiled build checks
        server: Any = self._server
        return int(server.sockets[0].getsockname()[1])

    async def stop(self, grace_s: float) -> None:
        """Refuse new connections; let in-flight calls finish for up to `grace_s`; close all."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for connection in [c for c in self.connections if c.idle]:
            connection.close()
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*busy, return_exceptions=True), grace_s)
        for connection in list(self.connections):
            connection.close()
