"""Pressure: busy only when the process spends nearly all of a core while calls arrive."""

from __future__ import annotations

import asyncio
import os
import resource
import time

from hookshield.pressure import Pressure
from tests.conftest import wait_for


def spin(seconds: float) -> None:
    """Hold the CPU (and the event loop) for `seconds` of CPU time."""
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass


async def samples_of(steps: int, calls_per_step: int, spin_s: float, idle_s: float) -> list[bool]:
    """What a Pressure sampling every 50 ms says while the loop, `steps` times, receives
    `calls_per_step` calls, spins for `spin_s` and idles for `idle_s`."""
    calls: list[int] = [0]
    samples: list[bool] = []
    pressure = Pressure(lambda: calls[0], samples.append, every_s=0.05)
    pressure.start()
    try:
        for _ in range(steps):
            calls[0] += calls_per_step
            spin(spin_s)
            await asyncio.sleep(idle_s)
    finally:
        pressure.stop()
    return samples


async def test_busy_while_the_cpu_is_spent_and_calls_arrive_then_not() -> None:
    """A spinning loop receiving calls samples busy; once it idles, not busy again."""
    busy = await samples_of(steps=15, calls_per_step=1, spin_s=0.02, idle_s=0)
    after = await samples_of(steps=6, calls_per_step=1, spin_s=0, idle_s=0.02)
    assert True in busy
    assert after
    assert not any(after)


async def test_never_busy_without_calls() -> None:
    """All the CPU spent on work of its own (no calls arriving) is no pressure."""
    samples = await samples_of(steps=15, calls_per_step=0, spin_s=0.02, idle_s=0)
    assert samples
    assert not any(samples)


async def test_an_idle_loop_receiving_calls_is_not_busy() -> None:
    """Calls that leave the CPU mostly idle are no pressure."""
    samples = await samples_of(steps=10, calls_per_step=1, spin_s=0, idle_s=0.02)
    assert samples
    assert not any(samples)


async def test_quiet_until_a_call_and_stopped_until_started() -> None:
    """`quiet` while the call count stands still, not after a call; `running` follows
    start and stop, also when the sample callback stops it."""
    calls = [0]
    pressure = Pressure(lambda: calls[0], lambda busy: pressure.stop(), every_s=0.02)
    assert not pressure.running
    pressure.start()
    assert pressure.running
    assert pressure.quiet
    calls[0] += 1
    assert not pressure.quiet
    await wait_for(lambda: not pressure.running)  # the first sample's callback stopped it


async def test_sampling_survives_running_out_of_file_descriptors() -> None:
    """A sample that cannot open /proc (EMFILE under a lowered descriptor limit) is skipped,
    and sampling goes on once descriptors are back (it used to stop for good)."""
    samples: list[bool] = []
    pressure = Pressure(lambda: 0, samples.append, every_s=0.02)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pressure.start()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (_open_descriptors(), hard))
        holes = _fill_descriptors()
        try:
            await asyncio.sleep(0.1)  # several samples find no descriptor free
            skipped = len(samples)
        finally:
            for fd in holes:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await wait_for(lambda: len(samples) > skipped + 2)
        assert pressure.running
    finally:
        pressure.stop()
    assert pressure.running is False


def _fill_descriptors() -> list[int]:
    """Open /dev/null until no descriptor is left under the soft limit; the ones opened."""
    opened: list[int] = []
    while True:
        try:
            opened.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            return opened


def _open_descriptors() -> int:
    """The highest descriptor this process has open, plus one: a soft limit at it leaves none free."""
    return max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
