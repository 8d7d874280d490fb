"""Python load generators: closed loop (`run`), open loop at a fixed rate (`run_open`), a flood."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import httptools

PAYLOAD = (
    b'{"event":"draw.completed","draw":"d-1","entries":'
    + b"["
    + b",".join(b'{"user":"u%d","tickets":%d}' % (i, i % 7) for i in range(40))
    + b"]}"
)  # about 1 KB of JSON


@dataclass(frozen=True)
class Result:
    throughput: float  # requests per second
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_cores: float = 0.0  # CPU the measured proxy (all its processes) used, in cores
    wrk_cores: float = 0.0  # CPU wrk used meanwhile
    machine_cores: float = 0.0  # the whole machine's busy CPU meanwhile (steal included)
    steal_cores: float = 0.0  # of that, taken by the hypervisor for other machines


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(url: str, requests: int, concurrency: int) -> Result:
    latencies: list[float] = []
    errors = 0
    remaining = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(url, data=PAYLOAD) as resp:
                    await resp.read()
                    errors += resp.status not in (200, 202)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Result(
        throughput=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        errors=errors,
    )


class _Connection(asyncio.Protocol):
    """One keep-alive connection of the open-loop generator: writes a prepared request,
    parses the answer with llhttp (`httptools`), answers its status. A generator this lean
    leaves the CPU of the core it shares with the target (and Redis) to them."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[int] | None = None
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()  # not after `Connection: close`
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("connection lost"))

    async def send(self, request: bytes, idle: list[_Connection]) -> int:
        """The answer's status; the connection goes back to `idle` if it may be reused."""
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        status = await self.answer
        if self.reusable:
            idle.append(self)
        else:
            self.transport.close()
        return status


def _request(url: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(PAYLOAD)}\r\n\r\n"
    )
    return parts.hostname or "127.0.0.1", parts.port or 80, head.encode() + PAYLOAD


async def run_open(url: str, requests: int, rate: float) -> Result:
    """Open loop: `requests` POSTs sent at a fixed `rate`, whatever the answers do.

    Latency counts from each request's scheduled send time, so queueing is not hidden.
    A request falling due takes an idle keep-alive connection, or opens one.
    """
    host, port, request = _request(url)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    idle: list[_Connection] = []
    in_flight: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        nonlocal errors
        try:
            status = await (await connection()).send(request, idle)
            errors += status not in (200, 202)
        except (OSError, RuntimeError):  # refused, reset; a transport closed under it
            errors += 1
        latencies.append(clock() - scheduled)

    async def connection() -> _Connection:
        """An idle connection the server keeps open, else a new one."""
        while idle:
            found = idle.pop()
            if found.reusable and found.transport and not found.transport.is_closing():
                return found
        return (await loop.create_connection(_Connection, host, port))[1]

    start = clock() + 0.05
    for i in range(requests):
        scheduled = start + i / rate
        if scheduled > clock():
            await asyncio.sleep(scheduled - clock())
        task = asyncio.create_task(one(scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    elapsed = clock() - start
    for kept in idle:
        if kept.transport is not None:
            kept.transport.close()
    return Result(
        throughput=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        errors=errors,
    )


async def flood(url: str, concurrency: int) -> dict[int, int]:
    """`concurrency` POSTs at once, each on its own connection: how many got which status
    (0: the connection failed)."""
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            try:
                async with session.post(url, data=PAYLOAD) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return statuses
