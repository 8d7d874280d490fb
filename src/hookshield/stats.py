"""Recent-window statistics per route and target, for `/status` and the status page.

Each (route, target) keeps its attempts of the last `window_s` seconds (at most
`max_samples`, oldest dropped first): result and duration. A summary gives the request
count, success and timeout rates, and latency percentiles over that window.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 300.0
MAX_SAMPLES = 10_000
MAX_TARGETS = 1_000


@dataclass(frozen=True)
class Summary:
    requests: int
    success_rate: float | None
    timeout_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Window:
    def __init__(
        self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s, self._clock = window_s, clock
        self._samples: deque[tuple[float, str, float]] = deque(maxlen=MAX_SAMPLES)

    def add(self, result: str, seconds: float) -> None:
        self._samples.append((self._clock(), result, seconds))

    def summary(self) -> Summary:
        cutoff = self._clock() - self.window_s
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
        n = len(self._samples)
        if n == 0:
            return Summary(0, None, None, None, None, None)
        ok = sum(1 for _, result, _ in self._samples if result == "success")
        timeouts = sum(1 for _, result, _ in self._samples if result == "timeout")
        ordered = sorted(seconds * 1000 for _, _, seconds in self._samples)
        return Summary(
            n, ok / n, timeouts / n,
            _percentile(ordered, 0.5), _percentile(ordered, 0.95), _percentile(ordered, 0.99),
        )  # fmt: skip


class Stats:
    """Windows by (route, target); beyond `MAX_TARGETS` the oldest pair is forgotten."""

    def __init__(
        self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s, self._clock = window_s, clock
        self._windows: dict[tuple[str, str], Window] = {}

    def add(self, route: str, target: str, result: str, seconds: float) -> None:
        window = self._windows.get((route, target))
        if window is None:
            if len(self._windows) >= MAX_TARGETS:
                del self._windows[next(iter(self._windows))]
            window = self._windows[(route, target)] = Window(self.window_s, self._clock)
        window.add(result, seconds)

    def summary(self, route: str, target: str) -> Summary:
        window = self._windows.get((route, target))
        return window.summary() if window else Summary(0, None, None, None, None, None)

    def targets(self, route: str) -> list[str]:
        return [target for (r, target) in self._windows if r == route]
