"""A closed-loop load generator: `concurrency` clients send `requests` POSTs in total."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import aiohttp

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


async def run_open(url: str, requests: int, rate: float) -> Result:
    """Open loop: `requests` POSTs sent at a fixed `rate`, whatever the answers do.

    Latency counts from each request's scheduled send time, so queueing is not hidden.
    Requests are started as they fall due (not created up front), so a long run at a high
    rate holds only the requests in flight.
    """
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    in_flight: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(scheduled: float) -> None:
            nonlocal errors
            try:
                async with session.post(url, data=PAYLOAD) as resp:
                    await resp.read()
                    errors += resp.status not in (200, 202)
            except aiohttp.ClientError:
                errors += 1
            latencies.append(clock() - scheduled)

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
