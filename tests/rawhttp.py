"""Raw-socket parts for the target-side tests (SPEC §9): targets that write exact bytes and
end each connection as the test says (kept open, a FIN, or a TCP reset), and a platform
connection that writes exact request bytes to hookshield's data plane.

A `RawTarget` is an asyncio server on 127.0.0.1, port 0. It runs the test's `Script` once
per accepted connection with a `Peer`, which notes everything the target read (whole
requests, in order) and when hookshield's end of the connection was seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy


def content_length(head: bytes) -> int:
    """The Content-Length of a request head (0 without one)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def header(message: bytes, name: str) -> str | None:
    """The first value of header `name` in a message head (None without one)."""
    head = message.split(b"\r\n\r\n", 1)[0]
    wanted = name.lower().encode()
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == wanted:
            return value.strip().decode("latin-1")
    return None


def request_line(message: bytes) -> bytes:
    return message.split(b"\r\n", 1)[0]


class Peer:
    """One connection accepted by a raw target: what was read on it, and how it ended."""

    def __init__(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.number = number  # 1-based, in order of acceptance
        self.reader, self.writer = reader, writer
        self.requests: list[bytes] = []  # whole requests read (head and body)
        self.opened_at = time.monotonic()
        self.eof_at: float | None = None  # when hookshield's end (FIN or reset) was seen
        self.ended = False  # this side closed or reset it

    @property
    def open(self) -> bool:
        return self.eof_at is None and not self.ended

    async def request(self) -> bytes | None:
        """Read one whole request (head, then a Content-Length body); None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = content_length(head)
            body = await self.reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            self._seen_eof()
            return None
        self.requests.append(head + body)
        return head + body

    async def read_some(self, size: int) -> bytes:
        """Exactly `size` bytes of what hookshield sent (fewer at EOF)."""
        try:
            return await self.reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            self._seen_eof()
            return exc.partial
        except ConnectionError:
            self._seen_eof()
            return b""

    async def send(self, *parts: bytes, pause_s: float = 0.0) -> bool:
        """Write `parts` in turn (with a pause after each one when `pause_s`); False if the
        connection broke meanwhile."""
        try:
            for part in parts:
                self.writer.write(part)
                await self.writer.drain()
                if pause_s:
                    await asyncio.sleep(pause_s)
        except ConnectionError:
            self._seen_eof()
            return False
        return True

    def fin(self) -> None:
        """Half-close: a FIN goes out even with unread bytes (a close would send a reset)."""
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.write_eof()

    def reset(self) -> None:
        """End the connection with a TCP reset (RST): SO_LINGER 0, then close."""
        sock = self.writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ended = True
        self.writer.transport.abort()

    async def wait_eof(self, timeout_s: float = 10.0) -> bool:
        """Read and drop bytes until hookshield ends the connection; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        self._seen_eof()
        return True

    async def serve_keepalive(self, answer: Callable[[bytes], bytes]) -> None:
        """Answer every request on this connection with `answer(request)`, until EOF."""
        while (request := await self.request()) is not None:
            if not await self.send(answer(request)):
                return

    def _seen_eof(self) -> None:
        if self.eof_at is None:
            self.eof_at = time.monotonic()


Script = Callable[[Peer], Awaitable[None]]


class RawTarget:
    """A TCP server on 127.0.0.1 running `script` for each connection it accepts."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.peers: list[Peer] = []
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._port = 0

    @property
    def port(self) -> int:
        if not self._port:
            assert self.server is not None
            self._port = int(self.server.sockets[0].getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[bytes]:
        """Every whole request read, over all connections, in order of connection."""
        return [request for peer in self.peers for request in peer.requests]

    def open_connections(self) -> int:
        return sum(1 for peer in self.peers if peer.open)

    async def start(self) -> RawTarget:
        self.server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        assert self.port
        return self

    async def close(self) -> None:
        """Stop listening and drop every connection; the scripts see the end and return.
        (Cancelling them instead would have asyncio log the cancellation as an error.)"""
        if self.server is not None:
            self.server.close()
        for peer in self.peers:
            peer.ended = True
            peer.writer.transport.abort()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(len(self.peers) + 1, reader, writer)
        self.peers.append(peer)
        try:
            await self.script(peer)
        except ConnectionError:
            peer._seen_eof()
        finally:
            self._tasks.discard(task)
            if not peer.ended:
                peer.ended = True
                writer.close()


@asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[RawTarget]:
    """A running `RawTarget`; on exit its connections are dropped and the server closed."""
    target = await RawTarget(script).start()
    try:
        yield target
    finally:
        await target.close()


def ok_answer(body: bytes = b"ok", *extra: bytes) -> bytes:
    """A complete keep-alive 200 with a Content-Length body."""
    lines = b"".join(line + b"\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (lines, len(body), body)


# The platform's side.


@dataclass
class Got:
    """What the platform got from hookshield."""

    status: int
    body: bytes
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()
    elapsed_s: float = 0.0

    @property
    def outcome(self) -> str | None:
        return self.headers.get("X-Hookshield-Outcome")

    @property
    def code(self) -> str | None:
        """The `code` of hookshield's JSON error body (None for any other body)."""
        try:
            data: Any = json.loads(self.body)
        except ValueError:
            return None
        return data.get("code") if isinstance(data, dict) else None

    def names(self) -> set[str]:
        return {name.lower() for name in self.headers}


async def call(
    client: Any,
    path: str = "/h",
    data: bytes = b"{}",
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> Got:
    """One call through hookshield's data plane with its aiohttp `DataClient`."""
    started = time.monotonic()
    async with client.request(method, path, data=data, headers=headers or {}) as resp:
        body = await resp.read()
        return Got(
            resp.status, body, resp.headers, tuple(resp.raw_headers), time.monotonic() - started
        )


@dataclass
class Platform:
    """A raw keep-alive connection to hookshield's data plane, opened ahead of time."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    seen: list[bytes] = field(default_factory=list)

    @staticmethod
    async def connect(port: int) -> Platform:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        return Platform(reader, writer)

    async def ask(self, request: bytes, timeout_s: float = 10.0) -> Got:
        """Write `request`, read one Content-Length-framed answer."""
        started = time.monotonic()
        self.writer.write(request)
        await self.writer.drain()
        async with asyncio.timeout(timeout_s):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].split(b"\r\n")
            status = int(lines[0].split(b" ")[1])
            headers: CIMultiDict[str] = CIMultiDict()
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers.add(name.decode("latin-1"), value.strip().decode("latin-1"))
            body = await self.reader.readexactly(int(headers.get("Content-Length", "0")))
        return Got(status, body, headers, elapsed_s=time.monotonic() - started)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def post(path: str = "/h", body: bytes = b"{}", *extra: str) -> bytes:
    """A keep-alive HTTP/1.1 POST with a Content-Length body, as the platform writes it."""
    lines = "".join(f"{line}\r\n" for line in extra)
    head = f"POST {path} HTTP/1.1\r\nHost: hookshield\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body
