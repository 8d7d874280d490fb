"""Memory rows: resident size over a long run at a fixed rate, and under a flood of slow calls.

- *Soak*: the `hookshield` process at a fixed rate (open loop) for a while; its resident
  size (VmRSS) is sampled every second. Flat means the last samples stay within ±10 % of
  the size reached after the first tenth of the run (the warm-up: pools, caches, metric
  children are built then).
- *Flood*: a hookshield whose route calls a target that answers after 5 s, with
  `max_concurrent` 5,000; 10,000 calls arrive at once, each on its own connection. Half
  are shed (503 `OVERLOADED`) at once, half wait for the target. The peak resident size is
  what counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.load import flood, run_open
from bench.procs import free_port, pinned, wait_http, wait_port
from bench.stack import config, quiet, start_hookshield


def affordable(calls: int) -> int:
    """`calls`, or fewer when the open-files limit cannot hold them (a connection each in the
    load generator, and in hookshield one inbound plus, for half, one to the target)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = int(calls * 1.6) + 1000
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    fit = min(calls, int((soft - 1000) / 1.6))
    if fit < calls:
        print(
            f"memory: the open-files limit ({soft}) holds {fit:,} concurrent calls, not {calls:,}"
        )
    return fit


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def sample(pid: int, every_s: float, into: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        into.append(rss_mb(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


@dataclass(frozen=True)
class Soak:
    seconds: int
    rate: float
    after_warmup_mb: float
    end_mb: float
    low_mb: float
    high_mb: float
    errors: int

    @property
    def drift(self) -> float:
        """Largest departure from the post-warm-up size, as a fraction of it."""
        base = self.after_warmup_mb
        return max(abs(self.high_mb - base), abs(self.low_mb - base)) / base


async def soak(url: str, pid: int, seconds: int, rate: float) -> Soak:
    samples: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(pid, 1.0, samples, stop))
    result = await run_open(url, int(seconds * rate), rate)
    stop.set()
    await sampler
    after = samples[max(1, len(samples) // 10) :]
    return Soak(seconds, rate, after[0], after[-1], min(after), max(after), result.errors)


@dataclass(frozen=True)
class Flood:
    calls: int
    limit: int
    delay_s: float
    statuses: dict[int, int]
    idle_mb: float
    peak_mb: float


async def flood_run(workdir: Path, calls: int, limit: int, delay_s: float) -> Flood:
    """A hookshield and a slow target of their own (both stopped afterwards)."""
    target = free_port()
    slow = quiet(pinned(1, [sys.executable, "-m", "bench.target", str(target), str(delay_s)]))
    settings = config("flood", target, workdir)
    settings["routes"][0]["max_concurrent"] = limit  # type: ignore[index]
    settings["routes"][0]["timeout_ms"] = int((delay_s + 10) * 1000)  # type: ignore[index]
    proxy = start_hookshield("flood", settings, workdir, 0)
    try:
        wait_port(target)
        wait_http(f"http://127.0.0.1:{proxy.admin}/readyz")
        idle = rss_mb(proxy.process.pid)
        samples: list[float] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(proxy.process.pid, 0.2, samples, stop))
        statuses = await flood(proxy.url("/hook"), calls)
        stop.set()
        await sampler
        return Flood(calls, limit, delay_s, statuses, idle, max(samples))
    finally:
        for process in (proxy.process, slow):
            process.terminate()
            process.wait(timeout=30)


def report(soaked: Soak, flooded: Flood) -> None:
    print(
        f"\nmemory: soak {soaked.seconds} s at {soaked.rate:,.0f}/s through hookshield (open loop)"
    )
    print(f"  resident after warm-up {soaked.after_warmup_mb:.1f} MB, at the end {soaked.end_mb:.1f} MB, "
          f"range {soaked.low_mb:.1f}-{soaked.high_mb:.1f} MB: drift {soaked.drift:+.1%} "
          f"(target within 10 %), errors {soaked.errors}")  # fmt: skip
    shed, served = flooded.statuses.get(503, 0), flooded.statuses.get(200, 0)
    other = flooded.calls - shed - served
    print(f"memory: {flooded.calls:,} concurrent calls to a target answering after "
          f"{flooded.delay_s:g} s, max_concurrent {flooded.limit:,}")  # fmt: skip
    print(f"  served {served:,}, shed 503 {shed:,}, other {other:,} {_others(flooded.statuses)}; "
          f"resident idle {flooded.idle_mb:.1f} MB, peak {flooded.peak_mb:.1f} MB (target under 300 MB)")  # fmt: skip


def _others(statuses: dict[int, int]) -> str:
    rest = {k: v for k, v in statuses.items() if k not in (200, 503)}
    return str(rest) if rest else ""
