"""The purpose-built HTTP/1.1 paths (`httpserver`, `httpclient`) through the whole proxy:
framing, keep-alive, half-closed connections, pipelining, and raw targets that misbehave."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.conftest import Target

Raw = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def one_route(url: str, **extra: Any) -> dict[str, Any]:
    return {"routes": [{"name": "h", "match": {"path_prefix": "/h"}, "target": url, **extra}]}


@asynccontextmanager
async def raw_target(handler: Raw) -> AsyncIterator[str]:
    """A TCP server that answers with whatever bytes `handler` writes; on exit its handlers
    are awaited and their connections closed."""
    handlers: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5.0)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return head + await reader.readexactly(int(line.split(b":")[1]))
    return head


async def exchange(port: int, data: bytes, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read() if until_close else await reader.read(65536)
    writer.close()
    return answer


async def test_chunked_request_and_answer_pass_whole(proxy: Any, target: Any) -> None:
    """A chunked platform body reaches the target whole; a chunked answer returns whole."""

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await response.write(part)
        await response.write_eof()
        return response

    app: Target = await target(chunked)
    client = await proxy(one_route(app.url))

    async def parts() -> AsyncIterator[bytes]:
        for part in (b'{"a":', b" 1", b"}"):
            yield part

    resp = await client.post("/h", data=parts())
    assert (resp.status, await resp.read()) == (200, b"one,two,three")
    assert app.seen[0].body == b'{"a": 1}'


async def test_large_bodies_pass_byte_for_byte(proxy: Any, target: Any) -> None:
    """A 768 KiB request body and a 6 MiB answer cross intact."""
    answer = bytes(range(256)) * (6 * 4096)

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=io.BytesIO(answer))

    app: Target = await target(big)
    client = await proxy(one_route(app.url, timeout_ms=10_000))
    body = bytes(reversed(range(256))) * (3 * 1024)  # the test target reads up to 1 MiB
    resp = await client.post("/h", data=io.BytesIO(body))
    assert (resp.status, await resp.read() == answer) == (200, True)
    assert app.seen[0].body == body


async def test_target_closing_keep_alive_connection_is_not_reused(proxy: Any) -> None:
    """A target that closes every connection after answering (half-closed, then gone) is
    reached on a fresh connection each time: no call fails on a dead pooled socket."""
    connections = 0

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.write_eof()  # half-close: keep-alive was promised, the socket says otherwise
        await asyncio.sleep(0.05)
        writer.close()

    async with raw_target(once) as url:
        client = await proxy(one_route(url))
        for _ in range(5):
            resp = await client.post("/h", data=b"{}")
            assert (resp.status, await resp.read()) == (200, b"ok")
            await asyncio.sleep(0.02)  # let the FIN arrive while the connection is idle
    assert connections == 5


async def test_answer_delimited_by_close_and_1xx_before_it(proxy: Any) -> None:
    """An interim 100 answer is skipped; a body without length ends when the target closes."""

    async def old_style(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Old: 1\r\n\r\nuntil close")
        await writer.drain()
        writer.close()

    async with raw_target(old_style) as url:
        client = await proxy(one_route(url))
        resp = await client.post("/h", data=b"{}")
        assert (resp.status, await resp.read(), resp.headers["X-Old"]) == (200, b"until close", "1")


async def test_target_closing_before_answer_is_unreachable(proxy: Any) -> None:
    """A target that reads the request and hangs up without answering: 502 UPSTREAM_UNREACHABLE."""

    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with raw_target(rude) as url:
        client = await proxy(one_route(url))
        resp = await client.post("/h", data=b"{}")
        assert (resp.status, (await resp.json())["code"]) == (502, "UPSTREAM_UNREACHABLE")


async def test_answer_that_is_not_http_is_an_upstream_error(proxy: Any) -> None:
    """A target that answers with bytes that are not HTTP: 502 UPSTREAM_ERROR (bytes of an
    answer came, SPEC §9; RFC 9112 §4 status line)."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()  # until hookshield hangs up
        writer.close()

    async with raw_target(garbage) as url:
        client = await proxy(one_route(url))
        resp = await client.post("/h", data=b"{}")
        assert (resp.status, (await resp.json())["code"]) == (502, "UPSTREAM_ERROR")


async def test_stalled_answer_is_cut_at_the_deadline(proxy: Any) -> None:
    """Headers arrive, the body stalls: 504 TIMEOUT at the route's 150 ms deadline."""

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()
        await reader.read()  # until hookshield hangs up at its deadline
        writer.close()

    async with raw_target(stall) as url:
        client = await proxy(one_route(url, timeout_ms=150))
        started = asyncio.get_running_loop().time()
        resp = await client.post("/h", data=b"{}")
        elapsed = asyncio.get_running_loop().time() - started
        assert (resp.status, (await resp.json())["code"]) == (504, "TIMEOUT")
        assert 0.14 < elapsed < 1.0


async def test_pipelined_requests_answered_in_order(proxy: Any, target: Any) -> None:
    """Three requests written at once on one connection get three answers, in order."""

    async def echo(request: web.Request) -> web.Response:
        await asyncio.sleep(0.03 if request.path.endswith("/1") else 0)
        return web.Response(body=b"answer" + request.path.encode())

    app: Target = await target(echo)
    client = await proxy(one_route(app.url))
    requests = b"".join(
        f"POST /h/{n} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{'Connection: close' if n == 3 else 'X: y'}\r\n\r\n".encode()
        for n in (1, 2, 3)
    )
    answer = await exchange(client.port, requests)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.index(b"answer/1") < answer.index(b"answer/2") < answer.index(b"answer/3")


async def test_expect_continue_http10_and_head(proxy: Any, target: Any) -> None:
    """`Expect: 100-continue` gets its interim answer; HTTP/1.0 closes after the answer;
    a HEAD answer has headers only."""
    app: Target = await target()
    client = await proxy(one_route(app.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    )
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"{}")
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    writer.close()
    old = await exchange(client.port, b"POST /h HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    assert old.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in old
    head = await exchange(client.port, b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert head.endswith(b"\r\n\r\n")


async def test_invalid_request_is_spec_bad_request(proxy: Any, target: Any) -> None:
    """Bytes that are not HTTP get a 400 `BAD_REQUEST` JSON answer and the connection closes."""
    app: Target = await target()
    client = await proxy(one_route(app.url))
    answer = await exchange(client.port, b"HELLO\x00 there\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request")
    assert b'"code": "BAD_REQUEST"' in answer
    assert app.seen == []


async def test_oversized_declared_body_refused_before_it_is_sent(proxy: Any, target: Any) -> None:
    """A declared length over the limit gets 413 at once, without waiting for the body."""
    app: Target = await target()
    client = await proxy({"limits": {"max_body_bytes": 100}, **one_route(app.url)})
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 2.0)  # answered and closed, body never sent
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"PAYLOAD_TOO_LARGE" in answer


async def test_answer_headers_filtered_and_passed_back_byte_for_byte(proxy: Any) -> None:
    """Hop-by-hop, Connection-named, X-Hookshield-* and (with a rate limit) the target's own
    X-RateLimit-* headers are dropped; the rest come back with their bytes unchanged."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
            b"Keep-Alive: timeout=5\r\nX-Hookshield-Outcome: forged\r\nX-RateLimit-Limit: 1\r\n"
            b"X-Latin: caf\xe9\r\nx-lower: kept\r\nContent-Length: 2\r\n\r\nok"
        )
        await writer.drain()

    async with raw_target(answer) as url:
        client = await proxy(one_route(url, rate_limit={"per_second": 100, "burst": 50}))
        resp = await client.post("/h", data=b"{}")
        headers = resp.headers
        assert (resp.status, await resp.read()) == (200, b"ok")
        assert (b"X-Latin", b"caf\xe9") in resp.raw_headers
        assert headers["x-lower"] == "kept"
        assert (headers["X-Hookshield-Outcome"], headers["X-RateLimit-Limit"]) == ("upstream", "50")
        assert ("X-Hop" in headers, "Keep-Alive" in headers) == (False, False)
        assert len(headers.getall("X-RateLimit-Limit")) == 1
