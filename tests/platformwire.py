"""Raw-socket parts for the platform-side corpus (tests/test_http_platform.py): a target
that records the exact bytes of every request hookshield forwards to it, a platform
connection that writes exact bytes, and a reader that splits hookshield's answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

Answering = Callable[[bytes], bytes]


def ok(request: bytes) -> bytes:
    """A keep-alive 200 with a 5-byte body (headers only for HEAD)."""
    body = b"" if request.startswith(b"HEAD ") else b"hello"
    return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body


@dataclass
class Recorder:
    """A TCP target on 127.0.0.1 that keeps every request it is sent, byte for byte (head
    and `Content-Length` body), and answers each with `answer(request)` after `delay_s`."""

    answer: Answering = ok
    delay_s: float = 0.0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hooks"

    @property
    def lines(self) -> list[bytes]:
        """The request line of each request received."""
        return [request.split(b"\r\n", 1)[0] for request in self.requests]

    def names(self, index: int = 0) -> list[str]:
        """The header names of request `index`, lower-cased, in order."""
        head = self.requests[index].split(b"\r\n\r\n", 1)[0]
        return [
            line.split(b":", 1)[0].decode("latin-1").lower() for line in head.split(b"\r\n")[1:]
        ]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.readexactly(_content_length(head))
                self.requests.append(head + body)
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(self.answer(head + body))
                await writer.drain()
        self.writers.discard(writer)
        writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 0


@asynccontextmanager
async def recording(answer: Answering = ok, delay_s: float = 0.0) -> AsyncIterator[Recorder]:
    recorder = Recorder(answer, delay_s)
    recorder.server = await asyncio.start_server(recorder.serve, "127.0.0.1", 0)
    try:
        yield recorder
    finally:
        recorder.server.close()
        for writer in list(recorder.writers):
            writer.close()
        await asyncio.sleep(0)  # let the closed connections' handlers end


@dataclass
class Reply:
    """One answer hookshield wrote."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def code(self) -> str | None:
        """The `code` of hookshield's JSON error body (None for any other body)."""
        with contextlib.suppress(ValueError):
            data: Any = json.loads(self.body)
            return data.get("code") if isinstance(data, dict) else None
        return None


def replies(raw: bytes, head: bool = False) -> list[Reply]:
    """`raw` split into answers by `Content-Length` (none read for 1xx, or when `head`)."""
    found = []
    while raw:
        top, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"an incomplete answer head: {top!r}"
        lines = top.split(b"\r\n")
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.add(name.decode("latin-1"), value.strip().decode("latin-1"))
        status = int(lines[0].split(b" ")[1])
        size = 0 if head or status < 200 else int(headers.get("Content-Length", "0"))
        found.append(Reply(status, headers, raw[:size]))
        raw = raw[size:]
    return found


async def exchange(
    port: int, *parts: bytes, pause_s: float = 0.0, timeout_s: float = 5.0, eof: bool = False
) -> tuple[bytes, float]:
    """Write `parts` (pausing `pause_s` after each, and stopping once an answer arrives;
    with `eof` then shut down writing) while reading until hookshield closes: the bytes
    read, and the seconds from the first write to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = bytearray()

    async def read() -> None:
        while chunk := await reader.read(65536):
            answer.extend(chunk)

    reading = asyncio.create_task(read())
    try:
        with contextlib.suppress(ConnectionError):
            for part in parts:
                if answer or reading.done():
                    break
                writer.write(part)
                await writer.drain()
                if pause_s:
                    await asyncio.sleep(pause_s)
            if eof and not reading.done():
                writer.write_eof()
        await asyncio.wait_for(reading, timeout_s)
        return bytes(answer), time.monotonic() - started
    finally:
        reading.cancel()
        writer.close()


def request(line: str, *headers: str, body: bytes = b"") -> bytes:
    """Request bytes: `line`, `headers`, an empty line, `body` (nothing added)."""
    return "".join(f"{text}\r\n" for text in (line, *headers, "")).encode("latin-1") + body
