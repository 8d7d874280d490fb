"""Whether the data plane needs more CPU than this process gets, sampled every 50 ms.

The process is under pressure when, over the last window, its threads were runnable
(running, or ready and waiting for a CPU: Linux's per-thread `schedstat`) for nearly all of
the time, and the data plane received calls lately. Background work that can wait
(deliveries: no caller is waiting for them) gives way then, so a burst of calls is answered
at full speed and the backlog it leaves is worked off after. Without calls the process may
spend all the CPU it gets on the background work.

Runnable time, not CPU time: a process held to half a core (a Kubernetes CPU limit, or
neighbours on a shared host) that always has work is short of CPU although it uses only
half a core. Where `schedstat` is missing, CPU time (`time.process_time`) stands in.
(The event loop's timer lag is no such signal under uvloop: timers run at the start of
every loop turn, and a saturated loop takes many short turns.)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable

EVERY_S = 0.05
BUSY_SHARE = 0.85  # runnable for this share of the window
CALLS_WINDOWS = 4  # "calls lately": within the last 4 windows (200 ms)
_SCHEDSTAT = os.path.exists("/proc/self/schedstat")  # Linux with scheduler statistics


def runnable_s() -> float:
    """Seconds this process's threads have been running or waiting for a CPU so far (its
    CPU time where the kernel keeps no `schedstat`)."""
    if not _SCHEDSTAT:
        return time.process_time()
    total = 0
    for thread in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{thread}/schedstat", "rb") as stats:
                running_ns, waiting_ns, _ = stats.read().split()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        total += int(running_ns) + int(waiting_ns)
    return total / 1e9


class Pressure:
    def __init__(
        self,
        calls: Callable[[], int],
        on_sample: Callable[[bool], None],
        every_s: float = EVERY_S,
        busy_share: float = BUSY_SHARE,
    ) -> None:
        self.calls, self.on_sample = calls, on_sample  # `calls`: a running count
        self.every_s, self.busy_share = every_s, busy_share
        self.busy = False
        self._last = (0.0, 0.0)  # wall clock and runnable time at the last sample
        self._calls: deque[int] = deque(maxlen=CALLS_WINDOWS)  # the count at recent samples
        self._timer: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._timer is not None

    @property
    def quiet(self) -> bool:
        """No calls arrived within the last `CALLS_WINDOWS` samples."""
        return self.calls() == self._calls[0] if self._calls else True

    def start(self) -> None:
        """Sample from now on (again); the first sample after a start compares with now."""
        self._last = (time.monotonic(), runnable_s())
        self._calls.clear()
        self._calls.append(self.calls())
        self._timer = asyncio.get_running_loop().call_later(self.every_s, self._sample)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sample(self) -> None:
        self._timer = None
        try:
            now, runnable, calls = time.monotonic(), runnable_s(), self.calls()
        except OSError:  # out of file descriptors, say: no sample this time, the next one will be
            self._timer = asyncio.get_running_loop().call_later(self.every_s, self._sample)
            return
        share = (runnable - self._last[1]) / max(now - self._last[0], 1e-6)
        self.busy = share >= self.busy_share and calls > self._calls[0]
        self._last = (now, runnable)
        self._calls.append(calls)
        self._timer = asyncio.get_running_loop().call_later(self.every_s, self._sample)
        self.on_sample(self.busy)  # which may stop the sampling
